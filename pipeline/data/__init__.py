"""The data shared by the stages: MELD's CSVs (``meld``), the feature cache (``cache``), the
dialogues of a split (``dialogues``), the dataset and collation over the cache (``dataset``),
the vector store of the embedding pass (``embeddings``) and the training samplers
(``samplers``).
"""

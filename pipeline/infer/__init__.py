"""Batch inference on folders of clips, driven by the checkpoint alone.

``python -m pipeline.infer --checkpoint RUN/best.pt --clips DIR --out OUT``: ``cli`` (the
command), ``clips`` (what to read), ``transcripts`` (the text of each clip), ``decoding``
(the decoding pool, on :mod:`pipeline.media` as preprocessing uses it), ``predict`` (the
model over batches), ``predictions`` (the output rows). Inference never imports training.
"""
from pipeline.infer.cli import main

__all__ = ["main"]

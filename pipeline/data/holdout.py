"""A second validation split carved from the training split (``data.holdout_dialogues``).

MELD's dev split is small (1,109 utterances in 114 dialogues): a setting chosen on it alone
often gains nothing on test. Holding out a fixed share of the training *dialogues* gives a
second, independent judge. The share is chosen by a hash of each dialogue's id, so every
run (any seed, model or cache made from the same CSV) holds out the same dialogues, and a
dialogue is never split between training and the held-out part."""
from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np
from torch.utils.data import Dataset


def held_out(key: str, share: float) -> bool:
    """Whether the dialogue ``key`` falls in the held-out ``share``: the first 8 bytes of the
    SHA-256 of the key, read as a fraction of 2**64, below ``share``."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < share


def dialogue_key(record: dict[str, Any]) -> str:
    """What a sample is held out by: its Dialogue_ID, or its own id
    when the cache records no dialogue (a folder of clips)."""
    if record.get("dialogue_id") is None:
        return f"id:{record['id']}"
    return f"dialogue:{record['dialogue_id']}"


def split_indices(records: Sequence[dict[str, Any]], share: float) -> tuple[list[int], list[int]]:
    """(indices kept for training, indices held out) of ``records``."""
    out = [held_out(dialogue_key(record), share) for record in records]
    return ([i for i, gone in enumerate(out) if not gone], [i for i, gone in enumerate(out) if gone])


class DatasetPart(Dataset):
    """The samples ``indices`` of a MeldDataset or EmbeddedDataset, with the same
    ``records``, ``dialogues()`` and ``lengths()`` the loaders read."""

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)
        self.records = [dataset.records[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.dataset[self.indices[index]]

    def dialogues(self) -> list[dict[str, Any]]:
        every = self.dataset.dialogues()
        return [every[i] for i in self.indices]

    def lengths(self) -> np.ndarray | None:
        every = self.dataset.lengths()
        return None if every is None else every[self.indices]


def hold_out(dataset: Any, share: float) -> tuple[DatasetPart, DatasetPart]:
    """(the training part, the held-out part) of ``dataset``; ValueError when either is empty."""
    kept, gone = split_indices(dataset.records, share)
    if not kept or not gone:
        raise ValueError(f"data.holdout_dialogues={share} leaves {len(kept)} training and {len(gone)} held-out "
                         f"samples of {len(dataset.records)}; choose a share that keeps some of both")
    return DatasetPart(dataset, kept), DatasetPart(dataset, gone)

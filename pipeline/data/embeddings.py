"""The second cache level: one pooled vector per utterance and modality, made by
``pipeline.embed`` from the feature cache, read by training (``data.embeddings_dir``).

Layout of ``EMB/<split>/``::

    meta.json          {"format", "version", "split", "key": {...}, "source": {...},
                        "dims": {modality: D}, "count": N}
    ids.json           the ids of the vectors, in the feature cache's record order
    <modality>.npy     float16 [N, D], memory-mapped when read
    <modality>_mask.npy bool [N]: the sample has the modality (else its row is zeros)
    progress.json      while being written: rows done so far (``*.npy.partial`` beside it)

``key`` says what produced the vectors: the encoder sections of the config (less the
fields that act in training only), a sha256 of the encoders' weights (whatever file they
came from), and the feature cache's preprocessing key and ids. A folder made with another
key is refused, naming the differing keys, like the feature cache; an interrupted pass
resumes from ``progress.json``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline.config import flatten
from pipeline.data.cache import CacheMismatchError, CacheSplit, read_json
from pipeline.data.dataset import labels_of
from pipeline.data.dialogues import dialogue_of

FORMAT = "meld-fusion-embeddings"
VERSION = 1
# Encoder fields that act in training only (output dropout, which layers get gradients): the
# pass runs the encoders in eval mode, so the vectors do not depend on them, and a fine-tuned
# checkpoint's vectors serve a config that freezes the same encoder (the two-stage recipe).
TRAINING_ONLY = ("dropout", "freeze_layers")


def weights_hash(modules: Mapping[str, nn.Module]) -> str:
    """sha256 over every tensor (name, dtype, shape, bytes) of each module's state dict, in
    sorted order: identical for identical weights wherever they were loaded from."""
    digest = hashlib.sha256()
    for name in sorted(modules):
        for key, tensor in sorted(modules[name].state_dict().items()):
            tensor = tensor.detach().cpu().contiguous()
            digest.update(f"{name}.{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            # flattened first: a 0-d tensor (BatchNorm's step counter) has no byte view
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def embedding_key(encoders: Mapping[str, nn.Module], sections: Mapping[str, Any],
                  cache: CacheSplit) -> dict[str, Any]:
    """What vectors made by ``encoders`` (their config ``sections``) from ``cache`` depend on."""
    ids = [record["id"] for record in cache.records]
    return {"encoders": {m: vector_fields(sections[m]) for m in sorted(encoders)}, "weights": weights_hash(encoders),
            "preprocess": cache.meta["key"],
            "ids": hashlib.sha256(json.dumps(ids).encode("utf-8")).hexdigest()}


def vector_fields(section: Mapping[str, Any]) -> dict[str, Any]:
    """An encoder's config section without its TRAINING_ONLY fields."""
    return {name: value for name, value in section.items() if name not in TRAINING_ONLY}


def key_differences(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """``key: stored -> wanted`` for each dotted key that differs."""
    before, after = flatten(stored), flatten(wanted)
    return [f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in sorted(set(before) | set(after))
            if before.get(key) != after.get(key)]


def check_format(split_dir: Path, meta: Mapping[str, Any]) -> None:
    """Raise CacheMismatchError unless ``meta`` (meta.json or progress.json) is this format."""
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CacheMismatchError(f"{split_dir} holds format {meta.get('format')!r} version {meta.get('version')!r}, "
                                 f"expected {FORMAT!r} version {VERSION}")


def check_key(split_dir: Path, meta: Mapping[str, Any], wanted: Mapping[str, Any]) -> None:
    """Raise CacheMismatchError unless ``meta`` is this format and was made with key ``wanted``."""
    check_format(split_dir, meta)
    stored = dict(meta.get("key", {}))
    if isinstance(stored.get("encoders"), Mapping):  # folders written before TRAINING_ONLY hold those fields
        stored["encoders"] = {m: vector_fields(section) if isinstance(section, Mapping) else section
                              for m, section in stored["encoders"].items()}
    differences = key_differences(stored, wanted)
    if differences:
        raise CacheMismatchError(
            f"{split_dir} holds embeddings made by other encoders or from another cache:\n  "
            + "\n  ".join(differences)
            + "\nRun pipeline.embed again into another folder (or delete this one), with the encoders "
              "and cache you train with.")


class EmbeddingSplit:
    """A finished embeddings split: ``meta``, ``ids``, and per modality ``vectors`` (float16
    [N, D], memory-mapped) and ``masks`` (bool [N])."""

    def __init__(self, split_dir: str | Path) -> None:
        self.split_dir = Path(split_dir)
        meta_path = self.split_dir / "meta.json"
        if not meta_path.is_file():
            partial = (self.split_dir / "progress.json").is_file()
            raise FileNotFoundError(
                f"{self.split_dir} holds no finished embeddings ({'the pass was interrupted: rerun' if partial else 'make them with'} "
                "python -m pipeline.embed --config X.yaml|--checkpoint RUN/best.pt --cache CACHE --out EMB)")
        self.meta: dict[str, Any] = read_json(meta_path)
        check_format(self.split_dir, self.meta)
        self.ids: list[str] = read_json(self.split_dir / "ids.json")
        self.vectors: dict[str, np.ndarray] = {}
        self.masks: dict[str, np.ndarray] = {}
        for modality, dim in self.meta["dims"].items():
            vectors = np.load(self.split_dir / f"{modality}.npy", mmap_mode="r")
            masks = np.load(self.split_dir / f"{modality}_mask.npy")
            if vectors.shape != (len(self.ids), dim) or masks.shape != (len(self.ids),):
                raise CacheMismatchError(
                    f"{self.split_dir / f'{modality}.npy'}: shape {vectors.shape} (mask {masks.shape}) does not "
                    f"match {len(self.ids)} ids of width {dim}; the folder is damaged: run pipeline.embed again")
            self.vectors[modality], self.masks[modality] = vectors, masks


class EmbeddedDataset(Dataset):
    """The ok samples of a cached split with their vectors instead of their features.

    Item: like :class:`pipeline.data.dataset.MeldDataset`'s, with ``<modality>: {"embedding":
    Float[D], "present": bool}`` for each of ``modalities``.
    """

    def __init__(self, cache: CacheSplit, embeddings: EmbeddingSplit, modalities: Sequence[str]) -> None:
        self.records = cache.records
        ids = [record["id"] for record in self.records]
        if ids != embeddings.ids:
            raise CacheMismatchError(f"{embeddings.split_dir} holds vectors of other samples than the cache "
                                     f"{cache.split_dir} ({len(embeddings.ids)} vs {len(ids)} ids); run "
                                     "pipeline.embed again on this cache")
        missing = sorted(set(modalities) - set(embeddings.vectors))
        if missing:
            raise CacheMismatchError(f"{embeddings.split_dir} holds no vectors for modalities {missing} "
                                     f"(it has {sorted(embeddings.vectors)})")
        self.modalities = sorted(modalities)
        # Held in memory as float32 (MELD's 9,989 training vectors of 768: 31 MB), with each
        # item's labels and dialogue entry made once: an epoch then costs what the model costs.
        self.vectors = {m: torch.from_numpy(np.array(embeddings.vectors[m], dtype=np.float32)) for m in self.modalities}
        self.present = {m: embeddings.masks[m].tolist() for m in self.modalities}
        self.labels = [labels_of(record) for record in self.records]
        self.places = [dialogue_of(record) for record in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {"id": self.records[index]["id"], "labels": self.labels[index],
                                "dialogue": self.places[index]}
        for modality in self.modalities:
            item[modality] = {"embedding": self.vectors[modality][index], "present": self.present[modality][index]}
        return item

    def dialogues(self) -> list[dict[str, Any]]:
        return list(self.places)

    def lengths(self) -> None:
        """Vectors need no padding, so length grouping does not apply."""
        return None

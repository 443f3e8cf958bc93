"""Which samples each rank reads, in which batches, and the loaders that read them: the
feature cache (or its vectors) of a split, a shuffled or class-balanced share, batches of
similar length, or batches of whole dialogues for a dialogue model."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from pipeline.config import Config, to_dict
from pipeline.data.cache import CacheMismatchError, CacheSplit
from pipeline.data.dataset import collate
from pipeline.data.dialogues import DialogueBatches
from pipeline.data.embeddings import EmbeddedDataset, EmbeddingSplit, check_key, embedding_key
from pipeline.data.samplers import ClassBalancedSampler, LengthGroupedBatches
from pipeline.model import MultimodalModel, load_checkpoint
from pipeline.train import distributed as dist


def open_split(cfg: Config, split: str, required: bool) -> CacheSplit | None:
    """The cache of ``split``, checked against ``cfg.preprocess`` (None if absent and optional;
    an empty name means no such split)."""
    split_dir = Path(cfg.data.cache_dir) / split
    if not split or not (split_dir / "meta.json").is_file():
        if required:
            raise FileNotFoundError(f"no feature cache for split {split!r} in {split_dir}; preprocess "
                                    "the data first (scripts/preprocess_meld.sh) or set data.cache_dir")
        return None
    cache = CacheSplit(split_dir)
    cache.check_params(to_dict(cfg.preprocess))
    if not cache.complete:
        raise CacheMismatchError(f"the cache of split {split!r} in {split_dir} is incomplete (preprocessing has "
                                 "not finished); finish it before training")
    if len(cache) == 0:
        reasons = Counter(str(row.get("reason")) for row in cache.rows)
        why = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common(3)) or "its CSV has no rows"
        raise CacheMismatchError(f"the cache of split {split!r} in {split_dir} holds no usable sample ({why}); "
                                 "check that split's CSV and clips, then preprocess again")
    return cache


def training_order(dataset: Dataset, emotion: np.ndarray, cfg: Config, model: MultimodalModel) -> Sampler:
    """This rank's training samples: whole dialogues for a dialogue model, else class-balanced
    draws or a shuffled share, in batches of similar length with ``data.group_by_length``."""
    rank, world = dist.get_rank(), dist.get_world_size()
    if model.reads_dialogues:
        return DialogueBatches(dataset.dialogues(), cfg.train.batch_size, world, rank, shuffle=True,
                               seed=cfg.train.seed)
    if cfg.data.balanced_sampler:
        sampler: Sampler = ClassBalancedSampler(emotion, world, rank, cfg.train.seed)
    else:
        sampler = DistributedSampler(dataset, world, rank, shuffle=True, seed=cfg.train.seed)
    return grouped(sampler, dataset, cfg, shuffle=True)


def evaluation_order(dataset: Dataset, cfg: Config, model: MultimodalModel) -> Sampler:
    """This rank's share of an evaluated split (every sample once over the ranks)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    if model.reads_dialogues:
        return DialogueBatches(dataset.dialogues(), cfg.train.batch_size, world, rank, shuffle=False)
    return grouped(DistributedSampler(dataset, world, rank, shuffle=False), dataset, cfg, False)


def make_loader(dataset: Dataset, order: Sampler, cfg: Config, device: torch.device) -> DataLoader:
    """A loader over ``order`` (a sampler of this rank's share of ``dataset``, or batches of
    it: LengthGroupedBatches, DialogueBatches); workers stay alive across epochs.

    The loader gets its own generator so that iterating it never draws from the global
    random state (which must stay a function of the seed for exact resumes).
    """
    workers = cfg.data.num_workers
    batching = ({"batch_sampler": order} if isinstance(order, (LengthGroupedBatches, DialogueBatches))
                else {"sampler": order, "batch_size": cfg.train.batch_size})
    return DataLoader(dataset, **batching, collate_fn=collate, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0, generator=torch.Generator())


def grouped(sampler: Sampler, dataset: Dataset, cfg: Config, shuffle: bool) -> Sampler:
    """``sampler`` in batches of similar length when ``data.group_by_length`` is on and the
    dataset reads text or audio (a padded modality), else ``sampler`` itself."""
    lengths = dataset.lengths() if cfg.data.group_by_length else None
    if lengths is None:
        return sampler
    return LengthGroupedBatches(sampler, lengths, cfg.train.batch_size, shuffle, cfg.train.seed)


def open_embedded(emb_dir: Path, caches: Mapping[str, CacheSplit | None], model: nn.Module,
                  sections: Mapping[str, Any], modalities: Sequence[str]) -> dict[str, EmbeddedDataset]:
    """The embedded datasets of ``caches`` (role -> cache split) from ``emb_dir``, checked to
    hold vectors that ``model``'s encoders (config ``sections``) make from these caches.

    Vectors made from a checkpoint's encoders (the two-stage recipe) load those encoders'
    weights into ``model`` first, from the checkpoint that meta.json names, so that the
    trained model holds the encoders that made its inputs and ``pipeline.infer`` runs it on
    raw clips. Every encoder is then frozen: training reads the vectors, not the encoders.
    """
    splits = {role: EmbeddingSplit(emb_dir / cache.split_dir.name) for role, cache in caches.items()
              if cache is not None}
    encoders = {m: model.encoders[m] for m in modalities}
    source = splits["train"].meta.get("source", {})
    if source.get("checkpoint"):
        path = Path(source["checkpoint"])
        state = load_checkpoint(path)["model"]
        for m, encoder in encoders.items():
            prefix = f"encoders.{m}."
            encoder.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    for role, split in splits.items():
        check_key(split.split_dir, split.meta, embedding_key(encoders, sections, caches[role]))
    for encoder in encoders.values():
        encoder.requires_grad_(False)
    return {role: EmbeddedDataset(caches[role], split, modalities) for role, split in splits.items()}

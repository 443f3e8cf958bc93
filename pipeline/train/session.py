"""What a training run trains with (:class:`Session`), built from the config by :func:`prepare`:
the opened caches (or vectors), loaders, model, loss, optimizer and schedule."""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pipeline.config import Config, ConfigError
from pipeline.data.cache import CacheSplit
from pipeline.data.dataset import MeldDataset, labels_of
from pipeline.data.holdout import hold_out
from pipeline.execution import amp_dtype
from pipeline.model import MultimodalModel, build_model, check_text_length
from pipeline.train import distributed as dist
from pipeline.train.augment import TextAugmentation, build_augmentation
from pipeline.train.loading import evaluation_order, make_loader, open_embedded, open_split, training_order
from pipeline.train.losses import MultitaskLoss, build_loss
from pipeline.train.losses.teacher import WithTeacher, teacher_targets
from pipeline.train.optim import WeightAverage, param_groups, warmup_cosine

log = logging.getLogger(__name__)


def split_labels(dataset: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A split's labels from its manifest (no array is loaded): emotion and sentiment class
    indices ``[N]`` (-100 unknown) and regression targets ``[N, K]`` (NaN unknown)."""
    labels = [labels_of(record) for record in dataset.records]
    return (np.array([row["emotion"] for row in labels], dtype=np.int64),
            np.array([row["sentiment"] for row in labels], dtype=np.int64),
            np.stack([row["regression"].numpy() for row in labels]))


def warn_double_balancing(cfg: Config) -> None:
    """Warn (rank 0) when the class-balanced sampler and class weights in the loss are both on:
    each corrects the imbalance alone, together they over-weight the rare classes."""
    if cfg.data.balanced_sampler and cfg.train.class_weighting != "none" and dist.is_main_process():
        log.warning("data.balanced_sampler=true already draws every emotion equally often; "
                    "train.class_weighting=%s weights the rare ones up again in the loss, correcting the "
                    "imbalance twice; set train.class_weighting=none unless that is intended",
                    cfg.train.class_weighting)


@dataclass
class Session:
    """Everything a run trains with, built from the config by :func:`prepare`."""

    caches: dict[str, CacheSplit]
    datasets: dict[str, MeldDataset]  # train, val, and holdout and test where the run has them
    loaders: dict[str, DataLoader]
    train_sampler: Sampler
    model: MultimodalModel
    loss_fn: MultitaskLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    dtype: torch.dtype | None
    augment: TextAugmentation | None
    average: WeightAverage | None
    steps_per_epoch: int
    device: torch.device = torch.device("cpu")

    @contextlib.contextmanager
    def evaluated_weights(self) -> Iterator[None]:
        """Inside the block the model holds the weights that validation scores and checkpoints
        save (the moving average with ``train.ema_decay``, else its own), with rank 0's
        BatchNorm statistics on every rank."""
        dist.broadcast_buffers(self.model)
        if self.average is None:
            yield
            return
        with self.average.applied(self.model):
            dist.broadcast_buffers(self.model)
            yield


def prepare(cfg: Config, device: torch.device) -> Session:
    """Open the caches (checked against ``cfg.preprocess``), build the loaders, model, loss,
    optimizer and schedule of a run on ``device``."""
    dtype = amp_dtype(cfg.train.amp, device)  # a ConfigError before any cache is read or model built
    caches = {"train": open_split(cfg, cfg.data.train_split, True),
              "val": open_split(cfg, cfg.data.val_split, True),
              "test": open_split(cfg, cfg.data.test_split, False)}
    model = build_model(cfg)
    check_text_length(cfg, model)
    if cfg.data.embeddings_dir:
        datasets = open_embedded(Path(cfg.data.embeddings_dir), caches, model, cfg.model.encoders,
                                 cfg.model.modalities)
    else:
        datasets = {name: MeldDataset(cache.split_dir, cfg.model.modalities)
                    for name, cache in caches.items() if cache is not None}
    if cfg.data.holdout_dialogues:
        try:
            datasets["train"], datasets["holdout"] = hold_out(datasets["train"], cfg.data.holdout_dialogues)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    model = model.to(device)
    if cfg.train.distill_from:  # every rank computes them (or reads them), rank 0 stores them
        with torch.random.fork_rng(devices=[]):  # the teachers draw nothing from the run's random state
            targets = teacher_targets(cfg, Path(cfg.output_dir), device, save=dist.is_main_process())
        datasets["train"] = WithTeacher(datasets["train"], targets)
    emotion, sentiment, regression = split_labels(datasets["train"])
    train_sampler = training_order(datasets["train"], emotion, cfg, model)
    loaders = {"train": make_loader(datasets["train"], train_sampler, cfg, device)}
    for name in ("val", "holdout", "test"):
        if name in datasets:
            loaders[name] = make_loader(datasets[name], evaluation_order(datasets[name], cfg, model), cfg, device)

    if cfg.train.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    augment = build_augmentation(cfg, caches["train"])

    steps_per_epoch = len(loaders["train"])
    if cfg.train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
    optimizer_steps = cfg.train.epochs * math.ceil(steps_per_epoch / cfg.train.accumulate)
    # fused: one kernel for all parameters (on the CPU ~8x faster than the per-tensor loop,
    # a fifth of a MiniLM fine-tuning step)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.train), fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(int(cfg.train.warmup_ratio * optimizer_steps), optimizer_steps))
    warn_double_balancing(cfg)
    return Session(caches=caches, datasets=datasets, loaders=loaders, train_sampler=train_sampler, model=model,
                   loss_fn=build_loss(cfg.train, emotion, sentiment, regression).to(device),
                   optimizer=optimizer, scheduler=scheduler,
                   scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
                   dtype=dtype, augment=augment, steps_per_epoch=steps_per_epoch, device=device,
                   average=WeightAverage(model, cfg.train.ema_decay) if cfg.train.ema_decay else None)

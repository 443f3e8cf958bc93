"""Optimisation: AdamW parameter groups, the learning-rate schedule, and the exponential
moving average (EMA) of the weights that evaluation and checkpoints use.

Training updates the average after every optimizer step; validation, ``best.pt`` and so
inference use the averaged weights, which are smoother than the last step's. The decay
after ``n`` updates is ``min(decay, n / (n + 1))``: the first update copies the weights
(so the average starts from what training actually trains, e.g. after DDP's broadcast of
rank 0's initial weights), then the average is the plain mean of every update until that
spans the decay's horizon ``1 / (1 - decay)`` updates, and an exponential average after.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Mapping

import torch
from torch import nn

from pipeline.config import TrainConfig
from pipeline.model import MultimodalModel


def param_groups(model: MultimodalModel, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: pretrained encoders at ``encoder_lr``, everything else at ``lr``; no weight
    decay on biases and normalisation weights (the 1-D parameters).

    With ``layer_lr_decay`` < 1, a pretrained encoder that lists its layers (``layer_groups``,
    bottom up) gets ``encoder_lr`` at its top layer and ``decay`` times the rate of the layer
    above for each layer below, the embeddings lowest (heads fastest, lower layers slowest).
    """
    rated: list[tuple[list[nn.Parameter], float]] = [(model.pretrained_parameters(), cfg.encoder_lr)]
    if cfg.layer_lr_decay < 1:
        rated = []
        for encoder in model.encoders.values():
            if encoder.pretrained and hasattr(encoder, "layer_groups"):
                layers = encoder.layer_groups()
                top = len(layers) - 1
                rated += [(group, cfg.encoder_lr * cfg.layer_lr_decay ** (top - depth))
                          for depth, group in enumerate(layers)]
            elif encoder.pretrained:
                rated.append((list(encoder.parameters()), cfg.encoder_lr))
    rated.append((model.scratch_parameters(), cfg.lr))
    groups = []
    for params, lr in rated:
        for decay in (True, False):
            chosen = [p for p in params if (p.ndim > 1) == decay]
            if chosen:
                groups.append({"params": chosen, "lr": lr, "weight_decay": cfg.weight_decay if decay else 0.0})
    return groups


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR factor per optimizer step: linear warmup to 1, then cosine decay towards 0."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return factor


class WeightAverage:
    """EMA of every floating-point parameter and buffer of ``model`` (integer buffers,
    e.g. BatchNorm's batch counter, follow the model)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay: must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.average = {name: value.detach().clone() for name, value in model.state_dict().items()}

    def current_decay(self) -> float:
        """The decay of the next update."""
        return min(self.decay, self.updates / (self.updates + 1))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``average += (1 - decay) * (weights - average)``; call after each optimizer step."""
        weight = 1.0 - self.current_decay()
        floats, targets = [], []
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                floats.append(self.average[name])
                targets.append(value.detach())
            else:
                self.average[name].copy_(value)
        torch._foreach_lerp_(floats, targets, weight)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """``model`` holds the averaged weights inside the block and its own weights after it."""
        own = {name: value.detach().clone() for name, value in model.state_dict().items()}
        model.load_state_dict(self.average)
        try:
            yield
        finally:
            model.load_state_dict(own)

    def load(self, average: Mapping[str, torch.Tensor], updates: int) -> None:
        """Continue from a checkpoint's averaged weights after ``updates`` updates."""
        self.updates = updates
        for name, value in average.items():
            self.average[name].copy_(value)

"""Exponential moving average (EMA) of a model's weights, for evaluation and checkpoints.

Training updates the average after every optimizer step; validation, ``best.pt`` and so
inference use the averaged weights, which are smoother than the last step's. The decay
after ``n`` updates is ``min(decay, n / (n + 1))``: the first update copies the weights
(so the average starts from what training actually trains, e.g. after DDP's broadcast of
rank 0's initial weights), then the average is the plain mean of every update until that
spans the decay's horizon ``1 / (1 - decay)`` updates, and an exponential average after.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import torch
from torch import nn


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

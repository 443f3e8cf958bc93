"""Optimisation: AdamW parameter groups and the learning-rate schedule."""
from __future__ import annotations

import math
from typing import Callable

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

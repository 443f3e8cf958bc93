"""Optimisation: AdamW parameter groups and the learning-rate schedule."""
from __future__ import annotations

import math
from typing import Callable

from pipeline.config import TrainConfig
from pipeline.model import MultimodalModel


def param_groups(model: MultimodalModel, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: pretrained encoders at ``encoder_lr``, everything else at ``lr``; no weight
    decay on biases and normalisation weights (the 1-D parameters)."""
    groups = []
    for params, lr in ((model.pretrained_parameters(), cfg.encoder_lr), (model.scratch_parameters(), cfg.lr)):
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

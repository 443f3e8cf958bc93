"""Concatenation fusion: one vector per modality, absent modalities replaced by a learned
"missing" embedding, concatenated in sorted modality order."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fusion import FUSIONS, check_probability, register
from fusion.masking import drop_modalities


@register(FUSIONS, "concat")
class ConcatFusion(nn.Module):
    """``out_dim`` = sum of the modality widths (each ``proj_dim`` when projecting).

    Uses each encoder's ``pooled`` [B,D_m]; returns [B, out_dim].
    """

    @dataclass
    class Config:
        proj_dim: int = 0  # > 0: project every modality to this width first; 0 = keep the encoder widths
        normalize: bool = True  # LayerNorm per modality, so text/audio/video features share one scale
        dropout: float = 0.1
        modality_dropout: float = 0.0  # training only: drop each present modality with this probability

        def __post_init__(self) -> None:
            if self.proj_dim < 0:
                raise ValueError(f"proj_dim: must be >= 0 (0 = no projection), got {self.proj_dim}")
            check_probability("dropout", self.dropout)
            check_probability("modality_dropout", self.modality_dropout)

    def __init__(self, dims: dict[str, int], cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.modalities = sorted(dims)
        widths = {m: cfg.proj_dim or dims[m] for m in self.modalities}
        self.project = nn.ModuleDict({
            m: nn.Sequential(
                nn.Linear(dims[m], widths[m]) if cfg.proj_dim else nn.Identity(),
                nn.LayerNorm(widths[m]) if cfg.normalize else nn.Identity())
            for m in self.modalities})
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.randn(widths[m]) * 0.02) for m in self.modalities})
        self.dropout = nn.Dropout(cfg.dropout)
        self.out_dim: int = sum(widths.values())

    def forward(self, features: dict[str, dict[str, torch.Tensor]],
                masks: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.training:
            masks = drop_modalities({m: masks[m] for m in self.modalities}, self.cfg.modality_dropout)
        parts = []
        for m in self.modalities:
            vector = self.project[m](features[m]["pooled"])
            # where(), not a product: whatever an absent modality's tensor holds (even nan) is ignored.
            parts.append(torch.where(masks[m].unsqueeze(1), vector, self.missing[m].to(vector.dtype)))
        return self.dropout(torch.cat(parts, dim=1))

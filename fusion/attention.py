"""Attention fusion: a transformer over the tokens of all modalities plus a learned summary
token, whose output is the fused vector. Padding and absent modalities are masked keys."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from fusion import FUSIONS, check_probability, register
from fusion.masking import drop_modalities


@register(FUSIONS, "attention")
class AttentionFusion(nn.Module):
    """Cross-modal self-attention; returns the summary token [B, dim] (``out_dim`` = dim).

    ``tokens: sequence`` reads each encoder's ``sequence`` [B,S,D_m] with its
    ``sequence_mask``; ``tokens: pooled`` uses its ``pooled`` [B,D_m] as one token.
    Sequences longer than ``max_tokens_per_modality`` are average-pooled (over valid
    positions only) down to that many tokens.
    """

    @dataclass
    class Config:
        dim: int = 256
        heads: int = 4
        layers: int = 2
        ff_mult: int = 4  # feed-forward width = ff_mult * dim
        dropout: float = 0.1
        tokens: Literal["sequence", "pooled"] = "sequence"
        max_tokens_per_modality: int = 64
        modality_dropout: float = 0.0  # training only: drop each present modality with this probability

        def __post_init__(self) -> None:
            if self.dim < 1 or self.heads < 1 or self.dim % self.heads:
                raise ValueError(f"dim: must be a positive multiple of heads ({self.heads}), got {self.dim}")
            if self.layers < 1:
                raise ValueError(f"layers: must be >= 1, got {self.layers}")
            if self.ff_mult < 1:
                raise ValueError(f"ff_mult: must be >= 1, got {self.ff_mult}")
            check_probability("dropout", self.dropout)
            if self.max_tokens_per_modality < 1:
                raise ValueError(f"max_tokens_per_modality: must be >= 1, got {self.max_tokens_per_modality}")
            check_probability("modality_dropout", self.modality_dropout)

    def __init__(self, dims: dict[str, int], cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.modalities = sorted(dims)
        positions = cfg.max_tokens_per_modality if cfg.tokens == "sequence" else 1
        self.project = nn.ModuleDict({m: nn.Linear(dims[m], cfg.dim) for m in self.modalities})
        self.modality_embedding = nn.ParameterDict(
            {m: nn.Parameter(torch.randn(cfg.dim) * 0.02) for m in self.modalities})
        self.position_embedding = nn.ParameterDict(
            {m: nn.Parameter(torch.randn(positions, cfg.dim) * 0.02) for m in self.modalities})
        self.summary = nn.Parameter(torch.randn(cfg.dim) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, cfg.dim * cfg.ff_mult, cfg.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, norm=nn.LayerNorm(cfg.dim),
                                             enable_nested_tensor=False)
        self.out_dim: int = cfg.dim

    def forward(self, features: dict[str, dict[str, torch.Tensor]],
                masks: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.training:
            masks = drop_modalities({m: masks[m] for m in self.modalities}, self.cfg.modality_dropout)
        batch = masks[self.modalities[0]].shape[0]
        tokens = [self.summary.expand(batch, 1, -1)]
        valid = [masks[self.modalities[0]].new_ones(batch, 1)]
        for m in self.modalities:
            if self.cfg.tokens == "pooled":
                x = features[m]["pooled"].unsqueeze(1)
                keep = masks[m].unsqueeze(1)
            else:
                x, keep = cap_tokens(features[m]["sequence"], features[m]["sequence_mask"],
                                     self.cfg.max_tokens_per_modality)
                keep = keep & masks[m].unsqueeze(1)
            x = self.project[m](x) + self.modality_embedding[m] + self.position_embedding[m][: x.shape[1]]
            # where(), not a product: masked positions must not carry nan/inf from absent inputs.
            tokens.append(torch.where(keep.unsqueeze(-1), x, 0.0))
            valid.append(keep)
        x = self.encoder(torch.cat(tokens, dim=1), src_key_padding_mask=~torch.cat(valid, dim=1))
        return x[:, 0]


def cap_tokens(sequence: torch.Tensor, valid: torch.Tensor, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shorten [B,S,D] (mask [B,S]) to at most ``max_tokens`` positions by averaging the valid
    tokens of equal windows; a window without valid tokens is invalid. Returns ([B,S',D], [B,S'])."""
    if sequence.shape[1] <= max_tokens:
        return sequence, valid
    weights = valid.unsqueeze(1).to(sequence.dtype)  # [B,1,S]
    summed = nn.functional.adaptive_avg_pool1d(
        torch.where(valid.unsqueeze(-1), sequence, 0.0).transpose(1, 2), max_tokens)  # [B,D,S']
    counts = nn.functional.adaptive_avg_pool1d(weights, max_tokens)  # [B,1,S']
    pooled = (summed / counts.clamp(min=1e-6)).transpose(1, 2)
    return pooled, counts.squeeze(1) > 0

"""Output heads: one vector of all task outputs (sum of ``outputs``), split into the tasks.

Every head returns ``{task: [B,K_task] for task in outputs, "aux_loss": scalar}``; the
gated and mixture-of-experts heads also return their ``gates`` for inspection, and the
MoE head's ``aux_loss`` is its load-balancing term (0 for the others).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fusion import HEADS, check_probability, register


def _check_hidden(value: int) -> None:
    if value < 1:
        raise ValueError(f"hidden: must be >= 1, got {value}")


def split_outputs(x: torch.Tensor, outputs: dict[str, int]) -> dict[str, torch.Tensor]:
    """[B, sum(outputs)] -> {task: [B, K_task]} in the order of ``outputs``."""
    return dict(zip(outputs, x.split(list(outputs.values()), dim=1)))


def funnel_mlp(in_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    """D -> D/2 -> D/4 -> K, each hidden layer Linear-LayerNorm-ReLU-Dropout."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(2):
        hidden = max(width // 2, 1)
        layers += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Dropout(dropout)]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, out_dim))


def small_mlp(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Sequential:
    """Linear(D, hidden)-ReLU-Dropout-Linear(hidden, out): the classifier, and the gates (with a softmax)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))


@dataclass
class HiddenDropoutConfig:
    """Config of the classification and gated heads: ``hidden`` = width of the classifier
    MLP (classification) or of the gate MLP (gated)."""

    hidden: int = 256
    dropout: float = 0.3

    def __post_init__(self) -> None:
        _check_hidden(self.hidden)
        check_probability("dropout", self.dropout)


class _SingleMLPHead(nn.Module):
    """A head whose ``mlp`` maps [B,D] to all task outputs at once (no gate, no aux loss)."""

    outputs: dict[str, int]
    mlp: nn.Module

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {**split_outputs(self.mlp(x), self.outputs), "aux_loss": x.new_zeros(())}


@register(HEADS, "classification")
class ClassificationHead(_SingleMLPHead):
    """Linear-ReLU-Dropout-Linear."""

    Config = HiddenDropoutConfig

    def __init__(self, in_dim: int, outputs: dict[str, int], cfg: Config) -> None:
        super().__init__()
        self.outputs = dict(outputs)
        self.mlp = small_mlp(in_dim, cfg.hidden, sum(self.outputs.values()), cfg.dropout)


@register(HEADS, "regression")
class RegressionHead(_SingleMLPHead):
    """The funnel MLP D -> D/2 -> D/4 -> K (LayerNorm, ReLU, dropout)."""

    @dataclass
    class Config:
        dropout: float = 0.3

        def __post_init__(self) -> None:
            check_probability("dropout", self.dropout)

    def __init__(self, in_dim: int, outputs: dict[str, int], cfg: Config) -> None:
        super().__init__()
        self.outputs = dict(outputs)
        self.mlp = funnel_mlp(in_dim, sum(self.outputs.values()), cfg.dropout)


@register(HEADS, "gated")
class GatedHead(nn.Module):
    """The funnel MLP times a softmax gate over its K outputs, scaled by K so that a uniform
    gate passes the MLP through unchanged (an unscaled gate divides every logit by K at the
    start, which left attention fusion stuck near chance in ``bench/fusion.py``); ``gates`` [B,K]."""

    Config = HiddenDropoutConfig

    def __init__(self, in_dim: int, outputs: dict[str, int], cfg: Config) -> None:
        super().__init__()
        self.outputs = dict(outputs)
        total = sum(self.outputs.values())
        self.mlp = funnel_mlp(in_dim, total, cfg.dropout)
        self.gate = small_mlp(in_dim, cfg.hidden, total, cfg.dropout)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        gates = self.gate(x).softmax(dim=1)
        scaled = self.mlp(x) * gates * gates.shape[1]
        return {**split_outputs(scaled, self.outputs), "aux_loss": x.new_zeros(()),
                "gates": gates}


@register(HEADS, "moe")
class MixtureOfExpertsHead(nn.Module):
    """``num_experts`` funnel MLPs mixed by a softmax gating MLP; ``gates`` [B,E].

    ``aux_loss`` = ``balance_coef`` * cv^2 of the expert load (the mean gate per expert over
    the batch): 0 when every expert carries the same share, larger as the gate collapses.
    """

    @dataclass
    class Config:
        num_experts: int = 4
        hidden: int = 256  # width of the gating MLP
        dropout: float = 0.3
        balance_coef: float = 0.1  # the seed design's 0.01 left one expert at 4% of the load

        def __post_init__(self) -> None:
            if self.num_experts < 2:
                raise ValueError(f"num_experts: must be >= 2, got {self.num_experts}")
            _check_hidden(self.hidden)
            check_probability("dropout", self.dropout)
            if self.balance_coef < 0:
                raise ValueError(f"balance_coef: must be >= 0, got {self.balance_coef}")

    def __init__(self, in_dim: int, outputs: dict[str, int], cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.outputs = dict(outputs)
        total = sum(self.outputs.values())
        self.experts = nn.ModuleList(funnel_mlp(in_dim, total, cfg.dropout) for _ in range(cfg.num_experts))
        self.gate = small_mlp(in_dim, cfg.hidden, cfg.num_experts, cfg.dropout)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        gates = self.gate(x).softmax(dim=1)  # [B,E]
        experts = torch.stack([expert(x) for expert in self.experts], dim=1)  # [B,E,K]
        mixed = (gates.unsqueeze(-1) * experts).sum(1)
        return {**split_outputs(mixed, self.outputs),
                "aux_loss": self.cfg.balance_coef * balance_loss(gates), "gates": gates}


def balance_loss(gates: torch.Tensor) -> torch.Tensor:
    """cv^2 of the expert load: variance / mean^2 of the mean gate per expert ([B,E] -> scalar)."""
    load = gates.mean(0)
    return load.var(unbiased=False) / load.mean().pow(2).clamp(min=1e-10)

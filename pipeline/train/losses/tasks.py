"""Losses: class-weighted cross-entropy or focal loss per classification task, Huber or MSE
with optional density weighting for regression, summed with per-task weights plus the
head's auxiliary loss (e.g. the MoE load-balancing term).

Distillation (``train.distill_from``): where a batch's labels carry a teacher's probabilities
(``teacher_emotion`` [B,7], ``teacher_sentiment`` [B,3], NaN rows for samples the teacher did
not score), a classification task's loss is ``(1 - alpha) * label loss + alpha * T^2 *
KL(teacher || softmax(logits / T))`` (Hinton et al. 2015: T^2 keeps the gradient scale of the
soft part when T changes), with ``T`` = ``train.distill_temperature`` and ``alpha`` =
``train.distill_alpha``.

Every per-sample loss is averaged as ``sum(weight_i * loss_i) / n_labelled``, not divided by
the sum of the weights: the weights are normalised so their mean over the training samples
is 1, which keeps the loss scale of the unweighted loss, and the plain average makes the
gradient of a batch split over DDP ranks equal to the gradient of the whole batch.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from pipeline.config import TrainConfig
from pipeline.labels import EMOTIONS, SENTIMENTS

IGNORE_INDEX = -100
CLASSIFICATION_TASKS = ("emotion", "sentiment")


def class_weights(counts: Sequence[int], scheme: str, beta: float = 0.999) -> np.ndarray:
    """Weight per class from training counts ``[C]`` -> ``[C]``, mean 1 over the samples.

    ``inverse`` is sklearn's ``balanced`` weight ``n / (C * n_c)``, ``sqrt_inverse`` its
    square root, ``effective_number`` is ``(1 - beta) / (1 - beta ** n_c)`` (Cui et al. 2019).
    A class with no training sample gets weight 0 (no sample of it reaches the loss).
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() == 0:
        raise ValueError("class_weights: no labelled training samples")
    present = counts > 0
    weights = np.zeros(len(counts), dtype=np.float64)
    if scheme == "none":
        weights[present] = 1.0
    elif scheme in ("inverse", "sqrt_inverse"):
        classes = np.flatnonzero(present)
        labels = np.repeat(classes, counts[present])
        balanced = compute_class_weight("balanced", classes=classes, y=labels)
        weights[present] = balanced if scheme == "inverse" else np.sqrt(balanced)
    elif scheme == "effective_number":
        weights[present] = (1.0 - beta) / (1.0 - np.power(beta, counts[present]))
    else:
        raise ValueError(f"class_weights: unknown scheme {scheme!r}")
    return weights * counts.sum() / (weights * counts).sum()


class DensityWeights(nn.Module):
    """Per-sample weight ``(1 / density(y)) ** alpha`` for regression targets ``[N, K]``.

    The density is a histogram of the training targets per target column (``bins`` equal
    bins over their range); weights are normalised to mean 1 over the training samples, so
    rare target values count more without changing the loss scale.
    """

    def __init__(self, targets: np.ndarray, alpha: float, bins: int = 20) -> None:
        super().__init__()
        targets = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
        edges, weights = [], []
        for column in targets.T:
            column = column[np.isfinite(column)]
            if len(column) == 0:
                raise ValueError("density weighting: no finite regression target in the training split")
            counts, column_edges = np.histogram(column, bins=bins)
            density = counts / counts.sum()
            # Empty bins never hold a training sample; give them the rarest seen bin's weight.
            floor = density[density > 0].min()
            bin_weights = np.power(1.0 / np.maximum(density, floor), alpha)
            bin_weights /= (bin_weights * density).sum()
            edges.append(column_edges)
            weights.append(bin_weights)
        self.register_buffer("edges", torch.tensor(np.stack(edges), dtype=torch.float32))
        self.register_buffer("weights", torch.tensor(np.stack(weights), dtype=torch.float32))

    def forward(self, targets: torch.Tensor) -> torch.Tensor:
        """Targets ``[B, K]`` -> weights ``[B, K]`` (any value for non-finite targets)."""
        columns = []
        for k in range(targets.shape[1]):
            inner_edges = self.edges[k, 1:-1].contiguous()
            index = torch.bucketize(targets[:, k].contiguous(), inner_edges, right=True)
            columns.append(self.weights[k][index])
        return torch.stack(columns, dim=1)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None,
                        focal_gamma: float | None = None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Class-weighted cross-entropy (or focal loss when ``focal_gamma`` is set).

    logits ``[B, C]``, labels ``Long[B]`` with ``-100`` for unknown -> scalar,
    ``sum(w[y_i] * loss_i) / n_labelled`` (0 with a graph when nothing is labelled).
    """
    valid = labels != IGNORE_INDEX
    log_probs = F.log_softmax(logits.float(), dim=-1)
    target = labels.clamp(min=0)
    nll = -log_probs.gather(1, target[:, None]).squeeze(1)
    loss = (1.0 - label_smoothing) * nll - label_smoothing * log_probs.mean(dim=-1)
    if focal_gamma is not None:
        # (1 - p_t)^gamma down-weights samples the model already gets right (Lin et al. 2017).
        loss = (1.0 - torch.exp(-nll)).pow(focal_gamma) * loss
    if weight is not None:
        loss = loss * weight[target]
    return (loss * valid).sum() / valid.sum().clamp(min=1)


def regression_loss(predictions: torch.Tensor, targets: torch.Tensor, kind: str, delta: float,
                    weights: torch.Tensor | None = None) -> torch.Tensor:
    """Huber (``delta``) or MSE over ``[B, K]``; NaN targets are unknown and skipped."""
    valid = torch.isfinite(targets)
    targets = torch.where(valid, targets, predictions.detach())
    if kind == "huber":
        loss = F.huber_loss(predictions.float(), targets.float(), delta=delta, reduction="none")
    elif kind == "mse":
        loss = F.mse_loss(predictions.float(), targets.float(), reduction="none")
    else:
        raise ValueError(f"regression_loss: unknown kind {kind!r}")
    if weights is not None:
        loss = loss * weights
    return (loss * valid).sum() / valid.sum().clamp(min=1)


def distillation_loss(logits: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(teacher || softmax(logits / T))``, the mean over the samples whose teacher
    row ``teacher`` [B,C] is known (not NaN); 0 (still tied to ``logits``) when none is."""
    known = ~torch.isnan(teacher).any(dim=1)
    if not bool(known.any()):
        return logits.sum() * 0.0
    log_student = F.log_softmax(logits[known].float() / temperature, dim=-1)
    return F.kl_div(log_student, teacher[known].float(), reduction="batchmean") * temperature ** 2


class MultitaskLoss(nn.Module):
    """Weighted sum of the task losses and the head's ``aux_loss``.

    ``class_weights`` maps a classification task to its ``[C]`` weights (from
    :func:`class_weights`); ``density`` weights regression samples when given.
    """

    def __init__(self, cfg: TrainConfig, class_weights: Mapping[str, np.ndarray] | None = None,
                 density: DensityWeights | None = None) -> None:
        super().__init__()
        self.task_weights = dict(cfg.task_weights)
        self.focal_gamma = cfg.focal_gamma if cfg.loss == "focal" else None
        self.label_smoothing = cfg.label_smoothing
        self.regression_kind = cfg.regression_loss
        self.huber_delta = cfg.huber_delta
        self.density = density
        self.distill_alpha, self.distill_temperature = cfg.distill_alpha, cfg.distill_temperature
        for task, weights in (class_weights or {}).items():
            self.register_buffer(f"{task}_weight", torch.tensor(weights, dtype=torch.float32))

    def forward(self, outputs: Mapping[str, torch.Tensor],
                labels: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Head outputs and batch labels -> (total loss, {task: detached loss} for logging).

        A task with weight 0 still enters the sum (times 0) so every head parameter gets a
        gradient, which DDP expects of every step.
        """
        reference = next(iter(outputs.values()))
        total = outputs["aux_loss"].float() if "aux_loss" in outputs else reference.new_zeros((), dtype=torch.float32)
        parts: dict[str, torch.Tensor] = {"aux": total.detach()}
        for task in CLASSIFICATION_TASKS:
            if task in outputs and task in labels:
                loss = classification_loss(outputs[task], labels[task], getattr(self, f"{task}_weight", None),
                                           self.focal_gamma, self.label_smoothing)
                if f"teacher_{task}" in labels:
                    soft = distillation_loss(outputs[task], labels[f"teacher_{task}"], self.distill_temperature)
                    parts[f"distill_{task}"] = soft.detach()
                    loss = (1 - self.distill_alpha) * loss + self.distill_alpha * soft
                total = total + self.task_weights.get(task, 0.0) * loss
                parts[task] = loss.detach()
        if "regression" in outputs and "regression" in labels:
            targets = labels["regression"]
            weights = self.density(targets) if self.density is not None else None
            loss = regression_loss(outputs["regression"], targets, self.regression_kind, self.huber_delta, weights)
            total = total + self.task_weights.get("regression", 0.0) * loss
            parts["regression"] = loss.detach()
        return total, parts


def build_loss(cfg: TrainConfig, emotion: np.ndarray, sentiment: np.ndarray,
               regression: np.ndarray) -> MultitaskLoss:
    """The loss of a run from the training split's labels: emotion and sentiment class indices
    ``[N]`` (``-100`` unknown), regression targets ``[N, K]`` (NaN unknown)."""
    weights = {}
    for task, labels, size in (("emotion", emotion, len(EMOTIONS)), ("sentiment", sentiment, len(SENTIMENTS))):
        labels = np.asarray(labels)
        counts = np.bincount(labels[labels != IGNORE_INDEX], minlength=size)
        weights[task] = class_weights(counts, cfg.class_weighting, cfg.effective_number_beta)
    density = DensityWeights(regression, cfg.density_alpha) if cfg.density_alpha > 0 else None
    return MultitaskLoss(cfg, weights, density)

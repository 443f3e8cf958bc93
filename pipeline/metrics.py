"""Evaluation metrics and plots: accuracy, weighted/macro F1, per-class report and confusion
matrix for the classification tasks; RMSE, MAE and Pearson r for regression."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; training machines have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support  # noqa: E402

from pipeline.labels import EMOTIONS, REGRESSION, SENTIMENTS  # noqa: E402
from pipeline.writing import write_atomic  # noqa: E402

IGNORE_INDEX = -100


def classification_metrics(labels: Sequence[int], predictions: Sequence[int],
                           names: Sequence[str]) -> dict:
    """Metrics of class indices ``[N]`` against labels ``[N]`` (``-100`` = unknown, skipped).

    Returns accuracy, weighted_f1, macro_f1 (over all ``names``, absent classes count as 0),
    ``per_class`` {name: precision, recall, f1, support}, ``confusion_matrix`` (rows = true).
    """
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    keep = labels != IGNORE_INDEX
    labels, predictions = labels[keep], predictions[keep]
    classes = list(range(len(names)))
    if len(labels) == 0:
        return {"count": 0}
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=classes, zero_division=0)
    return {
        "count": int(len(labels)),
        "accuracy": float(accuracy_score(labels, predictions)),
        "weighted_f1": float(f1_score(labels, predictions, labels=classes, average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(labels, predictions, labels=classes, average="macro", zero_division=0)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(names, precision, recall, f1, support)
        },
        "confusion_matrix": confusion_matrix(labels, predictions, labels=classes).tolist(),
    }


def regression_metrics(targets: np.ndarray, predictions: np.ndarray) -> dict:
    """RMSE, MAE and Pearson r of ``[N]`` predictions (NaN targets skipped; r is None when
    either side is constant, where it is undefined)."""
    targets = np.asarray(targets, dtype=np.float64)
    predictions = np.asarray(predictions, dtype=np.float64)
    keep = np.isfinite(targets)
    targets, predictions = targets[keep], predictions[keep]
    if len(targets) == 0:
        return {"count": 0}
    error = predictions - targets
    pearson = None
    if len(targets) > 1 and targets.std() > 0 and predictions.std() > 0:
        pearson = float(np.corrcoef(targets, predictions)[0, 1])
    return {"count": int(len(targets)), "rmse": float(math.sqrt(np.mean(error ** 2))),
            "mae": float(np.mean(np.abs(error))), "pearson": pearson}


def compute_metrics(outputs: Mapping[str, np.ndarray]) -> dict:
    """All metrics of one evaluation from gathered arrays: ``emotion``/``sentiment`` logits
    ``[N, C]`` with ``emotion_label``/``sentiment_label`` ``[N]``, ``regression`` ``[N, K]``
    with ``regression_label`` ``[N, K]``. Tasks missing from ``outputs`` are left out."""
    metrics: dict = {}
    for task, names in (("emotion", EMOTIONS), ("sentiment", SENTIMENTS)):
        if task in outputs:
            metrics[task] = classification_metrics(outputs[f"{task}_label"], outputs[task].argmax(axis=1), names)
    if "regression" in outputs:
        for k, name in enumerate(REGRESSION[: outputs["regression"].shape[1]]):
            metrics[name] = regression_metrics(outputs["regression_label"][:, k], outputs["regression"][:, k])
    return metrics


def format_report(metrics: Mapping[str, dict]) -> str:
    """A plain-text per-class table per classification task, plus the regression figures
    (scalar entries such as ``loss`` are left out)."""
    lines = []
    for task, result in metrics.items():
        if not isinstance(result, Mapping):
            continue
        if "per_class" in result:
            lines.append(f"{task}: accuracy {result['accuracy']:.4f}  weighted F1 {result['weighted_f1']:.4f}"
                         f"  macro F1 {result['macro_f1']:.4f}  (n={result['count']})")
            lines.append(f"  {'class':<10} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}")
            for name, row in result["per_class"].items():
                lines.append(f"  {name:<10} {row['precision']:>9.4f} {row['recall']:>7.4f}"
                             f" {row['f1']:>7.4f} {row['support']:>8d}")
        elif "rmse" in result:
            pearson = "n/a" if result["pearson"] is None else f"{result['pearson']:.4f}"
            lines.append(f"{task}: RMSE {result['rmse']:.4f}  MAE {result['mae']:.4f}  Pearson r {pearson}"
                         f"  (n={result['count']})")
        lines.append("")
    return "\n".join(lines)


def plot_confusion_matrix(cm: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path,
                          title: str = "") -> None:
    """Save a row-normalised confusion matrix (counts written in the cells) as an image."""
    cm = np.asarray(cm, dtype=np.float64)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = 1.0 + 0.7 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center",
                    color="white" if rates[i, j] > 0.5 else "black", fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda file: fig.savefig(file, format="png", dpi=120))
    plt.close(fig)


def plot_curves(history: Sequence[Mapping], path: str | Path) -> None:
    """Save training loss and validation weighted F1 per epoch (``history`` rows as in
    metrics.json: ``epoch``, ``train_loss``, ``val`` metrics, and ``holdout`` metrics with
    ``data.holdout_dialogues``)."""
    epochs = [row["epoch"] for row in history]
    fig, (loss_ax, f1_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train")
    val_loss = [row["val"].get("loss") for row in history]
    if all(v is not None for v in val_loss):
        loss_ax.plot(epochs, val_loss, marker="o", label="validation")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.legend()
    for task in ("emotion", "sentiment"):
        scores = [row["val"].get(task, {}).get("weighted_f1") for row in history]
        if all(s is not None for s in scores):
            f1_ax.plot(epochs, scores, marker="o", label=f"{task} weighted F1")
        held_out = [row.get("holdout", {}).get(task, {}).get("weighted_f1") for row in history]
        if all(s is not None for s in held_out):  # data.holdout_dialogues
            f1_ax.plot(epochs, held_out, marker="s", linestyle="--", label=f"{task} weighted F1, held out of train")
    f1_ax.set_xlabel("epoch")
    f1_ax.set_ylabel("validation")
    f1_ax.legend()
    fig.tight_layout()
    write_atomic(path, lambda file: fig.savefig(file, format="png", dpi=120))
    plt.close(fig)

"""What a training run writes besides checkpoints: ``metrics.json``, the per-class report
of the final evaluation and its confusion matrices, all JSON strict (no NaN)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from pipeline.labels import EMOTIONS, SENTIMENTS
from pipeline.metrics import format_report, plot_confusion_matrix
from pipeline.writing import write_text_atomic

MONITOR = ("emotion", "weighted_f1")  # validation metric for best.pt and early stopping


def finite_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (JSON has no NaN: a file
    holding one is rejected by strict readers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


def write_json(path: Path, data: Any) -> None:
    """``data`` as strict JSON in ``path``, atomically (a failed write, e.g. a full disk,
    leaves the old file and no temporary one)."""
    write_text_atomic(path, json.dumps(finite_json(data), indent=1, allow_nan=False))


def write_reports(out_dir: Path, metrics: Mapping[str, Any], split: str) -> None:
    """Per-class report (text and JSON) and confusion matrix images of the final evaluation."""
    classification = {task: result for task, result in metrics.items()
                      if isinstance(result, dict) and "per_class" in result}
    write_text_atomic(out_dir / "report.txt", f"split: {split}\n\n{format_report(metrics)}")
    write_json(out_dir / "classification_report.json", {"split": split, **classification})
    for task, names in (("emotion", EMOTIONS), ("sentiment", SENTIMENTS)):
        if task in classification:
            name = "confusion_matrix.png" if task == "emotion" else f"confusion_matrix_{task}.png"
            plot_confusion_matrix(classification[task]["confusion_matrix"], names, out_dir / name,
                                  f"{task} ({split})")


def monitored(metrics: Mapping[str, Any]) -> float:
    task, name = MONITOR
    return float(metrics.get(task, {}).get(name, float("nan")))


def summary(history: list[dict], best: float, test: dict | None) -> dict:
    """The content of metrics.json."""
    best_epoch = next((row["epoch"] for row in history if monitored(row["val"]) == best), None)
    result = {"monitor": ".".join(MONITOR), "best_epoch": best_epoch, "best_val": best, "epochs": history,
              "test": test}
    held_out = [row["holdout"] for row in history if row["epoch"] == best_epoch and "holdout" in row]
    if held_out:  # data.holdout_dialogues: the held-out split's scores at the epoch dev chose
        result["best_holdout"] = monitored(held_out[0])
        result["holdout"] = held_out[0]
    return result

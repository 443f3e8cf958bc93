"""Metrics against hand-computed values; plots are written as images."""
import math

import numpy as np
import pytest

from pipeline.metrics import (classification_metrics, compute_metrics, format_report, plot_confusion_matrix,
                              plot_curves, regression_metrics)

NAMES = ["a", "b", "c"]


def test_classification_metrics_by_hand():
    labels = [0, 0, 0, 1, 1, 2, -100]
    predictions = [0, 0, 1, 1, 2, 2, 0]
    result = classification_metrics(labels, predictions, NAMES)
    # a: P 2/2, R 2/3, F1 0.8; b: P 1/2, R 1/2, F1 0.5; c: P 1/2, R 1, F1 2/3.
    assert result["count"] == 6
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert result["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert result["per_class"]["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert result["per_class"]["c"]["precision"] == pytest.approx(0.5)
    assert result["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_absent_class_counts_zero_in_macro_f1():
    result = classification_metrics([0, 0, 1], [0, 0, 1], NAMES)
    assert result["accuracy"] == 1.0
    assert result["weighted_f1"] == 1.0
    assert result["macro_f1"] == pytest.approx(2 / 3)
    assert result["per_class"]["c"]["support"] == 0
    assert classification_metrics([-100], [0], NAMES) == {"count": 0}


def test_regression_metrics_by_hand():
    targets = np.array([1.0, 2.0, 3.0, np.nan])
    predictions = np.array([1.5, 2.0, 2.0, 9.0])
    result = regression_metrics(targets, predictions)
    assert result["count"] == 3
    assert result["rmse"] == pytest.approx(math.sqrt((0.25 + 0 + 1) / 3))
    assert result["mae"] == pytest.approx(0.5)
    # r of (1,2,3) and (1.5,2,2): covariances by hand.
    tx, px = np.array([-1, 0, 1.0]), np.array([1.5, 2, 2]) - 11 / 6
    assert result["pearson"] == pytest.approx((tx * px).sum() / math.sqrt((tx ** 2).sum() * (px ** 2).sum()))
    assert regression_metrics(np.array([1.0, 1.0]), np.array([0.0, 2.0]))["pearson"] is None


def test_compute_metrics_and_report(tmp_path):
    outputs = {
        "emotion": np.eye(7)[[0, 1, 2, 2]], "emotion_label": np.array([0, 1, 2, 3]),
        "sentiment": np.eye(3)[[0, 0, 0, 0]], "sentiment_label": np.array([0, 1, 2, -100]),
        "regression": np.array([[0.0], [1.0], [0.0], [0.0]]), "regression_label": np.array([[0.0], [1.0], [-1.0], [np.nan]]),
    }
    metrics = compute_metrics(outputs)
    assert metrics["emotion"]["accuracy"] == 0.75
    assert metrics["sentiment"]["accuracy"] == pytest.approx(1 / 3)
    assert metrics["polarity"]["mae"] == pytest.approx(1 / 3)
    report = format_report(metrics)
    assert "fear" in report and "weighted F1 0." in report and "RMSE" in report

    cm_path = tmp_path / "cm.png"
    plot_confusion_matrix(metrics["emotion"]["confusion_matrix"], list("abcdefg"), cm_path, "emotion")
    history = [{"epoch": e, "train_loss": 1.0 / e, "val": {"loss": 1.2 / e, "emotion": {"weighted_f1": 0.1 * e}}}
               for e in (1, 2, 3)]
    curves = tmp_path / "curves.png"
    plot_curves(history, curves)
    for path in (cm_path, curves):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

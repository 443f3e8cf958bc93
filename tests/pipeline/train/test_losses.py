"""Class weights per scheme, focal vs cross-entropy, regression and density weighting."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.config import TrainConfig
from pipeline.train.losses import (DensityWeights, MultitaskLoss, build_loss, class_weights, classification_loss,
                                   regression_loss)

COUNTS = [10, 30, 60]


def mean_over_samples(weights, counts=COUNTS):
    counts = np.asarray(counts)
    return (weights * counts).sum() / counts.sum()


def test_inverse_is_sklearn_balanced():
    # n / (C * n_c) = 100 / (3 * [10, 30, 60]); already mean 1 over the samples.
    np.testing.assert_allclose(class_weights(COUNTS, "inverse"), [10 / 3, 10 / 9, 5 / 9])


def test_sqrt_inverse_normalised():
    raw = np.sqrt([10 / 3, 10 / 9, 5 / 9])
    expected = raw / mean_over_samples(raw)
    np.testing.assert_allclose(class_weights(COUNTS, "sqrt_inverse"), expected)
    assert mean_over_samples(class_weights(COUNTS, "sqrt_inverse")) == pytest.approx(1.0)


def test_effective_number():
    beta = 0.9
    raw = np.array([(1 - beta) / (1 - beta ** n) for n in COUNTS])
    weights = class_weights(COUNTS, "effective_number", beta)
    np.testing.assert_allclose(weights, raw / mean_over_samples(raw))
    assert weights[0] > weights[1] > weights[2]


def test_none_and_absent_class():
    np.testing.assert_allclose(class_weights(COUNTS, "none"), [1, 1, 1])
    weights = class_weights([0, 20, 80], "inverse")
    assert weights[0] == 0
    np.testing.assert_allclose(weights[1:], [100 / (2 * 20), 100 / (2 * 80)])
    with pytest.raises(ValueError, match="unknown scheme"):
        class_weights(COUNTS, "bogus")


def test_cross_entropy_matches_torch_and_ignores_unknown():
    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    labels = torch.tensor([0, 1, 2, -100, 1, 0])
    weight = torch.tensor([2.0, 1.0, 0.5])
    loss = classification_loss(logits, labels, weight)
    per_sample = F.cross_entropy(logits, labels, reduction="none", ignore_index=-100)
    expected = (per_sample * weight[labels.clamp(min=0)])[labels != -100].sum() / 5
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    unweighted = classification_loss(logits, labels, None, label_smoothing=0.1)
    torch_ls = F.cross_entropy(logits, labels, ignore_index=-100, label_smoothing=0.1)
    assert unweighted.item() == pytest.approx(torch_ls.item(), rel=1e-6)


def test_focal_down_weights_easy_samples():
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.2, 0.0]])
    labels = torch.tensor([0, 0])
    ce = F.cross_entropy(logits, labels, reduction="none")
    p = torch.exp(-ce)
    focal = classification_loss(logits, labels, None, focal_gamma=2.0)
    assert focal.item() == pytest.approx(((1 - p) ** 2 * ce).mean().item(), rel=1e-6)
    assert classification_loss(logits, labels, None, focal_gamma=0.0).item() == pytest.approx(ce.mean().item())
    # The easy sample loses far more of its loss than the hard one.
    easy = classification_loss(logits[:1], labels[:1], None, 2.0) / ce[0]
    hard = classification_loss(logits[1:], labels[1:], None, 2.0) / ce[1]
    assert easy < 0.01 < 0.3 < hard


def test_all_unknown_labels_give_zero_with_gradient():
    logits = torch.randn(3, 7, requires_grad=True)
    loss = classification_loss(logits, torch.full((3,), -100), None)
    loss.backward()
    assert loss.item() == 0 and logits.grad is not None


def test_huber_mse_skip_nan():
    predictions = torch.tensor([[0.0], [2.0], [5.0]])
    targets = torch.tensor([[0.5], [0.0], [float("nan")]])
    # Huber delta 0.6: 0.5 -> 0.5 * 0.25; 2.0 -> 0.6 * (2.0 - 0.3)
    expected = (0.125 + 0.6 * 1.7) / 2
    assert regression_loss(predictions, targets, "huber", 0.6).item() == pytest.approx(expected)
    assert regression_loss(predictions, targets, "mse", 0.6).item() == pytest.approx((0.25 + 4.0) / 2)


def test_density_weights_favour_rare_targets():
    targets = np.array([-1.0] * 10 + [0.0] * 80 + [1.0] * 10)[:, None]
    density = DensityWeights(targets, alpha=1.0, bins=4)
    weights = density(torch.tensor([[-1.0], [0.0], [1.0]], dtype=torch.float32))[:, 0]
    # density 0.1 / 0.8 / 0.1 -> 1/d = 10, 1.25, 10 with sample mean 3 -> divided by 3
    np.testing.assert_allclose(weights.numpy(), [10 / 3, 1.25 / 3, 10 / 3], rtol=1e-5)
    all_weights = density(torch.tensor(targets, dtype=torch.float32))
    assert all_weights.mean().item() == pytest.approx(1.0, rel=1e-5)
    assert torch.isfinite(density(torch.tensor([[float("nan")], [7.0]]))).all()


def test_multitask_loss_sums_weighted_tasks_and_aux():
    cfg = TrainConfig(class_weighting="none", task_weights={"emotion": 1.0, "sentiment": 0.5, "regression": 2.0})
    loss_fn = build_loss(cfg, np.array([0, 1, 2, 3, 4, 5, 6]), np.array([0, 1, 2, 0, 1, 2, -100]),
                         np.zeros((7, 1)))
    torch.manual_seed(0)
    outputs = {"emotion": torch.randn(4, 7), "sentiment": torch.randn(4, 3),
               "regression": torch.randn(4, 1), "aux_loss": torch.tensor(0.25)}
    labels = {"emotion": torch.tensor([0, 1, 2, 3]), "sentiment": torch.tensor([0, 1, 2, -100]),
              "regression": torch.tensor([[0.0], [1.0], [-1.0], [float("nan")]])}
    total, parts = loss_fn(outputs, labels)
    expected = (0.25 + F.cross_entropy(outputs["emotion"], labels["emotion"])
                + 0.5 * F.cross_entropy(outputs["sentiment"], labels["sentiment"], ignore_index=-100)
                + 2.0 * F.huber_loss(outputs["regression"][:3], labels["regression"][:3], delta=0.6))
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(parts) == {"aux", "emotion", "sentiment", "regression"}


def test_focal_config_and_class_weights_reach_the_loss():
    cfg = TrainConfig(class_weighting="inverse", loss="focal", focal_gamma=1.0)
    loss_fn = build_loss(cfg, np.array([0] * 9 + [6]), np.array([0] * 10), np.zeros((10, 1)))
    assert loss_fn.emotion_weight[6] > loss_fn.emotion_weight[0] > 0
    assert loss_fn.emotion_weight[1] == 0
    assert isinstance(loss_fn, MultitaskLoss) and loss_fn.focal_gamma == 1.0
    assert math.isclose(float((loss_fn.emotion_weight[[0, 6]] * torch.tensor([9.0, 1.0])).sum()), 10, rel_tol=1e-5)

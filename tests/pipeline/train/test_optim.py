"""AdamW parameter groups (pipeline.train.optim.param_groups): layer-wise learning rates."""
from __future__ import annotations

import pytest

from pipeline.config import load_config
from pipeline.model import build_model
from pipeline.train.optim import param_groups


def rates(tiny_text_model: str, *overrides: str) -> tuple[dict[str, float], list[dict]]:
    cfg = load_config(None, [f"preprocess.text.model={tiny_text_model}", "model.modalities=[text]",
                             "model.fusion.type=concat", "train.lr=1e-3", "train.encoder_lr=1e-4", *overrides])
    model = build_model(cfg)
    groups = param_groups(model, cfg.train)
    by_id = {}
    for group in groups:
        for param in group["params"]:
            assert id(param) not in by_id, "a parameter in two groups"
            by_id[id(param)] = group["lr"]
    assert set(by_id) == {id(p) for p in model.parameters()}  # every parameter exactly once
    return {name: by_id[id(param)] for name, param in model.named_parameters()}, groups


def expected_rate(name: str, decay: float) -> float:
    """By hand for the tiny BERT (2 layers): layer 1 (top) 1e-4, layer 0 1e-4 * decay,
    embeddings 1e-4 * decay^2; fusion and head at train.lr."""
    if not name.startswith("encoders.text."):
        return 1e-3
    if ".embeddings." in name:
        return 1e-4 * decay ** 2
    if ".layer.0." in name:
        return 1e-4 * decay
    return 1e-4  # layer 1, and anything above it


def test_layer_lr_decay_gives_each_layer_the_rate_of_the_layer_above_times_the_decay(tiny_text_model):
    found, _ = rates(tiny_text_model, "train.layer_lr_decay=0.5")
    assert any(".layer.0." in name for name in found) and any(".embeddings." in name for name in found)
    for name, rate in found.items():
        assert rate == pytest.approx(expected_rate(name, 0.5)), name


def test_no_decay_keeps_one_encoder_rate_and_the_group_layout(tiny_text_model):
    found, groups = rates(tiny_text_model)
    for name, rate in found.items():
        assert rate == pytest.approx(expected_rate(name, 1.0)), name
    # pretrained (decayed, not decayed), then scratch: the layout of older last.pt files
    assert [group["lr"] for group in groups] == [1e-4, 1e-4, 1e-3, 1e-3]
    assert [group["weight_decay"] > 0 for group in groups] == [True, False, True, False]

"""``pipeline.infer --quantize int8``: dynamic INT8 linear layers on the CPU.

A quantized linear layer holds int8 weights (recomputed here by hand, per output channel) and
computes within an 8-bit activation step of their product,
the quantized rows of a 3-modality model and of a text GRU model stay close to the float
rows and say that they are quantized, in JSON lines and CSV, and a GPU is refused."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from test_ensemble import QUICK_RUN

from pipeline import infer, train
from pipeline.data.meld import CLIP_DIRS, CSV_NAMES
from pipeline.quantization import QuantizeError, model_bytes, quantize


@pytest.fixture(autouse=True)
def fast_path_restored():
    """Quantizing turns PyTorch's transformer fast path off for the process; other tests run with it."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    yield
    torch.backends.mha.set_fastpath_enabled(enabled)


def int8_weights_by_hand(weight: torch.Tensor) -> torch.Tensor:
    """Each output channel's weights rounded to int8 steps of its largest magnitude / 127.5."""
    scale = weight.abs().amax(dim=1, keepdim=True) / 127.5
    return torch.clamp(torch.round(weight / scale), -128, 127) * scale


def test_a_quantized_linear_layer_computes_in_int8():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 8))
    x = torch.randn(5, 64)
    with torch.no_grad():
        float_out = model[0](x)
        weights = int8_weights_by_hand(model[0].weight)
        bias = model[0].bias.clone()
    before = model_bytes(model)
    info = quantize(model, "int8", torch.device("cpu"))
    assert model[0].weight().dtype == torch.qint8
    # The same int8 weights, up to rounding a value that sits on a half step (the backend
    # multiplies by the inverse scale): at most one step off, on a handful of weights.
    off = (model[0].weight().dequantize() - weights).abs()
    steps = weights.abs().amax(dim=1, keepdim=True) / 127.5
    assert (off <= steps * 1.001).all() and (off > 1e-6).float().mean() < 0.01
    with torch.no_grad():
        int8_out = model[0](x)
    assert (int8_out - float_out).abs().max() > 1e-4  # not the float layer any more
    # The activations are rounded to 8-bit steps of their range (7 bits on x86, where the
    # backend reduces the range): each output is off the int8-weight product by at most half
    # a step times the row's absolute weights.
    step = (x.max().clamp(min=0) - x.min().clamp(max=0)) / 127
    bound = step / 2 * weights.abs().sum(dim=1) + 1e-5
    assert ((int8_out - (x @ weights.T + bias)).abs() <= bound).all()
    assert info["linear_layers"] == 2 and model_bytes(model) < before


def test_quantizing_for_a_gpu_is_refused_in_one_line():
    with pytest.raises(QuantizeError, match=r"^--quantize int8 runs on the CPU only .*--device cpu$"):
        quantize(nn.Linear(4, 4), "int8", torch.device("cuda"))


@pytest.fixture(scope="module")
def runs(tiny_meld_cache, tmp_path_factory) -> dict:
    """A 3-modality model with attention fusion, and a text model with a transformer dialogue model."""
    root = tmp_path_factory.mktemp("quantize")
    models = {"all": [], "dialogue": ["model.modalities=[text]", "model.fusion.type=concat",
                                      "model.context.type=transformer"]}
    for name, overrides in models.items():
        train.main([*tiny_meld_cache["overrides"], *QUICK_RUN, *overrides, f"output_dir={root / name}"])
    meld = Path(tiny_meld_cache["meld_root"])
    return {**{name: root / name / "best.pt" for name in models}, "clips": meld / CLIP_DIRS["test"],
            "csv": meld / CSV_NAMES["test"]}


def predict(runs: dict, out: Path, checkpoint: Path, *extra: str) -> list[dict]:
    assert infer.main(["--checkpoint", str(checkpoint), "--clips", str(runs["clips"]), "--transcripts",
                       str(runs["csv"]), "--out", str(out), "--workers", "0", "--device", "cpu", *extra]) == 0
    if out.suffix == ".csv":
        with out.open(newline="", encoding="utf-8") as file:
            return list(csv.DictReader(file))
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("model", ["all", "dialogue"])
def test_quantized_rows_stay_close_to_the_float_rows_and_say_so(runs, tmp_path, model):
    plain = predict(runs, tmp_path / "float.jsonl", runs[model])
    rows = predict(runs, tmp_path / "int8.jsonl", runs[model], "--quantize", "int8")
    assert [row["clip"] for row in rows] == [row["clip"] for row in plain]
    assert all(row["quantization"] == "int8" for row in rows) and all("quantization" not in row for row in plain)
    differ = 0.0
    for row, reference in zip(rows, plain):
        assert row["status"] == reference["status"]
        if row["status"] != "ok":
            continue
        for name, p in reference["emotion_probs"].items():
            assert row["emotion_probs"][name] == pytest.approx(p, abs=0.05)
            differ = max(differ, abs(row["emotion_probs"][name] - p))
    assert differ > 0  # the quantized model ran, not the float one
    table = predict(runs, tmp_path / "int8.csv", runs[model], "--quantize", "int8")
    assert {row["quantization"] for row in table} == {"int8"} and len(table) == len(rows)

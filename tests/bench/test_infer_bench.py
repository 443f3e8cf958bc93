"""bench/infer.py --quantize int8 on a few tiny generated clips: the float and the int8 model
measured side by side in one run."""
from __future__ import annotations

from bench_loader import REPO, load_bench
from conftest import TINY_MODEL, TINY_PREPROCESS


def test_the_inference_bench_measures_int8_beside_float32(tmp_path, tiny_text_model, capsys):
    bench = load_bench("infer")
    result = bench.main(["--clips-per-class", "1", "--duration", "1", "--width", "64", "--height", "48",
                         "--device", "cpu", "--workers", "1", "--repeat", "1", "--batch-size", "4",
                         "--config", str(REPO / "configs" / "default.yaml"), "--quantize", "int8",
                         "--dir", str(tmp_path),
                         f"preprocess.text.model={tiny_text_model}", *TINY_PREPROCESS, *TINY_MODEL])
    out = capsys.readouterr().out
    quantized = result["quantized"]
    assert quantized["scheme"] == "int8" and quantized["end_to_end_clips_per_s"] > 0
    assert 0 < quantized["size_mb"]["int8"] < quantized["size_mb"]["float32"]
    assert "model alone (int8)" in out and "end to end (int8)" in out and "x float32" in out
    assert "model size: float32" in out

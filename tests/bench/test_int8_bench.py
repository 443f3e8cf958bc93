"""bench/int8.py on a tiny trained model: float32 and INT8 scored side by side on dev and test."""
from __future__ import annotations

import json

from bench_loader import load_bench

from pipeline import train


def test_the_int8_bench_scores_both_models_on_each_split(tiny_meld_cache, tmp_path, capsys):
    out = tmp_path / "run"
    train.main([*tiny_meld_cache["overrides"], "train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=4",
                "data.num_workers=0", "train.device=cpu", "model.modalities=[text]", f"output_dir={out}"])
    rows = load_bench("int8").main(["--checkpoint", str(out / "best.pt"), "--splits", "dev,test", "--repeats", "1"])

    assert [(row[1], row[2]) for row in rows] == [("dev", "float32"), ("dev", "int8"), ("test", "float32"),
                                                  ("test", "int8")]
    by = {(row[1], row[2]): row for row in rows}
    assert float(by["test", "int8"][3]) < float(by["test", "float32"][3])  # MB
    assert by["test", "float32"][6] == "1.00x" and by["test", "float32"][8] == "1.0000"
    # the float32 row is the score training gave best.pt on test
    tested = json.loads((out / "metrics.json").read_text())["test"]["emotion"]
    assert by["test", "float32"][4] == tested["count"]
    assert float(by["test", "float32"][7]) == round(tested["weighted_f1"], 4)
    assert "Test evaluations made by this command: 2" in capsys.readouterr().out

"""bench/fusion.py end to end on a few generated clips with tiny encoders."""
from __future__ import annotations

import json

import pytest
from bench_loader import emotion_predictions, load_bench
from sklearn.metrics import accuracy_score, f1_score

from tests.conftest import TINY_MODEL, TINY_PREPROCESS


@pytest.mark.slow
def test_fusion_bench_trains_every_variant_and_reports_moe_load(tmp_path, tiny_text_model, capsys):
    bench = load_bench("fusion")
    argv = ["--work-dir", str(tmp_path), "--quick", "--clips-per-class", "2", "--eval-clips-per-class", "1",
            "--epochs", "1",
            "--audio-random-share", "0.5", "--video-random-share", "0.25",
            f"preprocess.text.model={tiny_text_model}", *TINY_PREPROCESS, *TINY_MODEL,
            "model.encoders.text.freeze_layers=0", "train.batch_size=8"]
    rows = bench.main(argv)

    assert [row["variant"] for row in rows] == list(bench.VARIANTS)
    assert [row["variant"].modalities for row in rows[:3]] == [("text",), ("audio",), ("video",)]
    for row in rows:
        assert 0.0 <= row["weighted_f1"] <= 1.0 and row["best_epoch"] == 1
        if row["variant"].head == "moe":
            assert len(row["load"]) == 4 and sum(row["load"]) == pytest.approx(1.0, abs=1e-5)
        else:
            assert row["load"] is None
    # Each row's figures are those of its best.pt on the test split, recomputed by sklearn.
    cache_dir = bench.prepare_data(bench.parse_args(argv))
    for row in rows:
        labels, predictions = emotion_predictions(tmp_path / "runs" / row["variant"].key / "best.pt",
                                                  cache_dir / "test")
        assert len(labels) == 7
        assert row["weighted_f1"] == pytest.approx(f1_score(labels, predictions, labels=range(7), average="weighted",
                                                            zero_division=0), abs=1e-9), row["variant"].key
        assert row["accuracy"] == pytest.approx(accuracy_score(labels, predictions), abs=1e-9)
    out = capsys.readouterr().out
    assert out.count("\n| ") == 1 + len(rows)
    assert "random voice 50%, random face 25%" in out

    # The data was generated with the requested difficulty, and the same arguments reuse it.
    (generation,) = tmp_path.glob("data-*/generation.json")
    info = json.loads(generation.read_text())
    assert info["difficulty"] == {"ambiguous_share": 0.3, "audio_random_share": 0.5, "video_random_share": 0.25}
    assert info["summary"]["splits"]["train"]["off_label"]["audio"] > 0
    assert info["summary"]["splits"]["test"]["rows"] == 7 and info["summary"]["splits"]["train"]["rows"] == 14
    written = generation.stat().st_mtime_ns
    assert bench.prepare_data(bench.parse_args(argv)) == generation.parent / "cache"
    assert generation.stat().st_mtime_ns == written

    # --only trains just the named variants, on the same data.
    rows = bench.main([*argv, "--only", "audio_only,attention_moe"])
    assert [row["variant"].key for row in rows] == ["audio_only", "attention_moe"]
    assert generation.stat().st_mtime_ns == written
    with pytest.raises(SystemExit):
        bench.parse_args([*argv, "--only", "concat_lstm"])

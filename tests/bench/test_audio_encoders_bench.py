"""bench/audio_encoders.py end to end on a few generated clips, a random tiny Whisper and no weights."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from bench_loader import load_bench

from pipeline.data.cache import CacheSplit


@pytest.mark.slow
def test_audio_encoder_bench_trains_both_encoders_on_one_waveform_cache(tmp_path, capsys):
    bench = load_bench("audio_encoders")
    argv = ["--work-dir", str(tmp_path), "--quick", "--seeds", "0,1", "--epochs", "1", "--max-seconds", "1.5",
            "--workers", "1", "train.batch_size=8"]
    rows = bench.main(argv)

    assert [(row["encoder"], row["seed"]) for row in rows] == [("vggish", 0), ("vggish", 1), ("whisper", 0),
                                                                ("whisper", 1)]
    for row in rows:
        assert 0.0 <= row["weighted_f1"] <= 1.0 and row["best_epoch"] == 1 and row["epoch_seconds"] > 0
    out = capsys.readouterr().out
    assert out.count("\n| ") == 1 + 2  # header, then one row per encoder
    assert "QUICK RUN" in out

    # One audio-only cache with the waveform (1.5 s at most) beside the log-mel serves both.
    (data_dir,) = tmp_path.glob("data-*")
    dev = CacheSplit(data_dir / "cache" / "dev")
    assert dev.preprocess["modalities"] == ["audio"] and dev.preprocess["audio"]["waveform"] is True
    arrays = dev.load(dev.records[0]["id"])
    assert set(arrays) == {"log_mel", "waveform"} and arrays["waveform"].dtype == np.int16
    assert 0 < len(arrays["waveform"]) <= 24000
    assert not (data_dir / "MELD.Raw" / "test_sent_emo.csv").exists()  # no test split is made or read
    # The whisper runs read the waveform with the frozen (here random, tiny) encoder.
    metrics = json.loads((tmp_path / "runs" / "whisper-seed0" / "metrics.json").read_text())
    assert metrics["best_epoch"] == 1 and len(metrics["epochs"]) == 1
    resolved = yaml.safe_load((tmp_path / "runs" / "whisper-seed0" / "config.yaml").read_text())
    assert resolved["model"]["encoders"]["audio"]["type"] == "whisper"
    assert resolved["model"]["encoders"]["audio"]["freeze_layers"] == -1

"""Non-finite values never pass silently: preprocessing refuses to write a NaN feature (a
skipped row with the reason), training stops on a non-finite loss naming the step and the
samples (no best.pt from NaN weights), inference refuses a checkpoint with NaN weights,
metrics.json stays valid JSON, and ``inf``/``nan`` are refused for numeric config keys."""
from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_helpers import read_manifest, run_cli

from pipeline import infer, preprocess, train
from pipeline.config import ConfigError, load_config
from pipeline.data.meld import CLIP_DIRS, CSV_NAMES
from pipeline.sample.clip import make_clip
from pipeline.sample.text import write_meld_csv
from pipeline.train import run_outputs

pytestmark = pytest.mark.filterwarnings("ignore:Unable to enable fault handler")


def strict_json(text: str):
    """json.loads that rejects NaN/Infinity, as strict JSON readers (and other languages) do."""
    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def nan_audio_clip(path: Path) -> Path:
    """A 1 s clip whose float audio stream holds NaN samples (a MOV container named .mp4)."""
    samples = (0.1 * np.sin(np.arange(48000) * 2 * np.pi * 440 / 48000)).astype("<f4")
    samples[1000:1100] = np.nan
    raw = path.with_suffix(".f32")
    path.parent.mkdir(parents=True, exist_ok=True)
    samples.tofile(raw)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "f32le", "-ar", "48000", "-ac", "1",
                    "-i", str(raw), "-c:a", "pcm_f32le", "-f", "mov", str(path)], check=True)
    raw.unlink()
    return path


def test_preprocessing_refuses_to_write_a_non_finite_feature(tiny_meld_cache, tmp_path):
    root = tmp_path / "meld"
    rows = [{"Sr No.": n, "Utterance": "i am so happy", "Speaker": "Joey", "Emotion": "joy", "Sentiment": "positive",
             "Dialogue_ID": 0, "Utterance_ID": n, "Season": 1, "Episode": 1, "StartTime": "00:00:01,000",
             "EndTime": "00:00:02,000"} for n in range(2)]
    write_meld_csv(root / CSV_NAMES["dev"], rows)
    nan_audio_clip(root / CLIP_DIRS["dev"] / "dia0_utt0.mp4")
    make_clip(root / CLIP_DIRS["dev"] / "dia0_utt1.mp4", "joy", 1, 1.0, 64, 36)
    out = tmp_path / "cache"
    status = preprocess.main([str(root), str(out), "--splits", "dev", "--workers", "1",
                              *tiny_meld_cache["preprocess_overrides"], "preprocess.modalities=[audio,text]"])
    assert status == 0
    rows = read_manifest(out / "dev")
    assert rows["dia0_utt0"]["status"] == "skipped"
    assert rows["dia0_utt0"]["reason"] == "non-finite values (NaN or inf) in log_mel"
    assert not (out / "dev" / "items" / "dia0_utt0.npz").exists()
    assert rows["dia0_utt1"]["status"] == "ok"


def test_training_stops_on_a_non_finite_loss_naming_the_step_and_samples(trained_run, tmp_path, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(Path(trained_run["overrides"][0].split("=", 1)[1]), cache)
    poisoned = sorted((cache / "train" / "items").glob("*.npz"))[3]
    with np.load(poisoned) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["log_mel"][0, 0] = np.nan
    np.savez(poisoned, **arrays)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train.main([*trained_run["overrides"], f"data.cache_dir={cache}", f"output_dir={out}", "train.epochs=1"])
    assert exit_info.value.code == 1
    message = capsys.readouterr().err
    assert "ERROR pipeline.train: training stopped: non-finite loss (nan) at epoch 1, step " in message
    assert poisoned.stem in message.split("on the samples", 1)[1].splitlines()[0]
    assert not (out / "best.pt").exists() and not (out / "last.pt").exists()


def test_inference_refuses_a_checkpoint_with_non_finite_weights(trained_run, tiny_meld_cache, tmp_path, caplog):
    ckpt = torch.load(trained_run["out"] / "best.pt", map_location="cpu", weights_only=True)
    name = next(key for key, tensor in ckpt["model"].items() if tensor.is_floating_point())
    ckpt["model"][name].view(-1)[0] = math.nan
    torch.save(ckpt, tmp_path / "nan.pt")
    out = tmp_path / "p.jsonl"
    with caplog.at_level(logging.ERROR):
        status = infer.main(["--checkpoint", str(tmp_path / "nan.pt"),
                             "--clips", str(Path(tiny_meld_cache["meld_root"]) / CLIP_DIRS["test"]),
                             "--out", str(out), "--workers", "0", "--device", "cpu"])
    assert status == 1
    assert f"{tmp_path / 'nan.pt'} holds non-finite weights (NaN or inf) in 1 tensors, e.g. {name}" in caplog.text
    assert not out.exists() and not out.with_name("p.jsonl.partial").exists()


def test_metrics_json_stays_valid_json(tmp_path):
    run_outputs.write_json(tmp_path / "metrics.json", {"best_val": -math.inf, "epochs": [{"val": {"loss": math.nan}}]})
    assert strict_json((tmp_path / "metrics.json").read_text(encoding="utf-8")) == {
        "best_val": None, "epochs": [{"val": {"loss": None}}]}


@pytest.mark.parametrize("override", ["train.lr=.inf", "train.grad_clip=.nan", "preprocess.audio.max_seconds=.inf",
                                      "train.task_weights.emotion=.nan", "model.head.dropout=.nan"])
def test_config_refuses_inf_and_nan(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{key}: must be a finite number, got (inf|nan)$"):
        load_config(None, [override])


def test_the_training_command_line_refuses_inf(tmp_path):
    result = run_cli(["-m", "pipeline.train", "train.lr=.inf", f"output_dir={tmp_path / 'run'}"])
    assert result.returncode == 2 and "train.lr: must be a finite number, got inf" in result.stderr
    assert list(tmp_path.iterdir()) == []

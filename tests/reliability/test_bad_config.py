"""Config: unknown keys, wrong types and impossible values are refused by the command lines
before any work starts: a non-zero exit, a message naming the key and the problem, and no
output folder or cache written. A text model that cannot be loaded stops a preprocessing run
with a worker pool, instead of hanging it."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from reliability_helpers import run_cli

from pipeline import infer, preprocess, train

# train.main in process: torchelastic's @record cannot reach the fault handler through pytest's capture
pytestmark = pytest.mark.filterwarnings("ignore:Unable to enable fault handler")

# (command-line key=value or YAML file content, the message the tool prints)
TRAIN_CASES = {
    "unknown key": ("train.learning_rate=0.001", "unknown key train.learning_rate; valid keys here:"),
    "wrong type": ("train.epochs=two", "train.epochs: expected int, got str 'two'"),
    "negative lr": ("train.lr=-0.001", "train.lr: must be > 0, got -0.001"),
    "no frames": ("preprocess.video.num_frames=0", "preprocess.video.num_frames: must be >= 1, got 0"),
    "unknown component": ("model.fusion.type=transformer", "model.fusion.type: 'transformer' is not one of"),
    "component value": ("model.head.dropout=1.5", "model.head.dropout: must be in [0, 1), got 1.5"),
    "yaml unknown key": ({"train": {"epochs": 1, "warmup": 0.1}}, "unknown key train.warmup"),
    "yaml wrong type": ({"data": {"num_workers": "four"}}, "data.num_workers: expected int, got str 'four'"),
}
PREPROCESS_CASES = {
    "unknown key": ("preprocess.video.frames=4", "unknown key preprocess.video.frames"),
    "wrong type": ("preprocess.audio.n_mels=[64]", "preprocess.audio.n_mels: expected int, got list [64]"),
    "no frames": ("preprocess.video.num_frames=0", "preprocess.video.num_frames: must be >= 1, got 0"),
    "yaml impossible value": ({"preprocess": {"audio": {"max_seconds": -1}}},
                              "preprocess.audio.max_seconds: must be > 0, got -1.0"),
}


def as_arguments(setting: str | dict, folder: Path) -> list[str]:
    """An override as given, or a dict written to a YAML file passed with --config."""
    if isinstance(setting, str):
        return [setting]
    path = folder / "bad.yaml"
    path.write_text(yaml.safe_dump(setting), encoding="utf-8")
    return ["--config", str(path)]


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_training_refuses_a_bad_config_before_any_work(tiny_meld_cache, tmp_path, capsys, case):
    setting, message = TRAIN_CASES[case]
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train.main([*tiny_meld_cache["overrides"], f"output_dir={out}", *as_arguments(setting, tmp_path)])
    assert exit_info.value.code != 0
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("case", list(PREPROCESS_CASES))
def test_preprocessing_refuses_a_bad_config_before_any_work(tiny_meld_cache, tmp_path, capsys, case):
    setting, message = PREPROCESS_CASES[case]
    out = tmp_path / "cache"
    with pytest.raises(SystemExit) as exit_info:
        preprocess.main([tiny_meld_cache["meld_root"], str(out), "--workers", "1",
                         *as_arguments(setting, tmp_path)])
    assert exit_info.value.code != 0
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_inference_refuses_impossible_options_before_any_work(tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    for option, message in ((["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
                            (["--workers", "-1"], "--workers must be >= 0, got -1"),
                            (["--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N, got 'gpu'")):
        with pytest.raises(SystemExit) as exit_info:
            infer.main(["--checkpoint", str(tmp_path / "best.pt"), "--clips", str(tmp_path), "--out", str(out),
                        *option])
        assert exit_info.value.code != 0
        assert message in capsys.readouterr().err
    assert not out.exists()


def test_the_real_command_line_exits_with_the_message(tmp_path):
    """The same refusal from ``python -m pipeline.train`` as a user types it: exit status 2,
    the message on stderr without a traceback, nothing written."""
    result = run_cli(["-m", "pipeline.train", "train.lr=-1", f"output_dir={tmp_path / 'run'}"])
    assert result.returncode == 2 and "train.lr: must be > 0, got -1.0" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_text_model_that_cannot_be_loaded_stops_a_worker_pool_run(tiny_meld_cache, tmp_path):
    """With ``--workers 2`` the tokenizer is loaded in pool workers, and a pool restarts a
    worker whose start-up fails, forever: preprocessing must fail with the message instead
    of hanging, and write nothing, so that the corrected rerun into the same folder works."""
    missing = tmp_path / "no such model"
    command = ["-m", "pipeline.preprocess", tiny_meld_cache["meld_root"], tmp_path / "cache", "--splits", "dev",
               "--workers", "2", *tiny_meld_cache["preprocess_overrides"]]
    result = run_cli([*command, f"preprocess.text.model={missing}"], timeout=120)
    assert result.returncode == 1
    assert f"text model folder {missing} does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*.*"))
    result = run_cli(command, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cache" / "dev" / "manifest.jsonl").is_file()

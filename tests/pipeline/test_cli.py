"""The ``meld-fusion`` console command (``pipeline.cli``): declared in setup.cfg, installed as
a script, ``--version`` from the distribution, ``--help`` listing the six stages, each stage
run with its own parser and exit status, and ``--print-config`` of train, preprocess and
embed printing the resolved config without running anything."""
from __future__ import annotations

import configparser
import dataclasses
import importlib
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import cli
from pipeline.config import Config

REPO = Path(__file__).resolve().parents[2]
STAGES = ("preprocess", "train", "embed", "infer", "fetch", "sample")


def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return parser


def console_scripts() -> dict[str, str]:
    """``name -> module:function`` of setup.cfg's console_scripts."""
    lines = setup_cfg()["options.entry_points"]["console_scripts"].strip().splitlines()
    return {name.strip(): target.strip() for name, target in (line.split("=") for line in lines)}


def test_setup_cfg_declares_the_console_command():
    module, function = console_scripts()["meld-fusion"].split(":")
    assert getattr(importlib.import_module(module), function) is cli.main


def test_the_installed_script_runs_the_command():
    script = Path(sys.executable).parent / "meld-fusion"
    if not script.is_file():
        pytest.skip("meld-fusion is not installed here (pip install -e . puts it beside the interpreter)")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"meld-fusion {setup_cfg()['metadata']['version']}"


def test_version_is_the_one_of_setup_cfg(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"meld-fusion {setup_cfg()['metadata']['version']}"


def test_help_lists_every_stage_with_a_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    for stage in STAGES:
        described = [line for line in lines if line.split()[:1] == [stage] and len(line.split()) > 2]
        assert len(described) == 1, (stage, lines)


def test_python_dash_m_pipeline_is_the_same_command():
    result = subprocess.run([sys.executable, "-m", "pipeline", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m pipeline ")
    assert all(f"\n  {stage} " in result.stdout for stage in STAGES), result.stdout


@pytest.mark.parametrize("argv", [[], ["no-such-stage"], ["--no-such-option"]])
def test_no_or_an_unknown_stage_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert "usage: meld-fusion" in capsys.readouterr().err


def test_a_stage_gets_its_own_parser_under_the_command_name(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sample", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: meld-fusion sample ") and "--clips-per-class" in out


@pytest.mark.parametrize("stage", ["train", "preprocess", "sample"])
def test_a_usage_error_exits_2_as_under_python_dash_m(stage, capsys):
    argv = {"train": ["no.such.key=1"], "preprocess": ["only-one-folder"], "sample": []}[stage]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([stage, *argv])
    assert exit_info.value.code == 2
    assert f"usage: meld-fusion {stage}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(f"pipeline.{stage}.cli").main(argv)
    assert exit_info.value.code == 2
    assert f"usage: python -m pipeline.{stage}" in capsys.readouterr().err


def test_a_failing_stage_exits_with_its_status(tmp_path):
    """infer returns 1 for a checkpoint that is not there: the command returns it too."""
    argv = ["--checkpoint", str(tmp_path / "missing.pt"), "--clips", str(tmp_path), "--out", str(tmp_path / "p.jsonl")]
    assert importlib.import_module("pipeline.infer.cli").main(argv) == 1
    assert cli.main(["infer", *argv]) == 1


# --------------------------------------------------------------------------- --print-config
def run_print_config(argv: list[str], capsys) -> dict:
    """``meld-fusion ARGV`` (which must exit 0) parsed as YAML."""
    assert cli.main(argv) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_train_print_config_applies_the_file_and_the_overrides_and_runs_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a run would write runs/... here
    config_file = REPO / "configs" / "demo.yaml"
    printed = run_print_config(["train", "--print-config", "--config", str(config_file), "train.epochs=7"], capsys)
    assert printed["train"]["epochs"] == 7
    assert printed["output_dir"] == yaml.safe_load(config_file.read_text())["output_dir"]
    assert list(printed) == [field.name for field in dataclasses.fields(Config)]
    assert printed["train"]["weight_decay"] == Config().train.weight_decay  # untouched keys keep their defaults
    assert list(tmp_path.iterdir()) == []


def test_train_print_config_refuses_a_bad_key_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--print-config", "train.epochz=7"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: unknown key train.epochz" in err and "Traceback" not in err


def test_preprocess_print_config_prints_the_preprocess_section(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    printed = run_print_config(["preprocess", "--print-config", "preprocess.video.num_frames=4"], capsys)
    assert list(printed) == ["preprocess"]
    assert printed["preprocess"]["video"]["num_frames"] == 4
    assert printed["preprocess"]["audio"]["n_mels"] == Config().preprocess.audio.n_mels
    assert list(tmp_path.iterdir()) == []


def test_embed_print_config_needs_no_cache_and_refuses_a_bad_key(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.chdir(tmp_path)
    config_file = REPO / "configs" / "default.yaml"
    printed = run_print_config(["embed", "--config", str(config_file), "--print-config", "train.epochs=7"], capsys)
    assert printed["train"]["epochs"] == 7
    assert printed["model"]["encoders"]["video"]["weights"] == "none"  # from the file
    assert list(tmp_path.iterdir()) == []
    with caplog.at_level(logging.ERROR):
        assert cli.main(["embed", "--config", str(config_file), "--print-config", "train.epochz=7"]) == 1
    assert any("unknown key train.epochz" in record.getMessage() for record in caplog.records)

"""What a researcher reads first: every ``--help`` answers at once (no torch, no transformers
imported), every option says what it does and its default, the training help lists the
config sections, and ``make help`` lists the Make targets."""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.config import Config

REPO = Path(__file__).resolve().parents[2]
STAGES = ("preprocess", "train", "embed", "infer", "fetch", "sample")
HEAVY = ("torch", "transformers")  # what --help must not wait for
IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)\s*$")


def stage_parser(stage: str) -> argparse.ArgumentParser:
    return importlib.import_module(f"pipeline.{stage}.cli").build_parser()


def imported_modules(stderr: str) -> set[str]:
    """The modules a ``python -X importtime`` run imported (from its stderr)."""
    return {match.group(1) for match in map(IMPORT_LINE.match, stderr.splitlines()) if match}


def run_help(command: list[str]) -> tuple[str, set[str]]:
    """``python -X importtime COMMAND --help``: its stdout and the modules it imported."""
    result = subprocess.run([sys.executable, "-X", "importtime", *command, "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout, imported_modules(result.stderr)


def heavy_imports(modules: set[str]) -> list[str]:
    return sorted(name for name in modules if name.split(".")[0] in HEAVY)


@pytest.mark.parametrize("launcher", ["module", "console"])
@pytest.mark.parametrize("stage", STAGES)
def test_help_answers_without_torch(stage, launcher):
    command = ["-m", f"pipeline.{stage}"] if launcher == "module" else ["-m", "pipeline", stage]
    out, modules = run_help(command)
    assert f"pipeline.{stage}.cli" in modules  # the stage's parser did answer
    assert not heavy_imports(modules), heavy_imports(modules)
    prog = f"python -m pipeline.{stage}" if launcher == "module" else f"python -m pipeline {stage}"
    assert out.startswith(f"usage: {prog}")
    for action in stage_parser(stage)._actions:
        if action.help and action.help is not argparse.SUPPRESS:
            first_words = " ".join(action.help.split()[:3])
            assert first_words in " ".join(out.split()), (action.dest, first_words)


def test_top_level_help_answers_without_any_stage():
    out, modules = run_help(["-m", "pipeline"])
    assert not heavy_imports(modules), heavy_imports(modules)
    assert not [name for name in modules if name.startswith(tuple(f"pipeline.{s}" for s in STAGES))]
    assert all(f"\n  {stage} " in out for stage in STAGES)


def test_the_installed_script_answers_help_without_torch():
    script = Path(sys.executable).parent / "meld-fusion"
    if not script.is_file():
        pytest.skip("meld-fusion is not installed here (pip install -e . puts it beside the interpreter)")
    out, modules = run_help([str(script), "train"])
    assert out.startswith("usage: meld-fusion train")
    assert "pipeline.train.cli" in modules and not heavy_imports(modules), heavy_imports(modules)


@pytest.mark.parametrize("stage", [*STAGES, None])
def test_every_option_says_what_it_does_and_its_default(stage):
    parser = stage_parser(stage) if stage else cli.build_parser("meld-fusion")
    parser.format_help()  # every %(default)s and %(prog)s expands
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help is not argparse.SUPPRESS, f"{stage}: {name} has no help"
        if action.option_strings and not isinstance(action, argparse._VersionAction):
            assert "default" in action.help or "required" in action.help, \
                f"{stage}: {name} does not say its default: {action.help!r}"


def test_train_help_lists_the_config_sections():
    out = stage_parser("train").format_help()
    assert "configs/" in out
    for field in dataclasses.fields(Config):
        assert re.search(rf"^  {field.name}[ \t]+\w", out, re.MULTILINE), f"section {field.name} not described"


def test_help_constants_agree_with_the_modules_they_spell_out():
    """The parsers avoid importing torch by spelling out two constants: they must agree."""
    from encoders import models_home
    from pipeline.embed import cli as embed_cli, encode
    from pipeline.fetch import cli as fetch_cli

    assert tuple(sorted(embed_cli.DTYPE_NAMES)) == tuple(sorted(encode.DTYPES))
    assert fetch_cli.HOME_HELP == f"${models_home.ENV_VAR}, else {models_home.DEFAULT_HOME}"


def test_make_help_lists_every_target_with_a_line():
    if shutil.which("make") is None:
        pytest.skip("no make here")
    result = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0]: line.split(None, 1)[1] for line in result.stdout.splitlines() if line.strip()}
    targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), re.MULTILINE))
    assert targets >= {"install", "demo", "test", "lint", "help"}
    assert set(listed) == targets, result.stdout

"""The architecture is checked, not just drawn: the import contracts of setup.cfg hold for the
tree (``lint-imports``, as ``make test`` runs it), and fail when a forbidden import is planted
in a copy of it. The tree keeps its shape: one folder per command, small folders and modules."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
STAGES = ("preprocess", "train", "embed", "infer", "fetch", "sample")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` over the packages under ``root`` (they come first on the path)."""
    return subprocess.run([sys.executable, "-c", LINT, "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)}, timeout=300)


def planted_copy(tmp_path: Path, module: str, line: str) -> Path:
    """A copy of the packages and setup.cfg with ``line`` added to ``module`` (a path)."""
    for name in ("pipeline", "encoders", "fusion"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "setup.cfg", tmp_path / "setup.cfg")
    path = tmp_path / module
    path.write_text(path.read_text() + f"\n{line}\n")
    return tmp_path


def test_the_tree_keeps_its_import_contracts():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module, line, reported", [
    # inference imports training (a stage another stage)
    ("pipeline/infer/predict.py", "from pipeline.train import fit", "pipeline.infer.predict -> pipeline.train.fit"),
    ("pipeline/embed/encode.py", "from pipeline.preprocess import run", "pipeline.embed.encode -> pipeline.preprocess.run"),
    # a shared piece reaches sideways or up
    ("pipeline/data/cache.py", "from pipeline.model import load_checkpoint", "pipeline.data.cache -> pipeline.model"),
    ("pipeline/media/features.py", "from pipeline.data import meld", "pipeline.media.features -> pipeline.data.meld"),
    ("pipeline/config/checking.py", "from pipeline import labels", "pipeline.config.checking -> pipeline.labels"),
    # the model parts stay leaves
    ("encoders/audio.py", "from pipeline.config import ConfigError", "encoders.audio -> pipeline.config"),
    ("fusion/heads.py", "import encoders", "fusion.heads -> encoders"),
    # a circle inside a stage
    ("pipeline/train/guards.py", "import pipeline.train.fit", ".guards -> .fit"),
])
def test_a_planted_import_breaks_a_contract(tmp_path, module, line, reported):
    result = lint_imports(planted_copy(tmp_path, module, line))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout and reported in result.stdout, result.stdout


def test_one_folder_per_command_with_a_main_and_small_modules():
    pipeline = REPO / "pipeline"
    for stage in STAGES:
        folder = pipeline / stage
        assert (folder / "__main__.py").is_file() and (folder / "cli.py").is_file(), stage
    for folder in [pipeline, *(p for p in pipeline.iterdir() if p.is_dir() and p.name != "__pycache__")]:
        modules = [p for p in folder.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
        assert len(modules) <= 12, f"{folder} holds {len(modules)} modules: split it by idea"
        for module in modules:
            lines = len(module.read_text().splitlines())
            assert lines <= 400, f"{module} has {lines} lines: split it by idea"


@pytest.mark.parametrize("stage", STAGES)
def test_every_command_answers_help(stage):
    result = subprocess.run([sys.executable, "-m", f"pipeline.{stage}", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"python -m pipeline.{stage}" in result.stdout

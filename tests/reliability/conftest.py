"""Fixtures of the reliability suite (the tiny cache and model come from tests/conftest.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
from reliability_helpers import TRAIN, run_cli

from tests.conftest import shared_folder


@pytest.fixture(scope="session")
def trained_run(tiny_meld_cache, tmp_path_factory) -> dict:
    """One uninterrupted ``python -m pipeline.train`` run of the tiny model on the tiny cache
    (2 epochs of 7 steps, CPU, fixed seed): the reference of the kill-and-resume test and the
    source of real last.pt/best.pt files. Returns ``{"out": run folder, "overrides": [...]}``;
    tests must not write into the folder (under xdist all workers read the same one)."""
    overrides = [*tiny_meld_cache["overrides"], *TRAIN]

    def build(folder: Path) -> None:
        result = run_cli(["-m", "pipeline.train", *overrides, f"output_dir={folder / 'run'}"])
        assert result.returncode == 0, result.stderr[-3000:]

    return {"out": shared_folder(tmp_path_factory, "trained", build) / "run", "overrides": overrides}

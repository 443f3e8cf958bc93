"""Fixtures of the reliability suite (the tiny cache and model come from tests/conftest.py)."""
from __future__ import annotations

import pytest
from reliability_helpers import TRAIN, run_cli


@pytest.fixture(scope="session")
def trained_run(tiny_meld_cache, tmp_path_factory) -> dict:
    """One uninterrupted ``python -m pipeline.train`` run of the tiny model on the tiny cache
    (2 epochs of 7 steps, CPU, fixed seed): the reference of the kill-and-resume test and the
    source of real last.pt/best.pt files. Returns ``{"out": run folder, "overrides": [...]}``;
    tests must not write into the folder."""
    out = tmp_path_factory.mktemp("trained") / "run"
    overrides = [*tiny_meld_cache["overrides"], *TRAIN]
    result = run_cli(["-m", "pipeline.train", *overrides, f"output_dir={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return {"out": out, "overrides": overrides}

"""Helpers of the tests that run training in a subprocess (test_train, test_embed): the
harness that hooks the training loop, the environment, and metrics compared without the
wall-clock figures."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).parent / "train" / "train_harness.py"


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def run(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)


def without_timings(metrics: dict) -> dict:
    """metrics.json minus the wall-clock figures, which differ between any two runs."""
    rows = [{k: v for k, v in row.items() if k not in ("seconds", "samples_per_second", "data_wait_share")}
            for row in metrics["epochs"]]
    return {**metrics, "epochs": rows}

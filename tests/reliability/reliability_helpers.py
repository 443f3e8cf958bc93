"""Helpers of the reliability suite: run the command-line tools as a user runs them, and
compare feature caches byte for byte."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.data.cache import CacheSplit

REPO = Path(__file__).resolve().parents[2]
# A path part that a shell would split, unquote and execute (``$(touch pwned)``), with
# non-ASCII letters: every tool must pass such paths to its children as plain arguments.
ODD_NAME = "it's \"odd\" $(touch pwned) naïve 日本"
SHELL_MARKER = "pwned"  # the file ``$(touch pwned)`` would create if a shell ever ran it
# Training settings of every run in this suite: the tiny model of tests/conftest.py on the
# CPU, deterministic (one thread, fixed seed, data loading in the training process).
TRAIN = ["data.num_workers=0", "train.batch_size=2", "train.epochs=2", "train.device=cpu", "train.seed=3"]


def cli_env() -> dict[str, str]:
    """The environment of a tool started by a test: one thread, offline, this checkout."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(REPO)}


def run_cli(args: Sequence[str | Path], cwd: Path = REPO, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python ARGS`` (e.g. ``-m pipeline.train ...``) as a subprocess; output captured as text."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=cli_env(), capture_output=True,
                          text=True, timeout=timeout)


def read_manifest(split_dir: Path) -> dict[str, dict]:
    """The rows of ``split_dir/manifest.jsonl`` by id, in file order."""
    lines = (split_dir / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    return {row["id"]: row for row in map(json.loads, lines)}


def assert_same_arrays(left: dict[str, np.ndarray], right: dict[str, np.ndarray], what: str) -> None:
    """Same array names, dtypes, shapes and bytes."""
    assert left.keys() == right.keys(), what
    for name in left:
        assert left[name].dtype == right[name].dtype and left[name].shape == right[name].shape, f"{what} {name}"
        assert left[name].tobytes() == right[name].tobytes(), f"{what} {name}"


def assert_same_cache(cache_dir: Path, reference_dir: Path) -> None:
    """Every split of ``reference_dir`` is in ``cache_dir`` with the same meta.json, the same
    manifest text and byte-identical arrays for every ok sample (and no other samples)."""
    splits = sorted(path.name for path in reference_dir.iterdir() if (path / "meta.json").is_file())
    assert splits and splits == sorted(path.name for path in cache_dir.iterdir() if (path / "meta.json").is_file())
    for split in splits:
        got, expected = CacheSplit(cache_dir / split), CacheSplit(reference_dir / split)
        assert got.complete and got.meta == expected.meta, split
        assert ((cache_dir / split / "manifest.jsonl").read_text(encoding="utf-8")
                == (reference_dir / split / "manifest.jsonl").read_text(encoding="utf-8")), split
        ok = [row["id"] for row in expected.records]
        assert sorted(path.stem for path in (cache_dir / split / "items").glob("*.npz")) == sorted(ok), split
        for id_ in ok:
            assert_same_arrays(got.load(id_), expected.load(id_), f"{split}/{id_}")


def without_timings(metrics: dict) -> dict:
    """metrics.json minus the wall-clock figures, which differ between any two runs."""
    rows = [{k: v for k, v in row.items() if k not in ("seconds", "samples_per_second", "data_wait_share")}
            for row in metrics["epochs"]]
    return {**metrics, "epochs": rows}


def signal_inside_epoch_2(command: list[str], after_steps: int,
                          signum: int = signal.SIGKILL) -> tuple[int, int, str]:
    """Start ``command`` (a training run), follow its progress bar on stderr and send it
    ``signum`` as soon as at least ``after_steps`` (but not all) steps of epoch 2 are done.
    Returns (its exit status, the steps of epoch 2 the bar showed done at the signal, 0 if
    never; and all it wrote to stderr)."""
    process = subprocess.Popen(command, cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen, done = "", 0
    try:
        while chunk := os.read(process.stderr.fileno(), 65536):
            seen += chunk.decode("utf-8", "replace")
            steps = re.findall(r"epoch 2:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)", seen)
            if steps and after_steps <= int(steps[-1][0]) < int(steps[-1][1]):
                done = int(steps[-1][0])
                process.send_signal(signum)
                break
        seen += process.communicate(timeout=300)[1].decode("utf-8", "replace")
    finally:
        process.kill()
        process.wait()
        process.stderr.close()
    return process.returncode, done, seen

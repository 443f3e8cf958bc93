"""Kills: ``python -m pipeline.preprocess --workers 2`` SIGKILLed at seeded random moments, again
and again, then completed, leaves the cache an uninterrupted run writes, and a reader never
sees a half-written entry; ``python -m pipeline.train`` SIGKILLed in the middle of epoch 2 and
resumed with ``train.resume=true`` ends with the metrics of a run never interrupted."""
from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
from reliability_helpers import (REPO, assert_same_arrays, assert_same_cache, cli_env, read_manifest, run_cli,
                                 signal_inside_epoch_2, without_timings)

from pipeline.data.cache import CacheSplit

KILLS = 3


def children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (the worker pool of a preprocessing run)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Whether process ``pid`` is still running (a zombie waiting to be reaped is not)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def finished(cache_dir: Path) -> int:
    """Ids with a status record, over all splits."""
    return sum(len(list(status.glob("*.json"))) for status in cache_dir.glob("*/status"))


def assert_consistent(cache_dir: Path, reference_dir: Path) -> None:
    """What a reader of a killed run's cache sees is a part of the finished cache: every
    status record is the reference's manifest row, every ok sample's arrays (and any file
    under its final name in items/) are complete and byte-identical to the reference's, and
    anything else is a temporary file."""
    for split_dir in sorted(path for path in cache_dir.iterdir() if (path / "meta.json").is_file()):
        expected = read_manifest(reference_dir / split_dir.name)
        reader = CacheSplit(split_dir)
        assert all(row == expected[row["id"]] for row in reader.rows), split_dir.name
        reference = CacheSplit(reference_dir / split_dir.name)
        for item in (split_dir / "items").iterdir():
            if item.name.endswith(".tmp"):
                continue
            assert item.suffix == ".npz" and expected[item.stem]["status"] == "ok", item
            assert_same_arrays(reader.load(item.stem), reference.load(item.stem), str(item))
        if reader.complete:
            manifest = (reference_dir / split_dir.name / "manifest.jsonl").read_bytes()
            assert (split_dir / "manifest.jsonl").read_bytes() == manifest
        assert not [p for p in (split_dir / "status").iterdir() if not p.name.endswith((".json", ".tmp"))]


def test_preprocessing_killed_again_and_again_then_finished_equals_an_uninterrupted_run(tiny_meld_cache, tmp_path):
    reference = Path(tiny_meld_cache["cache_dir"])  # written by one uninterrupted run with these parameters
    out = tmp_path / "cache"
    command = [sys.executable, "-m", "pipeline.preprocess", tiny_meld_cache["meld_root"], str(out),
               "--workers", "2", *tiny_meld_cache["preprocess_overrides"]]
    delays = random.Random(20240607)
    progress = []
    for _ in range(KILLS):
        before = finished(out)
        process = subprocess.Popen(command, cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            # Once this run has stored something (its workers are busy), wait a random moment.
            wait_for(lambda: finished(out) > before or process.poll() is not None, 120, "a first entry")
            time.sleep(delays.uniform(0.0, 0.6))
            workers = children(process.pid)
        finally:
            process.kill()
            process.wait()
        assert process.returncode == -9, "the run finished before it was killed: too little work to kill"
        # The pool's workers notice their parent is gone and exit; a reader then sees a quiet cache.
        wait_for(lambda: not any(alive(pid) for pid in workers), 60, "the killed run's workers to exit")
        assert_consistent(out, reference)
        progress.append(finished(out))  # each run adds work and none loses any
    total = sum(len(json.loads((split / "ids.json").read_text())) for split in reference.iterdir())
    assert 0 < progress[0] and all(a < b for a, b in zip(progress, progress[1:])) and progress[-1] < total

    result = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_cache(out, reference)


@pytest.mark.slow
def test_training_killed_mid_epoch_then_resumed_matches_an_uninterrupted_run(trained_run, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "pipeline.train", *trained_run["overrides"], f"output_dir={out}"]
    status, done, _ = signal_inside_epoch_2(command, after_steps=random.Random(7).randint(1, 4))
    assert status == -9 and 1 <= done < 7, "the run was not killed inside epoch 2 (7 steps)"
    # Killed inside epoch 2: epoch 1's checkpoint and metrics are there, epoch 2's are not.
    assert torch.load(out / "last.pt", map_location="cpu", weights_only=True)["epoch"] == 1
    assert [row["epoch"] for row in json.loads((out / "metrics.json").read_text())["epochs"]] == [1]

    resumed = run_cli(["-m", "pipeline.train", *trained_run["overrides"], f"output_dir={out}", "train.resume=true"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "after epoch 1" in resumed.stderr

    expected = without_timings(json.loads((trained_run["out"] / "metrics.json").read_text()))
    got = without_timings(json.loads((out / "metrics.json").read_text()))
    assert got["test"] == expected["test"] and got["test"]["emotion"]["count"] == 14
    assert [row["val"] for row in got["epochs"]] == [row["val"] for row in expected["epochs"]]
    assert got == expected
    weights = torch.load(out / "best.pt", map_location="cpu", weights_only=True)["model"]
    reference = torch.load(trained_run["out"] / "best.pt", map_location="cpu", weights_only=True)["model"]
    assert weights.keys() == reference.keys()
    assert all(torch.equal(weights[name], tensor) for name, tensor in reference.items())

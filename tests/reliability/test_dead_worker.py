"""A worker process killed mid-clip (as the kernel's out-of-memory killer does, SIGKILL) never
hangs a run: preprocessing records that clip as skipped with the reason and finishes every
other one (a rerun retries exactly that clip), and inference gives it an error row; both
end in a bounded time with exit status 0.

The kill is made deterministic by running the tool's ``main`` in a small script that wraps
``extract_features`` so that the worker holding one chosen clip SIGKILLs itself; the pool's
workers are forked, so they run the wrapper."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from reliability_helpers import read_manifest, run_cli

from pipeline.data.meld import CLIP_DIRS

VICTIM = "dia1_utt0"  # a dev clip of the tiny MELD folder
REASON = "worker process killed by SIGKILL, e.g. by the out-of-memory killer while working on it"
BOUND = 120  # seconds: the run takes a few; a hang would take forever

SCRIPT = """
import os, signal, sys
import {patched} as patched
from pipeline import {tool}

PARENT = os.getpid()
real = patched.extract_features

def killed_on_victim(clip, *args, **kwargs):
    if clip is not None and os.path.basename(str(clip)) == "{victim}.mp4" and os.getpid() != PARENT:
        os.kill(os.getpid(), signal.SIGKILL)  # a worker process, never the tool's own
    return real(clip, *args, **kwargs)

patched.extract_features = killed_on_victim
sys.exit({tool}.main(sys.argv[1:]))
"""


def run_with_a_killed_worker(patched: str, tool: str, arguments: list) -> subprocess.CompletedProcess:
    """``python -m pipeline.<tool> ARGUMENTS`` whose worker on VICTIM is SIGKILLed; fails the
    test if the run has not ended within BOUND seconds."""
    script = SCRIPT.format(patched=patched, tool=tool, victim=VICTIM)
    try:
        return run_cli(["-c", script, *arguments], timeout=BOUND)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the run hung: still running {BOUND} s after one worker was killed")


@pytest.mark.slow
def test_preprocessing_goes_on_past_a_killed_worker_and_a_rerun_retries_its_clip(tiny_meld_cache, tmp_path):
    out = tmp_path / "cache"
    arguments = [tiny_meld_cache["meld_root"], out, "--splits", "dev", "--workers", "2",
                 *tiny_meld_cache["preprocess_overrides"]]
    result = run_with_a_killed_worker("pipeline.preprocess.run", "preprocess", arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    reference = read_manifest(Path(tiny_meld_cache["cache_dir"]) / "dev")
    rows = read_manifest(out / "dev")
    assert rows[VICTIM]["status"] == "skipped" and rows[VICTIM]["reason"] == REASON
    assert not (out / "dev" / "items" / f"{VICTIM}.npz").exists()
    assert {id_: row for id_, row in rows.items() if id_ != VICTIM} == {
        id_: row for id_, row in reference.items() if id_ != VICTIM}  # every other clip as an undisturbed run
    assert f"{REASON.split(' while')[0]}" in result.stderr

    rerun = run_cli(["-m", "pipeline.preprocess", *arguments], timeout=BOUND)  # nothing kills it this time
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "1 to do" in rerun.stderr  # exactly the lost clip
    assert read_manifest(out / "dev") == reference


@pytest.mark.slow
def test_inference_gives_the_clip_of_a_killed_worker_an_error_row(trained_run, tiny_meld_cache, tmp_path):
    clips = Path(tiny_meld_cache["meld_root"]) / CLIP_DIRS["dev"]
    out = tmp_path / "p.jsonl"
    arguments = ["--checkpoint", trained_run["out"] / "best.pt", "--clips", clips, "--out", out,
                 "--workers", "2", "--device", "cpu", "--batch-size", "4"]
    result = run_with_a_killed_worker("pipeline.infer.decoding", "infer", arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row["clip"] for row in rows] == [str(clip) for clip in sorted(clips.glob("*.mp4"))]
    for row in rows:
        if row["id"] == VICTIM:
            assert row["status"] == "error" and row["error"] == REASON
        else:
            assert row["status"] == "ok", row

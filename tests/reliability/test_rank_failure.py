"""Distributed: under ``torchrun --nproc_per_node=2`` (gloo), a rank that fails while the other
waits in a collective ends the whole job with that rank's error, well before the process
group's own timeout: no hang, and the error is in the output."""
from __future__ import annotations

import re
import shutil
import time
import zipfile
from pathlib import Path

import pytest
from reliability_helpers import TRAIN, run_cli

from pipeline.data.cache import CacheSplit

JOB_TIMEOUT = 240  # seconds; train.dist_timeout_minutes stays at 10, so only a prompt teardown passes


@pytest.mark.slow
def test_a_rank_failing_in_evaluation_ends_the_job_with_its_error(tiny_meld_cache, tmp_path):
    """Rank 1 meets a damaged cache entry while evaluating; rank 0, whose share is fine, is
    then waiting for rank 1 in the gather of the predictions. The damage is a flipped byte
    in the frames: the arrays' headers, checked when the run starts, still read."""
    cache = Path(shutil.copytree(tiny_meld_cache["cache_dir"], tmp_path / "cache"))
    # DistributedSampler(shuffle=False) gives rank r the samples r, r + 2, ...: sample 1 is rank 1's.
    damaged = cache / "dev" / "items" / f"{CacheSplit(cache / 'dev').records[1]['id']}.npz"
    with zipfile.ZipFile(damaged) as archive:
        frames = archive.getinfo("frames.npy")
    data = bytearray(damaged.read_bytes())
    data[frames.header_offset + frames.compress_size // 2] ^= 0xFF  # past the headers, inside the pixels
    damaged.write_bytes(bytes(data))
    out = tmp_path / "run"
    start = time.monotonic()
    result = run_cli(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pipeline.train",
                      *tiny_meld_cache["overrides"], *TRAIN, f"data.cache_dir={cache}", "train.epochs=1",
                      "train.max_steps_per_epoch=1", f"output_dir={out}"], timeout=JOB_TIMEOUT)
    elapsed = time.monotonic() - start
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert elapsed < JOB_TIMEOUT
    assert f"DamagedEntryError: {damaged}: unreadable cache entry (BadZipFile" in output, output[-3000:]
    # torchrun's summary blames the failing rank: its root cause is rank 1, or (the index of the
    # entry and the order of near-simultaneous failures vary) holds rank 1's error itself
    assert "Root Cause (first observed failure):" in output, output[-3000:]
    root = output[output.rfind("Root Cause (first observed failure):"):]
    assert (re.search(r"rank\s*: 1 ", root) or "DamagedEntryError" in root), output[-3000:]
    assert not (out / "last.pt").exists() and not (out / "best.pt").exists()  # nothing half-done saved

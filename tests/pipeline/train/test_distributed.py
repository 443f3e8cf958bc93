"""Process-group helpers, on one process and on two gloo ranks, and failing ranks: a rank that
raises makes the whole job fail with its error, fast, under torchrun and without it."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

from pipeline.data.dataset import MeldDataset
from pipeline.execution import pick_device
from pipeline.train import distributed as dist

REPO = Path(__file__).resolve().parents[3]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **extra}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_single_process_defaults(tmp_path):
    assert not dist.is_distributed()
    assert (dist.get_rank(), dist.get_world_size(), dist.is_main_process()) == (0, 1, True)
    assert dist.all_gather_objects({"a": 1}) == [{"a": 1}]
    assert dist.reduce_mean(2.5, torch.device("cpu")) == 2.5
    dist.barrier()
    dist.cleanup()
    assert pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert pick_device("auto") == torch.device("cpu")
        with pytest.raises(RuntimeError, match="no CUDA device"):
            pick_device("cuda")
    assert dist.init_distributed("cpu") == torch.device("cpu")  # no RANK/WORLD_SIZE: no group
    assert not dist.is_distributed()
    dist.save_on_main({"x": torch.arange(3)}, tmp_path / "a.pt")
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["x"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


def test_save_on_main_keeps_the_old_file_when_writing_dies_midway(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    dist.save_on_main({"epoch": 1}, path)

    def dying_save(obj, target, *args, **kwargs):  # a full disk or a kill, after some bytes
        target.write(b"PK\x03\x04 half a checkpoint")  # the temporary file save_on_main opened
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="No space left"):
        dist.save_on_main({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}  # the previous checkpoint, whole
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # and no temporary file left


WORKER = textwrap.dedent("""
    import json, sys, torch
    from pipeline.train import distributed as dist
    device = dist.init_distributed("cpu", timeout_minutes=1)
    seed = dist.seed_everything(7)
    gathered = dist.all_gather_objects({"rank": dist.get_rank(), "draw": torch.rand(1).item()})
    mean = dist.reduce_mean(float(dist.get_rank()), device)
    backend = torch.distributed.get_backend()
    dist.save_on_main({"saved_by": dist.get_rank()}, sys.argv[1] + "/saved.pt")
    dist.barrier()
    # One file per rank: two ranks printing to one pipe can interleave within a line.
    with open(f"{sys.argv[1]}/rank{dist.get_rank()}.json", "w") as out:
        json.dump({"rank": dist.get_rank(), "world": dist.get_world_size(), "main": dist.is_main_process(),
                   "seed": seed, "gathered": gathered, "mean": mean, "backend": backend}, out)
    dist.cleanup()
    assert not dist.is_distributed()
""")


def test_two_gloo_ranks_gather_reduce_and_seed_apart(tmp_path):
    import json

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script), str(tmp_path)], cwd=REPO, env=env(), capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [row["rank"] for row in rows] == [0, 1]
    assert all(row["world"] == 2 and row["backend"] == "gloo" and row["mean"] == 0.5 for row in rows)
    assert [row["main"] for row in rows] == [True, False]
    assert [row["seed"] for row in rows] == [7, 8]  # seeds offset by rank
    assert rows[0]["gathered"] == rows[1]["gathered"]
    draws = [entry["draw"] for entry in rows[0]["gathered"]]
    assert draws[0] != draws[1]
    assert torch.load(tmp_path / "saved.pt", weights_only=True) == {"saved_by": 0}


FAILING = textwrap.dedent("""
    import sys
    from pipeline.train import distributed as dist
    dist.init_distributed("cpu", timeout_minutes=float(sys.argv[1]))
    if dist.get_rank() == 1:
        raise RuntimeError("rank 1 broke on purpose")
    dist.barrier()  # rank 0 waits here for a rank that never arrives
""")


@pytest.mark.slow
def test_torchrun_ends_the_job_when_one_rank_raises(tmp_path):
    script = tmp_path / "failing.py"
    script.write_text(FAILING)
    start = time.monotonic()
    # A 10-minute group timeout: only torchrun's teardown can end this job within the test's limit.
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script), "10"], cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "rank 1 broke on purpose" in result.stdout + result.stderr
    assert time.monotonic() - start < 120


@pytest.mark.slow
def test_without_torchrun_the_group_timeout_ends_a_waiting_rank(tmp_path):
    script = tmp_path / "failing.py"
    script.write_text(FAILING)
    common = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    start = time.monotonic()
    processes = [subprocess.Popen([sys.executable, str(script), "0.1"], cwd=REPO,
                                  env=env(RANK=str(rank), LOCAL_RANK=str(rank), **common),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for rank in (0, 1)]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode != 0 for process in processes] == [True, True]
    assert "rank 1 broke on purpose" in outputs[1][1]
    assert time.monotonic() - start < 100


@pytest.mark.slow
def test_training_fails_fast_when_only_rank_1_reads_a_corrupt_sample(tiny_meld_cache, tmp_path):
    cache = Path(shutil.copytree(tiny_meld_cache["cache_dir"], tmp_path / "cache"))
    dataset = MeldDataset(cache / "train")
    sampler = DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=0)
    sampler.set_epoch(0)
    victim = dataset.records[next(iter(sampler))]["id"]
    other = DistributedSampler(dataset, num_replicas=2, rank=0, shuffle=True, seed=0)
    other.set_epoch(0)
    assert victim not in {dataset.records[i]["id"] for i in other}
    item = cache / "train" / "items" / f"{victim}.npz"
    item.write_bytes(item.read_bytes()[:100])  # truncated, as by a full disk

    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "pipeline.train", *tiny_meld_cache["overrides"], f"data.cache_dir={cache}",
                             f"output_dir={tmp_path / 'run'}", "data.num_workers=0", "train.batch_size=1",
                             "train.epochs=1"],
                            cwd=REPO, env=env(), capture_output=True, text=True, timeout=240)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "pipeline.train FAILED" in output or "ChildFailedError" in output
    assert "rank      : 1" in output or "rank: 1" in output, output[-3000:]
    assert time.monotonic() - start < 240
    assert not (tmp_path / "run" / "last.pt").exists()

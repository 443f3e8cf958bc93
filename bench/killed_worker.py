"""A preprocessing run that loses a worker process finishes in about its normal time.

    python bench/killed_worker.py [--clips-per-class 4] [--workers 2] [--width 320 --height 180]

Generates a MELD-like dev split (``pipeline.sample``), then runs ``python -m pipeline.preprocess``
on it twice, each into a fresh folder: undisturbed, and with one of its worker processes
SIGKILLed from outside (as the kernel's out-of-memory killer would) once a third of the
clips are done. Prints both wall times, their ratio, and the manifest rows the kill cost
(one clip, skipped with the reason; a rerun redoes it). Before ``pipeline.workers`` the
second run never ended.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # `python bench/x.py` puts bench/ first on sys.path, where bench/fusion.py
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # would shadow the fusion package

import argparse
import json
import os
import signal
import subprocess
import tempfile
import time

from pipeline import sample

REPO = Path(__file__).resolve().parents[1]
LIMIT_FACTOR = 5  # the killed run is stopped (and reported as hung) after this many times the normal one


def children(pid: int) -> list[int]:
    """The direct child processes of ``pid`` (Linux /proc)."""
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def finished(split_dir: Path) -> int:
    status = split_dir / "status"
    return sum(1 for name in os.listdir(status) if name.endswith(".json")) if status.is_dir() else 0


def preprocess(root: Path, out: Path, workers: int, kill_after: int | None, limit: float | None) -> dict:
    """Run the preprocessing CLI; with ``kill_after``, SIGKILL one worker once that many ids are done."""
    command = [sys.executable, "-m", "pipeline.preprocess", str(root), str(out), "--splits", "dev",
               "--workers", str(workers), "preprocess.video.size=112", "preprocess.video.num_frames=4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed = None
    while process.poll() is None:
        if kill_after is not None and killed is None and finished(out / "dev") >= kill_after:
            workers_now = children(process.pid)
            if workers_now:
                killed = workers_now[0]
                os.kill(killed, signal.SIGKILL)
        if limit is not None and time.perf_counter() - start > limit:
            process.kill()
            process.wait()
            return {"seconds": None, "hung": True, "killed_pid": killed}
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    stderr = process.stderr.read().decode("utf-8", "replace")
    if process.returncode != 0:
        raise SystemExit(f"preprocessing failed ({process.returncode}):\n{stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "dev" / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    lost = [row for row in rows if str(row["reason"] or "").startswith("worker process")]
    return {"seconds": seconds, "hung": False, "killed_pid": killed, "rows": len(rows),
            "ok": sum(row["status"] == "ok" for row in rows), "lost": [(row["id"], row["reason"]) for row in lost]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips-per-class", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=180)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_killed_worker_") as scratch:
        work = Path(scratch)
        sample.generate(work / "MELD.Raw", args.clips_per_class, splits=("dev",), width=args.width,
                        height=args.height, duration_range=(2.0, 3.0))
        normal = preprocess(work / "MELD.Raw", work / "normal", args.workers, None, None)
        clips = normal["rows"]
        killed = preprocess(work / "MELD.Raw", work / "killed", args.workers, clips // 3,
                            LIMIT_FACTOR * normal["seconds"] + 30)
    print(f"{clips} dev rows ({args.width}x{args.height}, 2-3 s clips), {args.workers} workers")
    print(f"  undisturbed run       : {normal['seconds']:.1f} s, {normal['ok']} ok")
    if killed["hung"]:
        print(f"  one worker SIGKILLed  : still running after {LIMIT_FACTOR}x the normal time: HUNG")
    else:
        print(f"  one worker SIGKILLed  : {killed['seconds']:.1f} s, {killed['ok']} ok "
              f"(pid {killed['killed_pid']} killed after {clips // 3} clips) = "
              f"{killed['seconds'] / normal['seconds']:.2f}x the undisturbed run")
        for id_, reason in killed["lost"]:
            print(f"    lost: {id_}: {reason}")
    return {"normal": normal, "killed": killed}


if __name__ == "__main__":
    main()

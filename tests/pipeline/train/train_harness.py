"""``pipeline.train`` with test-only hooks, run as a script (alone or under torchrun):

    python tests/pipeline/train/train_harness.py [--ids DIR] [--kill-at EPOCH:STEP] [--node-local-output] -- [train args ...]

``--ids DIR``: every rank appends the clip ids of each training batch to
``DIR/rank<R>.jsonl`` (one line per step: epoch, step, ids). ``--kill-at E:S``: the process
SIGKILLs itself just before training step S of epoch E (both 0-based), as a crash would.
``--node-local-output``: every rank but 0 gets ``output_dir=<output_dir>-rank<R>``, a folder
of its own, as on nodes that share no filesystem.
Nothing here is part of the package: the hooks wrap ``train_one_epoch``'s loader.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import signal
import sys
from pathlib import Path

import pipeline.train.fit as fit
from pipeline.train.cli import main as train_main


class HookedLoader:
    """A loader that records and/or kills before yielding each batch."""

    def __init__(self, loader, epoch: int, ids_dir: Path | None, kill_at: tuple[int, int] | None) -> None:
        self.loader, self.epoch, self.ids_dir, self.kill_at = loader, epoch, ids_dir, kill_at

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        rank = os.environ.get("RANK", "0")
        for step, batch in enumerate(self.loader):
            if self.kill_at == (self.epoch, step):
                os.kill(os.getpid(), signal.SIGKILL)
            if self.ids_dir is not None:
                with open(self.ids_dir / f"rank{rank}.jsonl", "a", encoding="utf-8") as file:
                    file.write(json.dumps({"epoch": self.epoch, "step": step, "ids": batch["ids"]}) + "\n")
            yield batch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ids", type=Path)
    parser.add_argument("--kill-at", type=lambda text: tuple(int(v) for v in text.split(":")))
    parser.add_argument("--node-local-output", action="store_true")
    args, rest = parser.parse_known_args()
    if rest[:1] == ["--"]:
        rest = rest[1:]
    rank = os.environ.get("RANK", "0")
    if args.node_local_output and rank != "0":
        rest = [f"{item}-rank{rank}" if item.startswith("output_dir=") else item for item in rest]
    if args.ids is not None:
        args.ids.mkdir(parents=True, exist_ok=True)
    original = fit.train_one_epoch
    signature = inspect.signature(original)

    def hooked(*call_args, **call_kwargs):
        bound = signature.bind(*call_args, **call_kwargs)
        bound.arguments["loader"] = HookedLoader(bound.arguments["loader"], bound.arguments["epoch"],
                                                 args.ids, args.kill_at)
        return original(*bound.args, **bound.kwargs)

    fit.train_one_epoch = hooked
    train_main(rest)


if __name__ == "__main__":
    sys.exit(main())

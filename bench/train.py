"""Benchmark of training throughput: samples/s and the share of step time spent waiting for data.

    python bench/train.py [--config configs/default.yaml] [--clips-per-class 10] [--steps 12]
        [--warmup 2] [--device auto|cpu|cuda] [--cache-dir DIR] [key=value ...]

Generates a MELD-shaped folder (``pipeline.sample``, train and dev splits, 320x180 clips) and
preprocesses it with the config's preprocessing parameters (``--cache-dir`` keeps the cache
for the next run), then trains the config's model with the loop of ``pipeline.train``
(``prepare`` + ``train_one_epoch``, DataLoader workers from ``data.num_workers``) for
``--warmup`` steps that are not measured and ``--steps`` steps that are. It prints the
training samples/s and the share of step time blocked in ``next(loader)`` (target: < 10%).
Epoch boundaries fall inside the measurement when the split is smaller than the steps ask,
as they do in a real run.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # `python bench/x.py` puts bench/ first on sys.path, where bench/fusion.py
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # would shadow the fusion package

import argparse
import dataclasses
import logging
import tempfile
from typing import Sequence

import torch

from bench import common
from pipeline import preprocess, sample
from pipeline.config import load_config
from pipeline.execution import pick_device
from pipeline.train.distributed import seed_everything
from pipeline.train.loops import train_one_epoch
from pipeline.train.session import prepare

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"


def make_cache(cache_dir: Path, config: str, overrides: Sequence[str], clips_per_class: int) -> None:
    """Generate and preprocess train and dev splits into ``cache_dir`` unless they are there."""
    if all((cache_dir / split / "manifest.jsonl").is_file() for split in ("train", "dev")):
        return
    root = cache_dir.with_name(cache_dir.name + "_clips")  # never a folder the user owns
    sample.generate(root, clips_per_class=clips_per_class, splits=["train", "dev"], width=320, height=180,
                    duration_range=(1.5, 3.5), workers=2, overwrite=True)
    status = preprocess.main([str(root), str(cache_dir), "--splits", "train,dev", "--workers", "2",
                              "--config", config, *overrides])
    if status != 0:
        raise SystemExit(f"preprocessing the generated clips into {cache_dir} failed")


def measure(config: str, overrides: Sequence[str], steps: int, warmup: int) -> dict:
    """Train ``warmup`` + ``steps`` batches; return the measured steps' figures."""
    cfg = load_config(config, overrides)
    device = pick_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    run = prepare(cfg, device)
    totals = {"samples": 0, "steps": 0, "seconds": 0.0, "data_wait": 0.0}
    epoch = 0
    for phase, wanted in (("warmup", warmup), ("measured", steps)):
        done = 0
        while done < wanted:
            run.train_sampler.set_epoch(epoch)
            limited = dataclasses.replace(cfg.train, max_steps_per_epoch=min(wanted - done, run.steps_per_epoch))
            stats = train_one_epoch(run.model, run.loaders["train"], run.loss_fn, run.optimizer, run.scheduler,
                                    run.scaler, device, limited, epoch, run.dtype, run.augment)
            done += stats["steps"]
            epoch += 1
            if phase == "measured":
                for key in totals:
                    totals[key] += stats[key]
    return {"device": str(device), "batch_size": cfg.train.batch_size, "workers": cfg.data.num_workers,
            "amp": str(run.dtype), "train_samples": len(run.datasets["train"]), **totals,
            "samples_per_second": totals["samples"] / totals["seconds"],
            "data_wait_share": totals["data_wait"] / totals["seconds"]}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--clips-per-class", type=int, default=10, help="train clips per emotion (default 10)")
    parser.add_argument("--steps", type=int, default=12, help="measured training steps")
    parser.add_argument("--warmup", type=int, default=2, help="steps run before measuring")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--cache-dir", type=Path, help="keep the generated cache here (default: a temp dir)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        cache_dir = (args.cache_dir or Path(tmp) / "work" / "cache").resolve()
        make_cache(cache_dir, args.config, args.overrides, args.clips_per_class)
        overrides = [*args.overrides, f"data.cache_dir={cache_dir}", f"train.device={args.device}"]
        result = measure(args.config, overrides, args.steps, args.warmup)
    print(f"config {args.config}  device {result['device']}  batch {result['batch_size']}  "
          f"workers {result['workers']}  amp {result['amp']}  threads {torch.get_num_threads()}")
    print(f"{result['steps']} steps, {result['samples']} samples in {result['seconds']:.1f} s: "
          f"{result['samples_per_second']:.2f} samples/s, "
          f"{100 * result['data_wait_share']:.1f}% of step time waiting for data")
    print(common.peak_memory(result["device"]))
    return result


if __name__ == "__main__":
    main()

"""Dynamic INT8 against float32 on the CPU, side by side: model time, size and weighted F1.

    python bench/int8.py --checkpoint RUN/best.pt [RUN2/best.pt ...] [--cache-dir DIR]
        [--splits dev,test] [--repeats 3] [--threads N]

For each checkpoint, the model runs on each split of its feature cache (``data.cache_dir`` of
its config, or ``--cache-dir``) twice: as trained (float32) and quantized as
``pipeline.infer --quantize int8`` quantizes it (``pipeline.quantization``). A model trained
on embedding vectors (the two-stage recipe) runs on the cache's tokens with the encoders it
holds, as inference does. The batches are collated once, before any timing, so that the
figures are the model's time alone (the best of ``--repeats`` passes over the split); the
table gives utterances per second, the speed-up, the size of the state dict, the emotion
weighted F1 of each, and the share of predictions that INT8 leaves unchanged.

Each ``test`` row is a test evaluation of that checkpoint: score only checkpoints chosen on dev.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # `python bench/x.py` puts bench/ first on sys.path, where bench/fusion.py
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # would shadow the fusion package

import argparse
import copy
import logging
import time
from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import f1_score

from bench import common
from pipeline.config import Config, config_from_dict, to_dict
from pipeline.data.cache import CacheSplit
from pipeline.data.dataset import MeldDataset
from pipeline.model import MultimodalModel, load_checkpoint
from pipeline.quantization import model_bytes, quantize
from pipeline.train.loading import evaluation_order, make_loader

log = logging.getLogger("bench.int8")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, nargs="+", required=True, help="best.pt of pipeline.train")
    parser.add_argument("--cache-dir", type=Path,
                        help="feature cache to score on (default: each checkpoint's data.cache_dir)")
    parser.add_argument("--splits", default="dev,test", help="comma-separated splits (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per split and model; the fastest "
                                                                "counts (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=0,
                        help="utterances per batch (default: the checkpoint's train.batch_size)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    return parser.parse_args(argv)


def batches(cfg: Config, model: MultimodalModel, split_dir: Path) -> list[dict]:
    """Every batch of the split, collated, in evaluation order (whole dialogues for a dialogue model)."""
    cache = CacheSplit(split_dir)
    cache.check_params(to_dict(cfg.preprocess))
    dataset = MeldDataset(cache.split_dir, cfg.model.modalities)
    return list(make_loader(dataset, evaluation_order(dataset, cfg, model), cfg, torch.device("cpu")))


@torch.inference_mode()
def predict(model: torch.nn.Module, split: list[dict], repeats: int) -> tuple[np.ndarray, float]:
    """Emotion predictions over the split's batches (in order) and the fastest pass's seconds."""
    model(split[0])  # warm-up: lazy initialisation and allocator, out of the timing
    best, predictions = float("inf"), None
    for _ in range(repeats):
        start, found = time.perf_counter(), []
        for batch in split:
            found.append(model(batch)["emotion"].argmax(dim=1))
        best = min(best, time.perf_counter() - start)
        predictions = torch.cat(found).numpy()
    return predictions, best


def labels_of(split: list[dict]) -> np.ndarray:
    return torch.cat([batch["labels"]["emotion"] for batch in split]).numpy()


def bench_checkpoint(path: Path, args: argparse.Namespace) -> list[list[object]]:
    ckpt = load_checkpoint(path)
    cfg = config_from_dict(ckpt["config"])
    cfg.train.batch_size = args.batch_size or cfg.train.batch_size
    cfg.data.num_workers = 0
    model = MultimodalModel.from_checkpoint(ckpt).eval()
    quantized = copy.deepcopy(model)
    quantize(quantized, "int8", torch.device("cpu"))
    sizes = {"float32": model_bytes(model), "int8": model_bytes(quantized)}
    cache_dir = args.cache_dir or Path(cfg.data.cache_dir)
    rows = []
    for split_name in [s for s in args.splits.split(",") if s]:
        split = batches(cfg, model, cache_dir / split_name)
        labels = labels_of(split)
        known = labels >= 0
        found = {name: predict(net, split, args.repeats) for name, net in (("float32", model), ("int8", quantized))}
        for name, (predictions, seconds) in found.items():
            f1 = f1_score(labels[known], predictions[known], labels=range(7), average="weighted", zero_division=0)
            same = float((predictions == found["float32"][0]).mean())
            rows.append([path.parent.name, split_name, name, f"{sizes[name] / 1e6:.1f}", len(labels),
                         f"{len(labels) / seconds:.1f}", f"{found['float32'][1] / seconds:.2f}x", f"{f1:.4f}",
                         f"{same:.4f}"])
            log.info("%s %s %s: %.1f utterances/s, weighted F1 %.4f", path, split_name, name,
                     len(labels) / seconds, f1)
    return rows


def main(argv: Sequence[str] | None = None) -> list[list[object]]:
    args = parse_args(argv)
    started = common.start(args.threads)
    rows = [row for path in args.checkpoint for row in bench_checkpoint(path, args)]
    tests = sum(1 for row in rows if row[1] == "test")
    table = common.markdown_table(
        ["run", "split", "model", "MB", "utterances", "utterances/s", "speed-up", "emotion wF1", "same prediction"],
        rows, "lllrrrrrr")
    common.finish("\n".join([*table, "", f"Test evaluations made by this command: {tests}"]), started)
    return rows


if __name__ == "__main__":
    main()

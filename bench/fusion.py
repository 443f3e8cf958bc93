"""Does fusion add what each modality knows? Single modalities against fused models.

    python bench/fusion.py [--work-dir runs/bench_fusion] [--clips-per-class 40]
        [--eval-clips-per-class 40] [--epochs 8]
        [--config configs/demo.yaml] [--seed 0] [--ambiguous-share 0.3]
        [--audio-random-share 0.4] [--video-random-share 0.4] [--threads N]
        [--only KEY[,KEY]] [--quick] [key=value ...]

Generates MELD-shaped sample data (``pipeline.sample``) in which no modality alone is
enough: the text of ``--ambiguous-share`` of the utterances is an ambiguous sentence, and the
voice (face) of ``--audio-random-share`` (``--video-random-share``) of the clips shows a
randomly drawn emotion, each independently. Preprocesses it with ``pipeline.preprocess``
and the preprocessing section of ``--config`` (demo.yaml: 4 frames of 64 px, 4 s of audio,
32 tokens), then trains with ``pipeline.train`` (best epoch on dev):

    text / audio / video alone            concat fusion, classification head
    text+audio+video, concat fusion       classification, gated and moe heads
    text+audio+video, attention fusion    classification, gated and moe heads

and prints a Markdown table of the TEST split's emotion weighted F1 and accuracy, whether
each fused model beats the best single modality, and for MoE heads the load of each expert
(its mean gate over the test split; a collapsed gate leaves experts near 0).

With the default shares the best accuracy any model can reach (the Bayes rate) is about
0.74 from text alone, 0.66 from audio or video alone and 0.90 from all three. The generated
data and its cache live in ``WORK_DIR/data-<key>/`` (key: the generation and preprocessing
parameters), so a rerun with the same parameters skips straight to training.
``key=value`` overrides apply to every run (e.g. ``train.lr=5e-4``).
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # `python bench/x.py` puts bench/ first on sys.path, where bench/fusion.py
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # would shadow the fusion package

import argparse
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader

from bench import common
from pipeline import preprocess, sample
from pipeline import train as training
from pipeline.config import load_config, to_dict
from pipeline.data.dataset import MeldDataset, collate
from pipeline.model import MultimodalModel
from pipeline.sample.plan import CSV_NAMES, Difficulty
from pipeline.sample.text import AMBIGUOUS_SHARE

log = logging.getLogger("bench.fusion")

REPO = Path(__file__).resolve().parents[1]
FRAME_SIZE = (320, 180)  # generated clips: cheap to render and decode, still cropped like MELD's


@dataclass(frozen=True)
class Variant:
    """One model of the comparison."""

    name: str
    modalities: tuple[str, ...]
    fusion: str
    head: str

    @property
    def fused(self) -> bool:
        return len(self.modalities) > 1

    @property
    def key(self) -> str:
        """Short name (run folder, ``--only``): text_only, concat_moe, ..."""
        return self.name.replace(" + ", "_").replace(" ", "_")

    def overrides(self) -> list[str]:
        return [f"model.modalities=[{','.join(self.modalities)}]", f"model.fusion.type={self.fusion}",
                f"model.head.type={self.head}"]


ALL = ("audio", "text", "video")
VARIANTS = (
    Variant("text only", ("text",), "concat", "classification"),
    Variant("audio only", ("audio",), "concat", "classification"),
    Variant("video only", ("video",), "concat", "classification"),
    *(Variant(f"{fusion} + {head}", ALL, fusion, head)
      for fusion in ("concat", "attention") for head in ("classification", "gated", "moe")),
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "bench_fusion")
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"),
                        help="base config of every run (default: %(default)s)")
    parser.add_argument("--clips-per-class", type=int,
                        help="train clips per emotion (default: 40)")
    parser.add_argument("--eval-clips-per-class", type=int,
                        help="dev and test clips per emotion (default: 40; fewer make the table noisy)")
    parser.add_argument("--epochs", type=int, help="per run, best on dev (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="data and training seed (default: %(default)s)")
    parser.add_argument("--ambiguous-share", type=float, default=AMBIGUOUS_SHARE)
    parser.add_argument("--audio-random-share", type=float, default=0.4)
    parser.add_argument("--video-random-share", type=float, default=0.4)
    parser.add_argument("--workers", type=int, default=2, help="processes generating and preprocessing clips")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads for training (default 0: torch's choice; 1 is faster on a busy machine)")
    parser.add_argument("--only", type=lambda text: text.split(","), default=[v.key for v in VARIANTS],
                        metavar="KEY[,KEY]", help=f"run only these of {', '.join(v.key for v in VARIANTS)}")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 8 train and 4 dev/test clips per class and 2 epochs unless given "
                             "(figures meaningless)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only) - {v.key for v in VARIANTS})
    if unknown:
        parser.error(f"--only: unknown {unknown}")
    args.clips_per_class = args.clips_per_class or (8 if args.quick else 40)
    args.eval_clips_per_class = args.eval_clips_per_class or (4 if args.quick else 40)
    args.epochs = args.epochs or (2 if args.quick else 8)
    return args


# --------------------------------------------------------------------------- data
def prepare_data(args: argparse.Namespace) -> Path:
    """Generate and preprocess the sample data unless a finished copy is there; its cache dir."""
    difficulty = Difficulty(args.ambiguous_share, args.audio_random_share, args.video_random_share)
    pcfg = load_config(args.config, args.overrides).preprocess
    params = {"clips_per_class": args.clips_per_class, "eval_clips_per_class": args.eval_clips_per_class,
              "seed": args.seed, "frame": FRAME_SIZE,
              "difficulty": vars(difficulty), "preprocess": to_dict(pcfg)}
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    data_dir = args.work_dir / f"data-{key}"
    root, cache_dir = data_dir / "MELD.Raw", data_dir / "cache"
    if not (root / CSV_NAMES["test"]).is_file():  # the generator writes the CSVs last
        summary = sample.generate(root, args.clips_per_class, args.seed, width=FRAME_SIZE[0],
                                  height=FRAME_SIZE[1], workers=args.workers, overwrite=True,
                                  difficulty=difficulty, eval_clips_per_class=args.eval_clips_per_class)
        (data_dir / "generation.json").write_text(json.dumps({**params, "summary": summary}, indent=1))
    status = preprocess.main([str(root), str(cache_dir), "--workers", str(args.workers),
                              "--config", args.config, *preprocess_overrides(args.overrides)])
    if status != 0:
        raise SystemExit(f"preprocessing {root} into {cache_dir} failed")
    log.info("data ready in %s", cache_dir)
    return cache_dir


def preprocess_overrides(overrides: Sequence[str]) -> list[str]:
    return [item for item in overrides if item.startswith("preprocess.")]


# --------------------------------------------------------------------------- runs
def train_variant(variant: Variant, args: argparse.Namespace, cache_dir: Path) -> dict[str, Any]:
    """Train one variant with pipeline.train (fresh run folder); its test figures."""
    out_dir = args.work_dir / "runs" / variant.key
    if out_dir.exists():
        shutil.rmtree(out_dir)
    overrides = [f"data.cache_dir={cache_dir}", f"output_dir={out_dir}", f"train.epochs={args.epochs}",
                 f"train.seed={args.seed}", "train.device=cpu", *variant.overrides(), *args.overrides]
    started = time.perf_counter()
    result = training.main(["--config", args.config, *overrides])
    emotion = result["test"]["emotion"]
    row = {"variant": variant, "weighted_f1": emotion["weighted_f1"], "accuracy": emotion["accuracy"],
           "best_epoch": result["best_epoch"], "seconds": time.perf_counter() - started, "load": None}
    if variant.head == "moe":
        row["load"] = expert_load(out_dir / "best.pt", cache_dir / "test")
    log.info("%s: test weighted F1 %.4f, accuracy %.4f (best epoch %s, %.0f s)", variant.name,
             row["weighted_f1"], row["accuracy"], row["best_epoch"], row["seconds"])
    return row


@torch.inference_mode()
def expert_load(checkpoint: Path, split_dir: Path) -> list[float]:
    """Mean gate per expert of a MoE model over a cached split ([E], sums to 1)."""
    model = MultimodalModel.from_checkpoint(checkpoint)
    dataset = MeldDataset(split_dir, sorted(model.encoders))
    gates = [model(batch)["gates"] for batch in DataLoader(dataset, batch_size=32, collate_fn=collate)]
    return torch.cat(gates).mean(0).tolist()


# --------------------------------------------------------------------------- report
def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The Markdown results table."""
    singles = [row for row in rows if not row["variant"].fused]
    best_single = max(singles, key=lambda row: row["weighted_f1"]) if singles else None
    best_name = f"{best_single['variant'].name}, {best_single['weighted_f1']:.3f}" if singles else "not run"
    lines = [
        f"Sample data: {args.clips_per_class} train and {args.eval_clips_per_class} dev and test clips per emotion, "
        f"ambiguous text {args.ambiguous_share:.0%}, random voice {args.audio_random_share:.0%}, "
        f"random face {args.video_random_share:.0%}; config {Path(args.config).name}, "
        f"{args.epochs} epochs (best on dev), seed {args.seed}. Test split, emotion.",
        "",
    ]
    cells = []
    for row in rows:
        variant = row["variant"]
        beats = ""
        if variant.fused and best_single is not None:
            beats = "yes" if row["weighted_f1"] > best_single["weighted_f1"] else "no"
        load = "" if row["load"] is None else " / ".join(f"{share:.0%}" for share in row["load"])
        cells.append([variant.name, "+".join(variant.modalities), f"{row['weighted_f1']:.3f}",
                      f"{row['accuracy']:.3f}", beats, load, f"{row['seconds']:.0f}"])
    header = ["model", "modalities", "test weighted F1", "test accuracy", f"beats best single ({best_name})",
              "MoE expert load", "train s"]
    lines += common.markdown_table(header, cells, "llrrclr")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    started = common.start(args.threads)
    cache_dir = prepare_data(args)
    rows = [train_variant(variant, args, cache_dir) for variant in VARIANTS if variant.key in args.only]
    common.finish(table(rows, args), started)
    low = [row["variant"].name for row in rows if row["load"] is not None and min(row["load"]) < 0.10]
    if low:
        log.warning("MoE experts below 10%% of the load in: %s", ", ".join(low))
    return rows


if __name__ == "__main__":
    main()

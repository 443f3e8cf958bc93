"""Whisper-base frozen against VGGish from scratch, on the audio of generated MELD-shaped data.

    python bench/audio_encoders.py [--work-dir runs/bench_audio_encoders] [--clips-per-class 24]
        [--eval-clips-per-class 12] [--epochs 4] [--seeds 0,1] [--audio-random-share 0.3]
        [--max-seconds 4] [--workers 2] [--threads N] [--only vggish,whisper] [--quick]
        [key=value ...]

Generates a train and a dev split with ``pipeline.sample``, whose "voice" carries the
emotion (its pitch band, syllable rate, contour and loudness) except for
``--audio-random-share`` of the clips, which sound like a random emotion. Preprocesses the
audio alone with the waveform stored (``preprocess.modalities=[audio]``,
``preprocess.audio.waveform=true``, the first ``--max-seconds``), then trains audio-only
models (concat fusion, classification head) with ``pipeline.train`` on the CPU:

    vggish    type: vggish from scratch, with demo.yaml's small layout, on the log-mel
    whisper   type: whisper, the fetched whisper-base encoder frozen (freeze_layers: -1), on
              the waveform: only the head on its pooled output trains

and prints, for each, the dev emotion weighted F1 and accuracy of the best epoch and the
seconds per training epoch, each seed's figures and their mean. With the audio shares
above, a perfect audio model reaches about 1 - 0.3 * 6/7 = 0.74 accuracy. The defaults took
8.1 min on the shared 2-core machine (2 torch threads, data included): Whisper 0.678 at 40 s
per epoch, VGGish 0.166 at 9 s; VGGish needs more epochs (``--only vggish --epochs 16``:
0.728 and 0.712 for seeds 0 and 1).

Needs ``python -m pipeline.fetch whisper-base`` once. ``--quick`` is a smoke run that needs
no weights: a few clips, 2 epochs, a random tiny Whisper (``pretrained: false``); its figures
are meaningless. The data and its cache live in ``WORK_DIR/data-<key>/`` (key: generation and
preprocessing parameters), so a rerun skips to training. ``key=value`` overrides apply to
every run (e.g. ``train.lr=5e-4``).
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
import statistics
from typing import Any, Sequence

from bench import common
from pipeline import preprocess, sample
from pipeline import train as training
from pipeline.sample.plan import CSV_NAMES, Difficulty

log = logging.getLogger("bench.audio_encoders")

REPO = Path(__file__).resolve().parents[1]
FRAME_SIZE = (160, 90)  # the clips need a video stream to be MELD-shaped; it is never decoded
# Every run: audio only, from the generated train and dev splits (no test split).
COMMON = ["preprocess.modalities=[audio]", "preprocess.audio.waveform=true", "model.modalities=[audio]",
          "model.fusion.type=concat", "model.head.type=classification", "data.test_split=", "train.device=cpu",
          "data.num_workers=0", "train.early_stopping_patience=0"]
ENCODERS = {
    "vggish": ["model.encoders.audio.type=vggish", "model.encoders.audio.channels=[8,16,32,32,64,64]",
               "model.encoders.audio.fc_dims=[128,64]"],
    "whisper": ["model.encoders.audio.type=whisper", "model.encoders.audio.freeze_layers=-1"],
}
# --quick: a random Whisper of the same code path, small enough for a test.
TINY_WHISPER = ["model.encoders.audio.pretrained=false", "model.encoders.audio.d_model=16",
                "model.encoders.audio.encoder_layers=1", "model.encoders.audio.encoder_attention_heads=2",
                "model.encoders.audio.encoder_ffn_dim=32"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "bench_audio_encoders")
    parser.add_argument("--clips-per-class", type=int, help="train clips per emotion (default: 24)")
    parser.add_argument("--eval-clips-per-class", type=int, help="dev clips per emotion (default: 12)")
    parser.add_argument("--epochs", type=int, help="per run, best on dev (default: 4)")
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default=[0],
                        help="training seeds, comma-separated (default: 0); the data uses the first")
    parser.add_argument("--audio-random-share", type=float, default=0.3)
    parser.add_argument("--max-seconds", type=float, default=4.0, help="audio kept per clip")
    parser.add_argument("--workers", type=int, default=2, help="processes generating and preprocessing clips")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for training (0: torch's choice)")
    parser.add_argument("--only", type=lambda text: text.split(","), default=list(ENCODERS),
                        metavar="NAME[,NAME]", help=f"run only these of {', '.join(ENCODERS)}")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 3 train and 2 dev clips per class, 2 epochs, a random tiny Whisper")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only) - set(ENCODERS))
    if unknown:
        parser.error(f"--only: unknown {unknown}; choose from {list(ENCODERS)}")
    args.clips_per_class = args.clips_per_class or (3 if args.quick else 24)
    args.eval_clips_per_class = args.eval_clips_per_class or (2 if args.quick else 12)
    args.epochs = args.epochs or (2 if args.quick else 4)
    return args


# --------------------------------------------------------------------------- data
def preprocessing(args: argparse.Namespace) -> list[str]:
    """The preprocess overrides of every run (the cache's parameters)."""
    return [item for item in [*COMMON, f"preprocess.audio.max_seconds={args.max_seconds}", *args.overrides]
            if item.startswith("preprocess.")]


def prepare_data(args: argparse.Namespace) -> Path:
    """Generate and preprocess the sample data unless a finished copy is there; its cache dir."""
    difficulty = Difficulty(audio_random_share=args.audio_random_share)
    params = {"clips_per_class": args.clips_per_class, "eval_clips_per_class": args.eval_clips_per_class,
              "seed": args.seeds[0], "frame": FRAME_SIZE, "difficulty": vars(difficulty),
              "preprocess": preprocessing(args)}
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    data_dir = args.work_dir / f"data-{key}"
    root, cache_dir = data_dir / "MELD.Raw", data_dir / "cache"
    if not (root / CSV_NAMES["dev"]).is_file():  # the generator writes the CSVs last
        summary = sample.generate(root, args.clips_per_class, args.seeds[0], splits=("train", "dev"),
                                  width=FRAME_SIZE[0], height=FRAME_SIZE[1], workers=args.workers,
                                  overwrite=True, difficulty=difficulty,
                                  eval_clips_per_class=args.eval_clips_per_class)
        (data_dir / "generation.json").write_text(json.dumps({**params, "summary": summary}, indent=1))
    status = preprocess.main([str(root), str(cache_dir), "--splits", "train,dev", "--workers", str(args.workers),
                              *preprocessing(args)])
    if status != 0:
        raise SystemExit(f"preprocessing {root} into {cache_dir} failed")
    log.info("data ready in %s", cache_dir)
    return cache_dir


# --------------------------------------------------------------------------- runs
def train_run(encoder: str, seed: int, args: argparse.Namespace, cache_dir: Path) -> dict[str, Any]:
    """Train one audio-only model with pipeline.train (fresh run folder); its dev figures."""
    out_dir = args.work_dir / "runs" / f"{encoder}-seed{seed}"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    quick = TINY_WHISPER if args.quick and encoder == "whisper" else []
    overrides = [*COMMON, f"preprocess.audio.max_seconds={args.max_seconds}", *ENCODERS[encoder], *quick,
                 f"data.cache_dir={cache_dir}", f"output_dir={out_dir}", f"train.epochs={args.epochs}",
                 f"train.seed={seed}", *args.overrides]
    result = training.main(overrides)
    best = next(row for row in result["epochs"] if row["epoch"] == result["best_epoch"])
    row = {"encoder": encoder, "seed": seed, "weighted_f1": result["best_val"],
           "accuracy": best["val"]["emotion"]["accuracy"], "best_epoch": result["best_epoch"],
           "epoch_seconds": statistics.mean(epoch["seconds"] for epoch in result["epochs"])}
    log.info("%s seed %d: dev weighted F1 %.4f, accuracy %.4f (best epoch %s), %.1f s per epoch", encoder, seed,
             row["weighted_f1"], row["accuracy"], row["best_epoch"], row["epoch_seconds"])
    return row


# --------------------------------------------------------------------------- report
def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The Markdown results table: one line per encoder, each seed's figures and their mean."""
    lines = [f"Generated audio: {args.clips_per_class} train and {args.eval_clips_per_class} dev clips per emotion, "
             f"random voice {args.audio_random_share:.0%}, first {args.max_seconds:g} s; {args.epochs} epochs "
             f"(best on dev), seeds {','.join(map(str, args.seeds))}. Dev split, emotion."
             + (" QUICK RUN: a random tiny Whisper, figures meaningless." if args.quick else ""), ""]
    cells = []
    for encoder in (name for name in ENCODERS if name in args.only):
        runs = [row for row in rows if row["encoder"] == encoder]
        per_seed = " / ".join(f"{row['weighted_f1']:.3f}" for row in runs)
        cells.append([encoder, f"{statistics.mean(row['weighted_f1'] for row in runs):.3f}", per_seed,
                      f"{statistics.mean(row['accuracy'] for row in runs):.3f}",
                      f"{statistics.mean(row['epoch_seconds'] for row in runs):.1f}"])
    header = ["audio encoder", "dev weighted F1 (mean)", "per seed", "dev accuracy (mean)", "s per epoch"]
    return "\n".join(lines + common.markdown_table(header, cells, "lrrrr"))


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    started = common.start(args.threads)
    cache_dir = prepare_data(args)
    rows = [train_run(encoder, seed, args, cache_dir) for encoder in ENCODERS if encoder in args.only
            for seed in args.seeds]
    common.finish(table(rows, args), started)
    return rows


if __name__ == "__main__":
    main()

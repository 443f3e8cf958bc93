"""Text-only accuracy on real MELD: MiniLM fine-tuned on CPU, chosen on dev, scored on dev and test.

    python bench/meld_text.py --meld-csv-dir $MELD_ROOT [--work-dir runs/bench_meld_text]
        [--epochs 3] [--context-epochs 3] [--sweep-epochs 1] [--max-train N] [--context-turns 2]
        [--context-max-length 96] [--weighting sqrt_inverse] [--runs plain,context,sweep]
        [--config configs/meld_text.yaml] [--seeds 0,1,2] [--holdout 0.1] [--no-test] [--threads N] [--quick]
        [key=value ...]

Needs MELD's ``train_sent_emo.csv`` and ``dev_sent_emo.csv``, and reads ``test_sent_emo.csv``
when the folder has it. Builds text-only caches
from them with ``pipeline.preprocess`` (``preprocess.modalities=[text]``, no clips), one
without and one with dialogue context, then fine-tunes the packaged all-MiniLM-L6-v2 with
``pipeline.train`` and ``configs/meld_text.yaml`` on the CPU:

    1. no context                   full fine-tune, ``--epochs``, ``--weighting``
    2. ``--context-turns`` turns      the same with the previous turns (speaker: text) after
                                    the utterance, truncated first, ``--context-epochs``
                                    (an epoch costs about twice one without context)
    3-6. class-weighting sweep      none | inverse | sqrt_inverse | effective_number, no
                                    context, full fine-tune for ``--sweep-epochs`` (cheaper)

The defaults took 38.8 minutes in all on a 2-core machine (two torch threads, caches
included): 8.4 without context, 18.9 with it, 11.3 for the sweep. Each run keeps its best
epoch on dev (``best.pt``), and the table reports that epoch's dev accuracy, weighted F1,
macro F1 and the F1 of fear and disgust (MELD's rarest classes), and next to them the same
``best.pt`` scored once on test (weighted and macro F1; every class's F1 below the table).
Nothing is chosen on test: the epoch and every setting come from dev, and the table says how
many test evaluations the run made.
``key=value`` overrides apply to every run (e.g. ``train.encoder_lr=3e-5``). Another
encoder: ``--config configs/meld_mpnet.yaml`` (all-mpnet-base-v2, its lower 8 layers frozen;
``--runs plain --epochs 3 --max-length 48`` is the run of docs/experiments.md).
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # `python bench/x.py` puts bench/ first on sys.path, where bench/fusion.py
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # would shadow the fusion package

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import shutil
import statistics
import time
from dataclasses import dataclass
from typing import Any, Sequence

from bench import common
from pipeline import preprocess
from pipeline import train as training
from pipeline.config import load_config, to_dict
from pipeline.data.cache import CacheSplit

log = logging.getLogger("bench.meld_text")

REPO = Path(__file__).resolve().parents[1]
WEIGHTINGS = ("none", "inverse", "sqrt_inverse", "effective_number")


@dataclass(frozen=True)
class Run:
    """One row of the table."""

    name: str
    context_turns: int
    weighting: str
    epochs: int
    seed: int | None = None  # None: the config's train.seed


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meld-csv-dir", type=Path, required=True,
                        help="folder holding train_sent_emo.csv and dev_sent_emo.csv")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "bench_meld_text",
                        help="caches and run folders (default: %(default)s)")
    parser.add_argument("--config", default=str(REPO / "configs" / "meld_text.yaml"),
                        help="base config of every run (default: %(default)s)")
    parser.add_argument("--epochs", type=int, help="epochs of run 1 (default: 3)")
    parser.add_argument("--context-epochs", type=int, help="epochs of run 2 (default: 3)")
    parser.add_argument("--sweep-epochs", type=int, help="epochs of each class-weighting run (default: 1)")
    parser.add_argument("--max-train", type=int, default=0,
                        help="training utterances per epoch, drawn at random each epoch (default: all)")
    parser.add_argument("--context-turns", type=int, default=2, help="turns of run 2 (default: %(default)s)")
    parser.add_argument("--max-length", type=int, default=64,
                        help="tokens without context (default: %(default)s)")
    parser.add_argument("--context-max-length", type=int, default=96,
                        help="tokens with context; the utterance comes first and is never cut (default: %(default)s)")
    parser.add_argument("--weighting", choices=WEIGHTINGS, default="sqrt_inverse",
                        help="class weighting of runs 1-2 (default: %(default)s)")
    parser.add_argument("--no-sweep", dest="sweep", action="store_false", help="skip runs 3-6")
    parser.add_argument("--runs", default="plain,context,sweep",
                        help="which runs: plain (run 1), context (run 2), sweep (runs 3-6); "
                             "comma-separated (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="preprocessing processes (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default 0: torch's choice; 1 is faster on a busy machine)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 epoch of 640 utterances per run unless given (figures meaningless)")
    common.add_selection_args(parser)
    parser.add_argument("--seeds", default="",
                        help="comma-separated train.seed values: every run once per seed, and the table's last "
                             "lines give each run's mean and spread (default: the config's seed, once)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    args = parser.parse_args(argv)
    args.epochs = args.epochs or (1 if args.quick else 3)
    args.context_epochs = args.context_epochs or (1 if args.quick else 3)
    args.sweep_epochs = args.sweep_epochs or 1
    args.max_train = args.max_train or (640 if args.quick else 0)
    return args


def runs_of(args: argparse.Namespace) -> list[Run]:
    chosen = set(args.runs.split(","))
    if chosen - {"plain", "context", "sweep"}:
        raise SystemExit(f"--runs {args.runs}: choose from plain, context, sweep")
    runs = []
    if "plain" in chosen:
        runs.append(Run("no context", 0, args.weighting, args.epochs))
    if "context" in chosen:
        runs.append(Run(f"{args.context_turns} context turns", args.context_turns, args.weighting,
                        args.context_epochs))
    if args.sweep and "sweep" in chosen:
        runs += [Run(f"weighting {weighting}", 0, weighting, args.sweep_epochs) for weighting in WEIGHTINGS]
    seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    return [dataclasses.replace(run, seed=seed) for run in runs for seed in seeds] if seeds else runs


# --------------------------------------------------------------------------- caches
def text_overrides(args: argparse.Namespace, context_turns: int) -> list[str]:
    """The preprocessing overrides of a cache with ``context_turns`` turns of context."""
    length = args.context_max_length if context_turns else args.max_length
    return [f"preprocess.text.context_turns={context_turns}", f"preprocess.text.max_length={length}",
            *(item for item in args.overrides if item.startswith("preprocess."))]


def build_cache(args: argparse.Namespace, context_turns: int) -> Path:
    """The text-only cache of train and dev for ``context_turns`` (built unless it is there)."""
    overrides = text_overrides(args, context_turns)
    pcfg = load_config(args.config, overrides).preprocess
    key = hashlib.sha256(json.dumps(to_dict(pcfg), sort_keys=True).encode()).hexdigest()[:10]
    cache_dir = args.work_dir / f"cache-context{context_turns}-{key}"
    status = preprocess.main([str(args.meld_csv_dir), str(cache_dir), "--csv-dir", str(args.meld_csv_dir),
                              "--splits", ",".join(common.meld_splits(args.meld_csv_dir, args.test)), "--workers",
                              str(args.workers), "--config", args.config, *overrides])
    if status != 0:
        raise SystemExit(f"preprocessing {args.meld_csv_dir} into {cache_dir} failed")
    return cache_dir


# --------------------------------------------------------------------------- training
def train_run(run: Run, args: argparse.Namespace, cache_dir: Path) -> dict[str, Any]:
    """Fine-tune one run with pipeline.train (fresh run folder); its best epoch's dev figures."""
    out_dir = args.work_dir / "runs" / (run.name.replace(" ", "_") + ("" if run.seed is None else f"_seed{run.seed}"))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    batch_size = load_config(args.config, args.overrides).train.batch_size
    steps = math.ceil(args.max_train / batch_size) if args.max_train else 0
    overrides = [*text_overrides(args, run.context_turns), f"data.cache_dir={cache_dir}",
                 f"output_dir={out_dir}", f"train.epochs={run.epochs}", f"train.class_weighting={run.weighting}",
                 f"train.max_steps_per_epoch={steps}", "train.device=cpu", "data.num_workers=0",
                 *([] if run.seed is None else [f"train.seed={run.seed}"]),
                 *common.selection_overrides(args, cache_dir),
                 *(item for item in args.overrides if not item.startswith("preprocess."))]
    started = time.perf_counter()
    result = training.main(["--config", args.config, *overrides])
    dev, test = common.dev_and_test(result)
    train_size = len(CacheSplit(cache_dir / "train"))
    row = {"run": run, "best_epoch": result["best_epoch"], "accuracy": dev["accuracy"],
           "weighted_f1": dev["weighted_f1"], "macro_f1": dev["macro_f1"],
           "fear": dev["per_class"]["fear"], "disgust": dev["per_class"]["disgust"], "dev": dev, "test": test,
           "holdout": common.held_out(result),
           "samples": min(steps * batch_size, train_size) if steps else train_size,
           "minutes": (time.perf_counter() - started) / 60}
    log.info("%s: dev weighted F1 %.4f, accuracy %.4f, macro F1 %.4f (best epoch %d, %.1f min)%s%s", run.name,
             row["weighted_f1"], row["accuracy"], row["macro_f1"], row["best_epoch"], row["minutes"],
             f"; held-out weighted F1 {row['holdout']['weighted_f1']:.4f}" if row["holdout"] else "",
             f"; test weighted F1 {test['weighted_f1']:.4f}" if test else "")
    return row


# --------------------------------------------------------------------------- report
def label(run: Run) -> str:
    return run.name if run.seed is None else f"{run.name}, seed {run.seed}"


def seed_summary(rows: list[dict[str, Any]]) -> list[str]:
    """For each run repeated over seeds: the mean and sample standard deviation of its
    weighted F1 on dev (and on the held-out dialogues and test where scored)."""
    lines = []
    for name in dict.fromkeys(row["run"].name for row in rows if row["run"].seed is not None):
        mine = [row for row in rows if row["run"].name == name and row["run"].seed is not None]
        if len(mine) < 2:
            continue
        parts = []
        for what, values in (("dev", [row["weighted_f1"] for row in mine]),
                             ("held-out", [row["holdout"]["weighted_f1"] for row in mine if row["holdout"]]),
                             ("test", [row["test"]["weighted_f1"] for row in mine if row["test"]])):
            if len(values) == len(mine):
                parts.append(f"{what} {statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}")
        seeds = ", ".join(str(row["run"].seed) for row in mine)
        lines.append(f"{name}, seeds {seeds}: weighted F1 mean ± standard deviation: {'; '.join(parts)}")
    return ["", *lines] if lines else []


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    cfg = load_config(args.config, args.overrides)
    encoder = cfg.model.encoders["text"]
    frozen = encoder.get("freeze_layers", 0)
    tuning = f"fine-tuned above the bottom {frozen} layers" if frozen else "fully fine-tuned"
    lines = [
        f"MELD dev (1,109 utterances), emotion; {cfg.preprocess.text.model} {tuning} on CPU "
        f"({Path(args.config).name}: {encoder['pooling']} pooling, \"Speaker: utterance\", batch "
        f"{cfg.train.batch_size}, encoder lr {cfg.train.encoder_lr:g}, head lr {cfg.train.lr:g}, "
        f"warmup {cfg.train.warmup_ratio:g}, label smoothing {cfg.train.label_smoothing:g}, "
        f"weight EMA {cfg.train.ema_decay:g}); "
        f"max length {args.max_length} tokens, {args.context_max_length} with context. Each run: its best "
        "epoch on dev." + (f" Overrides: {' '.join(args.overrides)}." if args.overrides else ""),
        "",
    ]
    header = ["run", "context turns", "class weighting", "epochs", "train utterances / epoch", "dev accuracy",
              "dev weighted F1", "dev macro F1", "fear F1", "disgust F1", "held-out weighted F1",
              "test weighted F1", "test macro F1", "best epoch", "minutes", "minutes per epoch"]
    cells = ([label(row["run"]), row["run"].context_turns, row["run"].weighting, row["run"].epochs, row["samples"],
              *(f"{row[key]:.3f}" for key in ("accuracy", "weighted_f1", "macro_f1", "fear", "disgust")),
              f"{row['holdout']['weighted_f1']:.3f}" if row["holdout"] else "-",
              *((f"{row['test'][key]:.3f}" for key in ("weighted_f1", "macro_f1")) if row["test"] else ("-", "-")),
              row["best_epoch"], f"{row['minutes']:.1f}", f"{row['minutes'] / row['run'].epochs:.1f}"]
             for row in rows)
    lines += common.markdown_table(header, cells, "lrlrrrrrrrrrrrrr")
    lines += seed_summary(rows)
    tested = sum(row["test"] is not None for row in rows)
    lines += ["", f"Per-class F1 (dev{'/test' if tested else ''}), each run's best epoch on dev:",
              *common.per_class_lines((label(row["run"]), row["dev"], row["test"]) for row in rows), "",
              f"Test evaluations made by this command: {tested} (each run's dev-chosen best.pt, once)."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    runs = runs_of(args)
    started = common.start(args.threads)
    caches = {turns: build_cache(args, turns) for turns in sorted({run.context_turns for run in runs})}
    rows = [train_run(run, args, caches[run.context_turns]) for run in runs]
    common.finish(table(rows, args), started)
    return rows


if __name__ == "__main__":
    main()

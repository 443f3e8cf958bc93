"""Batch inference: ``python -m pipeline.infer --checkpoint RUN/best.pt --clips DIR|GLOB|LIST.txt``.

    python -m pipeline.infer --checkpoint RUN/best.pt --clips DIR|GLOB|LIST.txt
        [--transcripts MELD.csv|CLIPS.csv] --out predictions.jsonl|.csv
        [--batch-size B] [--workers N] [--device auto|cpu|cuda|cuda:N]

Everything the model needs comes from the checkpoint: the architecture and weights, the
preprocessing parameters of the cache it was trained on (``ckpt["preprocess"]``) and the
tokenizer named there. Each clip goes through ``features.extract_features`` (the code that
built the training cache) and ``data.make_item`` + ``data.collate`` (the code that fed the
model in training and evaluation), so a clip gets the prediction evaluation gives it (up to
float rounding: batches are padded to their longest sample).

Clips: a folder (its video files, sorted by name), a glob pattern, a single clip, or a
``.txt`` list with one path per line (relative to the list's folder; blank and ``#`` lines
skipped). Transcripts: a MELD CSV (clip ``dia{D}_utt{U}``; speaker prefix and dialogue
context as in training; its labels give accuracy and weighted F1), a CSV with ``clip,text``
columns (and optionally ``speaker``; ``clip`` is a file name, stem or path relative to the
CSV's folder), or, without ``--transcripts``, a ``.srt`` or ``.txt`` file next to each
clip with the same stem. A clip without a transcript is predicted with its text masked.

A model with a dialogue context (``model.context``) reads the clips of a dialogue together,
in turn order, as the transcripts place them (MELD's ``Dialogue_ID``/``Utterance_ID``, or
``dialogue``/``turn`` columns); its rows come grouped by dialogue in turn order, and a clip
with no place is a dialogue of one.

Output: one row per clip in input order, ``status`` "ok" or "error" (a missing, empty or
unreadable clip, with the reason; the run goes on and exits 0). JSON lines by default, CSV
when ``--out`` ends with ``.csv``. Rows are streamed to ``OUT.partial`` as batches finish
and the file is renamed to ``OUT`` at the end: a reader never mistakes a killed run's output
for a complete one, and the partial file still holds every row done so far. Before any work,
an ``--out`` that is one of the run's inputs (a clip, a sidecar, the checkpoint, the
transcripts, the list; links resolved) or a directory is refused, and ``OUT.partial`` is
locked (``fcntl.flock``): a second run with the same ``--out`` is refused while one writes.

Decoding runs in a pool of long-lived worker processes (each loads the tokenizer once) fed
through a bounded window of clips in input order, while this process batches the decoded
clips and runs the model: decoding and the model overlap. The first batches go to the model
before they are full (1, 2, 4, ... clips) so that it starts at once (see ``batches``). On
the CPU the cores are split: ``--workers`` decode, the model gets the remaining cores as
torch threads.
"""
from __future__ import annotations

import argparse
import collections
import csv
import fcntl
import glob
import json
import logging
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from pipeline import meld
from pipeline.config import ConfigError, PreprocessConfig, config_from_dict, from_dict
from pipeline.data import collate, labels_of, make_item
from pipeline.decoding import DecodePool, Decoded, Job, batches, dialogue_batches, in_dialogue_order, make_jobs
from pipeline.distributed import pick_device, setup_cli_logging
from pipeline.execution import amp_dtype, autocast, to_device
from pipeline.metrics import classification_metrics
from pipeline.model import CheckpointError, MultimodalModel, load_checkpoint
from pipeline.transcripts import SIDECAR_EXTENSIONS, InputError, read_transcripts

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".webm")
TASKS = ("emotion", "sentiment")


# --------------------------------------------------------------------------- clips
def list_clips(spec: str) -> list[Path]:
    """The clips named by ``--clips``: a folder's video files (sorted by name, hidden files
    skipped), a ``.txt`` list, a single clip, or a glob pattern (its video files, sorted)."""
    path = Path(spec)
    if path.is_dir():
        clips = sorted(p for p in path.iterdir()
                       if p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith(".") and not p.is_dir())
        if not clips:
            raise InputError(f"--clips {spec}: the folder holds no video files ({', '.join(VIDEO_EXTENSIONS)})")
        return clips
    if path.is_file():
        return read_clip_list(path) if path.suffix.lower() == ".txt" else [path]
    if any(char in spec for char in "*?["):
        clips = [Path(p) for p in sorted(glob.glob(spec, recursive=True))
                 if Path(p).suffix.lower() in VIDEO_EXTENSIONS and not Path(p).is_dir()]
        if not clips:
            raise InputError(f"--clips {spec}: the pattern matches no video files")
        return clips
    raise InputError(f"--clips {spec}: no such folder, list file or clip (nor a glob pattern)")


def read_clip_list(path: Path) -> list[Path]:
    """One clip per line, relative paths taken from the list's folder; blank lines and lines
    starting with ``#`` are skipped. Listed clips that do not exist become error rows."""
    clips = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            clips.append(path.parent / entry)  # an absolute entry replaces the folder
    if not clips:
        raise InputError(f"--clips {path}: the list names no clip")
    return clips


# --------------------------------------------------------------------------- the model
class Predictor:
    """The checkpoint's model on ``device``, turning a list of decoded clips into rows."""

    def __init__(self, ckpt: Mapping[str, Any], device: torch.device) -> None:
        cfg = config_from_dict(ckpt["config"])
        self.model = MultimodalModel.from_checkpoint(ckpt).to(device)
        self.device = device
        self.dtype = amp_dtype(cfg.train.amp, device)  # as evaluation in training runs it
        self.modalities = sorted(self.model.encoders)
        self.preprocess = dict(ckpt["preprocess"])
        self.labels: dict[str, list[str]] = {task: list(names) for task, names in ckpt["labels"].items()}

    def item(self, decoded: Decoded) -> dict[str, Any]:
        """The dataset item of a decoded clip, built as MeldDataset builds cached samples."""
        job = decoded.job
        item = make_item(job.id, decoded.arrays, decoded.modalities, self.modalities, self.preprocess,
                         labels_of({"emotion": job.emotion, "sentiment": job.sentiment}))
        item["dialogue"] = job.place()
        return item

    @torch.inference_mode()
    def outputs(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Probabilities ``{task}_probs`` [B,C], ``regression`` [B,K] and ``gates`` [B,G] (if
        the head has them) of a collated batch."""
        with autocast(self.device, self.dtype):
            outputs = self.model(to_device(batch, self.device))
        result = {f"{task}_probs": outputs[task].float().softmax(dim=1).cpu().numpy() for task in TASKS}
        for name in ("regression", "gates"):
            if name in outputs:
                result[name] = outputs[name].float().cpu().numpy()
        return result

    def rows(self, decoded: Sequence[Decoded]) -> list[dict[str, Any]]:
        """One output row per decoded clip, in the same order; the ok ones run as one batch."""
        ok = [d for d in decoded if d.error is None]
        outputs = self.outputs(collate([self.item(d) for d in ok])) if ok else {}
        rows, position = [], 0
        for d in decoded:
            if d.error is not None:
                rows.append(error_row(d.job, d.error))
                continue
            finite = all(np.isfinite(outputs[name][position]).all() for name in outputs)
            if not finite:  # a JSON row holds no NaN, and a NaN guess is no prediction
                rows.append(error_row(d.job, "non-finite model output (NaN or inf)"))
                position += 1
                continue
            row = {"clip": d.job.clip, "id": d.job.id, "status": "ok", "error": None,
                   "modalities": [m for m in d.modalities if m in self.modalities]}
            for task in TASKS:
                probs = outputs[f"{task}_probs"][position]
                row[task] = self.labels[task][int(probs.argmax())]
                row[f"{task}_probs"] = {name: float(p) for name, p in zip(self.labels[task], probs)}
            row["regression"] = ({name: float(v) for name, v in zip(self.labels["regression"],
                                                                      outputs["regression"][position])}
                                 if "regression" in outputs else {})
            if "gates" in outputs:
                row["gates"] = [float(g) for g in outputs["gates"][position]]
            rows.append(row)
            position += 1
        return rows


def check_finite_weights(ckpt: Mapping[str, Any], path: Path) -> None:
    """Refuse a checkpoint whose weights hold NaN or inf: every prediction would be NaN."""
    bad = [name for name, tensor in ckpt["model"].items()
           if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise CheckpointError(f"{path} holds non-finite weights (NaN or inf) in {len(bad)} tensors, e.g. "
                              f"{', '.join(bad[:3])}: the run that wrote it diverged; use an earlier checkpoint")


def error_row(job: Job, reason: str) -> dict[str, Any]:
    return {"clip": job.clip, "id": job.id, "status": "error", "error": reason, "modalities": [],
            "emotion": None, "emotion_probs": None, "sentiment": None, "sentiment_probs": None,
            "regression": None}


# --------------------------------------------------------------------------- output
def check_output(out: Path, inputs: Iterable[Path]) -> None:
    """Refuse an ``--out`` that would destroy an input or cannot be written, before any work:
    a directory, a path under a file, or the same file (after resolving links; hard links
    too) as any of ``inputs`` (clips, their sidecar transcripts, the checkpoint, the
    transcripts, the clip list), also as ``OUT.partial``."""
    partial = out.with_name(out.name + ".partial")
    for path in (out, partial):
        if path.is_dir():
            raise InputError(f"--out {out}: {path} is a directory; give a file name such as {path / 'predictions.jsonl'}")
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise InputError(f"--out {out}: {parent} is a file, not a folder")

    def identity(path: Path) -> tuple:
        try:
            stat = path.stat()
            return ("inode", stat.st_dev, stat.st_ino)
        except OSError:
            return ("path", os.path.realpath(path))

    targets = {identity(out): out, identity(partial): partial}
    for path in inputs:
        if identity(path) in targets:
            raise InputError(f"--out {out}: {targets[identity(path)]} is an input of this run ({path}); "
                             "writing it would destroy it: choose another --out")


def claim_partial(partial: Path) -> Any:
    """Open ``partial`` for writing under an exclusive lock (``fcntl.flock``, released when the
    file closes or the process dies), truncated only once the lock is held: a second run
    with the same ``--out`` is refused instead of interleaving its rows into the first's."""
    partial.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(partial, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise InputError(f"--out {partial.with_name(partial.name.removesuffix('.partial'))}: another "
                         f"pipeline.infer run is writing it ({partial} is locked); wait for it to finish "
                         "or choose another --out") from None
    os.ftruncate(descriptor, 0)
    return os.fdopen(descriptor, "w", encoding="utf-8", newline="")


class RowWriter:
    """Writes rows as JSON lines or CSV to ``OUT.partial`` (locked, see ``claim_partial``),
    renamed to ``OUT`` by ``commit``. JSON is strict: a non-finite number is an error, never
    a ``NaN`` that JSON readers reject."""

    def __init__(self, out: Path, labels: Mapping[str, Sequence[str]]) -> None:
        self.out = out
        self.partial = out.with_name(out.name + ".partial")
        self.file = claim_partial(self.partial)
        self.csv = None
        if out.suffix.lower() == ".csv":
            self.columns = (["clip", "id", "status", "error", "modalities"]
                            + [column for task in TASKS
                               for column in (task, *(f"{task}_prob_{name}" for name in labels[task]))]
                            + [f"regression_{name}" for name in labels["regression"]] + ["gates"])
            self.csv = csv.DictWriter(self.file, fieldnames=self.columns)
            self.csv.writeheader()

    def write(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            if self.csv is not None:
                self.csv.writerow(flatten_row(row))
            else:
                self.file.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
        self.file.flush()

    def commit(self) -> None:
        self.file.close()
        os.replace(self.partial, self.out)

    def abandon(self) -> None:
        """Close and remove ``OUT.partial`` before any row was written (a run that could not start)."""
        self.file.close()
        self.partial.unlink(missing_ok=True)

    def close(self) -> None:
        """Close without committing (a failed run keeps its rows in ``OUT.partial``)."""
        if not self.file.closed:
            self.file.close()
            logger.warning("the run stopped early; the rows written so far are in %s", self.partial)


def flatten_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A CSV row: probabilities as ``<task>_prob_<label>`` columns, regression targets as
    ``regression_<name>``, modalities joined by ``+``, gates as a JSON list."""
    flat = {key: row[key] for key in ("clip", "id", "status", "error")}
    flat["modalities"] = "+".join(row["modalities"])
    for task in TASKS:
        flat[task] = row[task]
        for name, p in (row[f"{task}_probs"] or {}).items():
            flat[f"{task}_prob_{name}"] = p
    for name, value in (row["regression"] or {}).items():
        flat[f"regression_{name}"] = value
    if "gates" in row:
        flat["gates"] = json.dumps(row["gates"])
    return flat


# --------------------------------------------------------------------------- running
def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers(device: torch.device) -> int:
    """On a GPU every core decodes; on the CPU half of them do, the model gets the rest."""
    return available_cores() if device.type == "cuda" else max(1, available_cores() // 2)


def default_lookahead(batch_size: int, workers: int) -> int:
    """Clips in flight: two batches ahead plus two per worker keeps every worker busy while
    the model runs a batch, and bounds the decoded clips held in memory."""
    return 2 * batch_size + 2 * max(workers, 1)


def model_threads(workers: int) -> int:
    """Torch threads for the model on the CPU: the cores the decoding workers leave free."""
    return max(1, available_cores() - workers)


def run(predictor: Predictor, jobs: Sequence[Job], pool: DecodePool, out: Path, batch_size: int,
        writer: RowWriter | None = None) -> dict[str, Any]:
    """Predict every job, decoded by ``pool``, and write the rows to ``out`` (through
    ``writer`` when the caller already claimed it); returns a summary with counts, seconds,
    clips per second and, when labels were known, metrics."""
    start = time.perf_counter()
    writer = writer if writer is not None else RowWriter(out, predictor.labels)
    truth: dict[str, list[int]] = {task: [] for task in TASKS}
    guess: dict[str, list[int]] = {task: [] for task in TASKS}
    reasons: collections.Counter[str] = collections.Counter()
    try:
        with tqdm(total=len(jobs), unit="clip", desc="infer", dynamic_ncols=True) as bar:
            grouping = dialogue_batches if predictor.model.reads_dialogues else batches
            for group in grouping(pool.imap(jobs), batch_size):
                rows = predictor.rows(group)
                writer.write(rows)
                for decoded, row in zip(group, rows):
                    if row["status"] != "ok":
                        reasons[row["error"]] += 1
                        continue
                    for task in TASKS:
                        label = getattr(decoded.job, task)
                        if label is not None:
                            truth[task].append(predictor.labels[task].index(label))
                            guess[task].append(predictor.labels[task].index(row[task]))
                bar.update(len(rows))
        writer.commit()
    finally:
        writer.close()
    seconds = time.perf_counter() - start
    metrics = {task: classification_metrics(truth[task], guess[task], predictor.labels[task])
               for task in TASKS if truth[task]}
    errors = sum(reasons.values())
    summary = {"clips": len(jobs), "ok": len(jobs) - errors, "errors": errors, "reasons": dict(reasons),
               "seconds": seconds, "clips_per_second": len(jobs) / seconds if seconds > 0 else math.inf,
               "metrics": metrics, "out": str(out)}
    logger.info("%d clips: %d ok, %d errors%s in %.1f s (%.2f clips/s); wrote %s", len(jobs), summary["ok"],
                errors, "".join(f"; {n} {reason}" for reason, n in reasons.most_common(5)), seconds,
                summary["clips_per_second"], out)
    return summary


def format_metrics(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """``task: accuracy A  weighted F1 F  (n=N)`` per task with labels."""
    return "\n".join(f"{task}: accuracy {m['accuracy']:.4f}  weighted F1 {m['weighted_f1']:.4f}  (n={m['count']})"
                     for task, m in metrics.items())


def input_files(args: argparse.Namespace, clips: Sequence[Path]) -> list[Path]:
    """Every file this run reads: the checkpoint, the transcripts, the clip list, the clips
    and the sidecar transcripts next to them."""
    files = [args.checkpoint, *clips, *(clip.with_suffix(ext) for clip in clips for ext in SIDECAR_EXTENSIONS)]
    if args.transcripts is not None:
        files.append(args.transcripts)
    if Path(args.clips).is_file():
        files.append(Path(args.clips))
    return files


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.infer", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Predict emotion and sentiment for every clip with a trained checkpoint.",
        epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--checkpoint", required=True, type=Path, help="best.pt / last.pt of pipeline.train")
    parser.add_argument("--clips", required=True, help="folder, glob pattern, single clip or .txt list")
    parser.add_argument("--transcripts", type=Path,
                        help="MELD CSV or clip,text CSV (default: .srt/.txt next to each clip)")
    parser.add_argument("--out", required=True, type=Path, help="predictions .jsonl (or .csv)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes (default: all cores on a GPU, half on the CPU; 0 = in this process)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers is not None and args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", args.device):
        parser.error(f"--device must be auto, cpu, cuda or cuda:N, got {args.device!r}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; returns the exit status (0 also when some clips are error rows)."""
    setup_cli_logging()
    args = parse_args(argv)
    try:
        device = pick_device(args.device)
    except RuntimeError:  # a CUDA device asked for where none is visible
        logger.error("--device %s: no CUDA device is visible; use --device cpu (or auto)", args.device)
        return 1
    try:
        writer = None
        ckpt = load_checkpoint(args.checkpoint)
        check_finite_weights(ckpt, args.checkpoint)
        if not isinstance(ckpt.get("preprocess"), Mapping):
            raise CheckpointError(f"{args.checkpoint} stores no preprocessing parameters (key 'preprocess')")
        pcfg = from_dict(PreprocessConfig, dict(ckpt["preprocess"]), "preprocess")
        clips = list_clips(args.clips)
        check_output(args.out, input_files(args, clips))
        transcripts = (read_transcripts(args.transcripts, pcfg.text.context_turns)
                       if args.transcripts is not None else None)
        jobs = make_jobs(clips, transcripts)
        predictor = Predictor(ckpt, device)
        writer = RowWriter(args.out, predictor.labels)  # locks OUT.partial before any decoding
        if predictor.model.reads_dialogues:
            jobs = in_dialogue_order(jobs)
        workers = default_workers(device) if args.workers is None else args.workers
        pool = DecodePool(predictor.preprocess, min(workers, len(jobs)),
                          default_lookahead(args.batch_size, workers)).start()
    except (CheckpointError, ConfigError, InputError, meld.MeldFormatError, OSError) as err:
        if writer is not None:
            writer.abandon()
        logger.error("%s", err)
        return 1
    if device.type == "cpu":
        torch.set_num_threads(model_threads(workers))
    logger.info("checkpoint %s (epoch %s), %s model on %s, %d decoding workers", args.checkpoint,
                ckpt.get("epoch"), "+".join(predictor.modalities), device, workers)
    with pool:
        summary = run(predictor, jobs, pool, args.out, args.batch_size, writer)
    if summary["metrics"]:
        print("metrics over the labelled ok clips:\n" + format_metrics(summary["metrics"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

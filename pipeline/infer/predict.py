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

Clips (``pipeline.clips``): a folder (its video and audio files, sorted by name; what it
skips is logged, with why), a glob pattern, a single clip, or a ``.txt`` list with one path
per line (relative to the list's folder; blank and ``#`` lines skipped). An audio-only file
(``.wav``, ``.m4a``, ...) is predicted from its audio and text, its video masked. Transcripts: a MELD CSV (clip ``dia{D}_utt{U}``; speaker prefix and dialogue
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
when ``--out`` ends with ``.csv`` (``pipeline.predictions``). Rows are streamed to
``OUT.partial`` as batches finish and the file is renamed to ``OUT`` at the end: a reader
never mistakes a killed run's output for a complete one, and the partial file still holds
every row done so far (a write that fails, on a full disk, stops the run with one error
line and leaves it cut back to its last whole row). Before any work, an ``--out`` that is one of the run's inputs (a clip, a
sidecar, the checkpoint, the transcripts, the list; links resolved) or a directory is
refused, and ``OUT.partial`` is locked (``fcntl.flock``): a second run with the same
``--out`` is refused while one writes.

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
import logging
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from pipeline import meld
from pipeline.clips import list_clips
from pipeline.config import ConfigError, PreprocessConfig, config_from_dict, from_dict
from pipeline.data import collate, labels_of, make_item
from pipeline.decoding import DecodePool, Decoded, Job, batches, dialogue_batches, in_dialogue_order, make_jobs
from pipeline.distributed import pick_device, setup_cli_logging
from pipeline.execution import autocast, inference_dtype, to_device
from pipeline.metrics import classification_metrics
from pipeline.model import CheckpointError, MultimodalModel, load_checkpoint
from pipeline.predictions import TASKS, OutputError, RowWriter, check_output
from pipeline.transcripts import SIDECAR_EXTENSIONS, InputError, read_transcripts

logger = logging.getLogger(__name__)



# --------------------------------------------------------------------------- the model
class Predictor:
    """The checkpoint's model on ``device``, turning a list of decoded clips into rows."""

    def __init__(self, ckpt: Mapping[str, Any], device: torch.device) -> None:
        cfg = config_from_dict(ckpt["config"])
        self.model = MultimodalModel.from_checkpoint(ckpt).to(device)
        self.device = device
        self.dtype = inference_dtype(cfg.train.amp, device)  # fp32 on the CPU, whatever the training used
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
    except (CheckpointError, ConfigError, InputError, meld.MeldFormatError, OSError, OutputError) as err:
        if writer is not None:
            writer.abandon()
        logger.error("%s", err)
        return 1
    if device.type == "cpu":
        torch.set_num_threads(model_threads(workers))
    logger.info("checkpoint %s (epoch %s), %s model on %s, %d decoding workers", args.checkpoint,
                ckpt.get("epoch"), "+".join(predictor.modalities), device, workers)
    try:
        with pool:
            summary = run(predictor, jobs, pool, args.out, args.batch_size, writer)
    except OutputError as err:  # a full disk: one line, the partial file left with whole rows only
        logger.error("%s", err)
        return 1
    if summary["metrics"]:
        print("metrics over the labelled ok clips:\n" + format_metrics(summary["metrics"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

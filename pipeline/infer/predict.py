"""Inference at work: a checkpoint's model (:class:`Predictor`) over decoded clips, batch by
batch, one output row per clip in input order. The command line is :mod:`pipeline.infer.cli`.
"""
from __future__ import annotations

import collections
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from pipeline.config import config_from_dict
from pipeline.data.dataset import collate, labels_of, make_item
from pipeline.execution import autocast, inference_dtype, to_device
from pipeline.infer.decoding import Decoded, DecodePool, Job, batches, dialogue_batches
from pipeline.infer.predictions import TASKS, RowWriter
from pipeline.metrics import classification_metrics
from pipeline.model import CheckpointError, MultimodalModel
from pipeline.quantization import quantize

logger = logging.getLogger(__name__)



# --------------------------------------------------------------------------- the model
class Predictor:
    """The checkpoint's model on ``device``, turning a list of decoded clips into rows."""

    def __init__(self, ckpt: Mapping[str, Any], device: torch.device, quantization: str | None = None) -> None:
        cfg = config_from_dict(ckpt["config"])
        self.model = MultimodalModel.from_checkpoint(ckpt).to(device)
        self.device = device
        self.dtype = inference_dtype(cfg.train.amp, device)  # fp32 on the CPU, whatever the training used
        self.quantization = quantization  # None, or the scheme every row names
        if quantization is not None:
            quantize(self.model, quantization, device)  # QuantizeError on a GPU
            self.dtype = None  # int8 products, float32 elsewhere: no autocast on top
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
        if self.quantization is not None:
            for row in rows:
                row["quantization"] = self.quantization
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


def predicted(predictor: Predictor, jobs: Sequence[Job], pool: DecodePool,
              batch_size: int) -> Iterator[list[tuple[Job, dict[str, Any]]]]:
    """``(job, row)`` pairs of every job, decoded by ``pool``, a batch at a time in the order of ``jobs``."""
    grouping = dialogue_batches if predictor.model.reads_dialogues else batches
    for group in grouping(pool.imap(jobs), batch_size):
        yield list(zip((decoded.job for decoded in group), predictor.rows(group)))


def run(predictor: Predictor, jobs: Sequence[Job], pool: DecodePool, out: Path, batch_size: int,
        writer: RowWriter | None = None) -> dict[str, Any]:
    """Predict every job, decoded by ``pool``, and write the rows to ``out`` (through
    ``writer`` when the caller already claimed it); returns a summary with counts, seconds,
    clips per second and, when labels were known, metrics."""
    return write_rows(predicted(predictor, jobs, pool, batch_size), len(jobs), predictor.labels, out, writer)


def write_rows(groups: Iterable[list[tuple[Job, dict[str, Any]]]], total: int, labels: Mapping[str, Sequence[str]],
               out: Path, writer: RowWriter | None = None) -> dict[str, Any]:
    """Write the rows of ``groups`` (``(job, row)`` lists, ``total`` in all) to ``out`` as they
    come, scoring the labelled ok ones; returns the run's summary (see :func:`run`)."""
    start = time.perf_counter()
    writer = writer if writer is not None else RowWriter(out, labels)
    truth: dict[str, list[int]] = {task: [] for task in TASKS}
    guess: dict[str, list[int]] = {task: [] for task in TASKS}
    reasons: collections.Counter[str] = collections.Counter()
    try:
        with tqdm(total=total, unit="clip", desc="infer", dynamic_ncols=True) as bar:
            for group in groups:
                writer.write(row for _, row in group)
                for job, row in group:
                    if row["status"] != "ok":
                        reasons[row["error"]] += 1
                        continue
                    for task in TASKS:
                        label = getattr(job, task)
                        if label is not None:
                            truth[task].append(list(labels[task]).index(label))
                            guess[task].append(list(labels[task]).index(row[task]))
                bar.update(len(group))
        writer.commit()
    finally:
        writer.close()
    seconds = time.perf_counter() - start
    metrics = {task: classification_metrics(truth[task], guess[task], list(labels[task]))
               for task in TASKS if truth[task]}
    errors = sum(reasons.values())
    summary = {"clips": total, "ok": total - errors, "errors": errors, "reasons": dict(reasons),
               "seconds": seconds, "clips_per_second": total / seconds if seconds > 0 else math.inf,
               "metrics": metrics, "out": str(out)}
    logger.info("%d clips: %d ok, %d errors%s in %.1f s (%.2f clips/s); wrote %s", total, summary["ok"],
                errors, "".join(f"; {n} {reason}" for reason, n in reasons.most_common(5)), seconds,
                summary["clips_per_second"], out)
    return summary

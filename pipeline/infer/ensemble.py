"""Several checkpoints as one model (``pipeline.infer --checkpoint A B C``): each member
decodes the clips with its own preprocessing (as it was trained) and predicts them in its own
order (whole dialogues for a dialogue model); a clip's row then holds the members' class
probabilities averaged, its label their argmax, and its regression outputs averaged.

The members must share their label vocabularies (the same tasks, the same names in the same
order), else the run is refused before any clip is decoded. A clip that any member could not
use is an error row naming that member. Gates, which belong to one member's head, are left out.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from pipeline.infer.decoding import DecodePool, Job
from pipeline.infer.predict import Predictor, predicted
from pipeline.infer.predictions import TASKS
from pipeline.infer.transcripts import InputError


def check_members(predictors: Sequence[Predictor], paths: Sequence[Path]) -> None:
    """InputError unless every member has the first member's label vocabularies."""
    for predictor, path in zip(predictors[1:], paths[1:]):
        if predictor.labels != predictors[0].labels:
            differing = sorted(task for task in {*predictor.labels, *predictors[0].labels}
                               if predictor.labels.get(task) != predictors[0].labels.get(task))
            raise InputError(f"--checkpoint {path}: its label vocabularies differ from {paths[0]}'s "
                             f"({', '.join(differing)}); an ensemble averages the probabilities of the same labels")


def member_rows(predictor: Predictor, jobs: Sequence[Job], pool: DecodePool, batch_size: int) -> dict[str, dict]:
    """Every job's row by one member, keyed by clip path."""
    return {job.clip: row for group in predicted(predictor, jobs, pool, batch_size) for job, row in group}


def averaged(rows: Sequence[Mapping[str, Any]], labels: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """One clip's row from its members' rows (in member order)."""
    for number, row in enumerate(rows, start=1):
        if row["status"] != "ok":
            return {**row, "error": f"checkpoint {number}: {row['error']}"}
    first = rows[0]
    merged: dict[str, Any] = {"clip": first["clip"], "id": first["id"], "status": "ok", "error": None,
                              "modalities": sorted({m for row in rows for m in row["modalities"]})}
    for task in TASKS:
        probs = np.mean([[row[f"{task}_probs"][name] for name in labels[task]] for row in rows], axis=0)
        merged[task] = labels[task][int(probs.argmax())]
        merged[f"{task}_probs"] = {name: float(p) for name, p in zip(labels[task], probs)}
    names = list(labels.get("regression", []))
    merged["regression"] = ({name: float(np.mean([row["regression"][name] for row in rows])) for name in names}
                            if names and all(row["regression"] for row in rows) else {})
    if "quantization" in first:
        merged["quantization"] = first["quantization"]
    return merged


def ensemble_groups(predictors: Sequence[Predictor], member_jobs: Sequence[Sequence[Job]],
                    open_pool: Callable[[Predictor, int], DecodePool],
                    batch_size: int) -> Iterator[list[tuple[Job, dict[str, Any]]]]:
    """``(job, averaged row)`` pairs in the first member's order, a batch at a time, once every
    member has predicted every clip (``member_jobs``: each member's jobs, in its order;
    ``open_pool``: a started decode pool for a member and its job count)."""
    by_member = []
    for predictor, jobs in zip(predictors, member_jobs):
        with open_pool(predictor, len(jobs)) as pool:
            by_member.append(member_rows(predictor, jobs, pool, batch_size))
    labels = predictors[0].labels
    jobs = member_jobs[0]
    for start in range(0, len(jobs), batch_size):
        yield [(job, averaged([rows[job.clip] for rows in by_member], labels))
               for job in jobs[start:start + batch_size]]

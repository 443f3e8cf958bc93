"""The teacher's soft targets of a distilled run (``train.distill_from``), computed once.

Each teacher checkpoint runs once over the training split, on features made as it was
trained: a cache of that split whose parameters match the checkpoint's ``preprocess`` (its own
``data.cache_dir``, else the student's), and its vectors when it trained on vectors
(``data.embeddings_dir``, the two-stage recipe). Its class probabilities at temperature T,
``softmax(logits / T)``, are averaged over the teachers and stored in the run folder
(``teacher_targets.npz``, with a key of the teachers' files and T): a resumed run, or a rerun
with the same teachers, reads them instead of running a teacher again.

:class:`WithTeacher` puts them into the training items' labels (``teacher_emotion``,
``teacher_sentiment``; NaN where no teacher scored the sample), which the loss reads.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pipeline.config import Config, ConfigError, config_from_dict
from pipeline.data.cache import CacheMismatchError, CacheSplit
from pipeline.data.dataset import MeldDataset, collate
from pipeline.data.dialogues import DialogueBatches
from pipeline.execution import to_device
from pipeline.labels import label_vocab
from pipeline.model import MultimodalModel, load_checkpoint
from pipeline.train.loading import open_embedded
from pipeline.train.losses.tasks import CLASSIFICATION_TASKS

log = logging.getLogger(__name__)

FILE = "teacher_targets.npz"


def targets_key(paths: list[str], temperature: float) -> str:
    """What the stored targets were made from: each teacher file (resolved path, size, mtime) and T."""
    files = []
    for path in paths:
        resolved = Path(path).expanduser().resolve()
        stat = resolved.stat() if resolved.is_file() else None
        files.append([str(resolved), stat.st_size if stat else None, stat.st_mtime_ns if stat else None])
    return hashlib.sha256(json.dumps([files, temperature]).encode()).hexdigest()[:16]


def teacher_targets(cfg: Config, out_dir: Path, device: torch.device, save: bool = True) -> dict[str, np.ndarray]:
    """``{"ids": [N], "emotion": [N,7], "sentiment": [N,3]}``: the teachers' averaged
    probabilities on the training split, read from ``out_dir`` when made there before (and
    stored there when ``save``)."""
    key = targets_key(cfg.train.distill_from, cfg.train.distill_temperature)
    stored = out_dir / FILE
    if stored.is_file():
        with np.load(stored) as saved:
            if str(saved["key"]) == key:
                log.info("distillation: the teachers' probabilities of %d training samples read from %s",
                         len(saved["ids"]), stored)
                return {name: saved[name] for name in ("ids", *CLASSIFICATION_TASKS)}
    sums: dict[str, dict[str, np.ndarray]] = {}
    for path in cfg.train.distill_from:
        for id_, probs in one_teacher(path, cfg, device).items():
            if id_ in sums:
                for task in CLASSIFICATION_TASKS:
                    sums[id_][task] = sums[id_][task] + probs[task]
            else:
                sums[id_] = dict(probs)
    teachers = len(cfg.train.distill_from)
    ids = sorted(sums)
    targets = {"ids": np.array(ids), **{task: np.stack([sums[id_][task] / teachers for id_ in ids]).astype(np.float32)
                                        for task in CLASSIFICATION_TASKS}}
    if save:
        out_dir.mkdir(parents=True, exist_ok=True)
        partial = out_dir / f".{FILE}.partial"
        with partial.open("wb") as file:
            np.savez(file, key=np.array(key), **targets)
        partial.replace(stored)
    log.info("distillation: %d teacher(s), temperature %g, probabilities of %d training samples in %s", teachers,
             cfg.train.distill_temperature, len(ids), stored)
    return targets


def one_teacher(path: str, cfg: Config, device: torch.device) -> dict[str, dict[str, np.ndarray]]:
    """Sample id -> {task: probabilities at T} of one teacher checkpoint on the training split."""
    ckpt = load_checkpoint(path)
    if {task: list(names) for task, names in ckpt["labels"].items()} != label_vocab():
        raise ConfigError(f"train.distill_from: {path} predicts other labels ({ckpt['labels']}) than this run "
                          f"({label_vocab()})")
    tcfg = config_from_dict(ckpt["config"])
    model = MultimodalModel.from_checkpoint(ckpt).to(device).eval()
    dataset = teacher_dataset(path, ckpt, tcfg, cfg, model)
    if model.reads_dialogues:
        loader = DataLoader(dataset, batch_sampler=DialogueBatches(dataset.dialogues(), cfg.train.batch_size, 1, 0,
                                                                   shuffle=False), collate_fn=collate,
                            generator=torch.Generator())
    else:
        loader = DataLoader(dataset, batch_size=cfg.train.batch_size, collate_fn=collate, generator=torch.Generator())
    found: dict[str, dict[str, np.ndarray]] = {}
    with torch.inference_mode():
        for batch in tqdm(loader, desc=f"teacher {Path(path).parent.name or path}", leave=False):
            outputs = model(to_device(batch, device))
            probs = {task: torch.softmax(outputs[task].float() / cfg.train.distill_temperature, dim=-1).cpu().numpy()
                     for task in CLASSIFICATION_TASKS}
            for row, id_ in enumerate(batch["ids"]):
                found[id_] = {task: probs[task][row] for task in CLASSIFICATION_TASKS}
    return found


def teacher_dataset(path: str, ckpt: Mapping[str, Any], tcfg: Config, cfg: Config, model: MultimodalModel) -> Dataset:
    """The training split as the teacher reads it: a cache made with its preprocess settings
    (its own ``data.cache_dir`` first, then the student's), and its vectors if it read vectors."""
    split, tried = cfg.data.train_split, []
    for folder in dict.fromkeys([tcfg.data.cache_dir, cfg.data.cache_dir]):
        split_dir = Path(folder) / split
        try:
            cache = CacheSplit(split_dir)
            cache.check_params(dict(ckpt["preprocess"]))
        except (FileNotFoundError, CacheMismatchError) as err:
            tried.append(f"{split_dir}: {str(err).splitlines()[0]}")
            continue
        if tcfg.data.embeddings_dir:
            return open_embedded(Path(tcfg.data.embeddings_dir), {"train": cache}, model, tcfg.model.encoders,
                                 tcfg.model.modalities)["train"]
        return MeldDataset(cache.split_dir, tcfg.model.modalities)
    raise ConfigError(f"train.distill_from: {path} was trained on features no cache here holds ("
                      + "; ".join(tried) + "): preprocess the training split with the teacher's config")


class WithTeacher(Dataset):
    """``dataset``'s items with the teachers' probabilities in their labels
    (``teacher_emotion``, ``teacher_sentiment``; NaN rows for samples no teacher scored)."""

    def __init__(self, dataset: Dataset, targets: Mapping[str, np.ndarray]) -> None:
        self.dataset = dataset
        self.rows = {str(id_): i for i, id_ in enumerate(targets["ids"])}
        self.targets = {task: torch.from_numpy(np.asarray(targets[task])) for task in CLASSIFICATION_TASKS}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # lengths(), dialogues(), ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        row = self.rows.get(item["id"])
        labels = dict(item["labels"])
        for task in CLASSIFICATION_TASKS:
            table = self.targets[task]
            labels[f"teacher_{task}"] = table[row] if row is not None else torch.full((table.shape[1],), float("nan"))
        return {**item, "labels": labels}

"""``train.regression_loss=auto``: Huber or MSE, chosen on validation by a short probe with each.

Before the run, two probe runs train the same model on the same data with the same seed for
``train.loss_probe_epochs`` epochs, one with each loss (early stopping off, no test split:
the probe never sees test), in ``output_dir/loss_probe/{huber,mse}``. The loss whose last
probe epoch has the lower validation RMSE on the regression targets (averaged over the
targets; Huber on a tie) is the one the run trains with; ``config.yaml`` names it. Both RMSEs
and the choice are logged, kept in ``output_dir/loss_probe.json`` (a resumed run reads them
there instead of probing again) and recorded in ``metrics.json`` under ``regression_loss_probe``.
The probes' checkpoints are deleted once they are scored; their metrics and curves stay.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from pipeline.config import Config
from pipeline.labels import REGRESSION
from pipeline.train import distributed as dist
from pipeline.train.run_outputs import write_json

log = logging.getLogger(__name__)

KINDS = ("huber", "mse")
RECORD = "loss_probe.json"


def validation_rmse(result: Mapping[str, Any]) -> float:
    """Mean RMSE over the regression targets at the last epoch of a run's ``metrics.json``
    content (NaN when the validation split has no regression target)."""
    val = result["epochs"][-1]["val"]
    values = [val[name]["rmse"] for name in REGRESSION if isinstance(val.get(name), Mapping) and "rmse" in val[name]]
    return float(sum(values) / len(values)) if values else math.nan


def probe_config(cfg: Config, kind: str) -> Config:
    """The probe run of ``kind``: the run's config, trained ``loss_probe_epochs`` epochs into
    ``output_dir/loss_probe/<kind>`` without early stopping and without the test split."""
    train = dataclasses.replace(cfg.train, regression_loss=kind, epochs=cfg.train.loss_probe_epochs,
                                early_stopping_patience=0, resume=False, overwrite=True)
    data = dataclasses.replace(cfg.data, test_split="")
    return dataclasses.replace(cfg, output_dir=str(Path(cfg.output_dir) / "loss_probe" / kind), train=train, data=data)


def read_record(path: Path, cfg: Config) -> dict | None:
    """A probe record of an earlier start of this run with the same probe length, or None."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if record.get("epochs") != cfg.train.loss_probe_epochs or record.get("chosen") not in KINDS:
        return None
    return record


def choose_regression_loss(cfg: Config, device: torch.device,
                           train: Callable[[Config, torch.device], dict]) -> tuple[Config, dict | None]:
    """``cfg`` with ``train.regression_loss`` resolved, and the probe record (None unless
    ``auto``). ``train`` runs one training run (:func:`pipeline.train.fit.train`)."""
    if cfg.train.regression_loss != "auto":
        return cfg, None
    out_dir = Path(cfg.output_dir)
    record = dist.from_main(lambda: read_record(out_dir / RECORD, cfg) if cfg.train.resume else None)
    if record is None:
        rmse = {}
        for kind in KINDS:
            log.info("train.regression_loss=auto: probing %s for %d epoch(s) in %s", kind,
                     cfg.train.loss_probe_epochs, out_dir / "loss_probe" / kind)
            probe = probe_config(cfg, kind)
            rmse[kind] = validation_rmse(train(probe, device))
            if dist.is_main_process():
                for name in ("best.pt", "last.pt"):
                    (Path(probe.output_dir) / name).unlink(missing_ok=True)
        if not all(math.isfinite(value) for value in rmse.values()):
            raise ValueError(f"train.regression_loss=auto: the validation split {cfg.data.val_split!r} has no "
                             "regression target to compare the losses on; choose huber or mse")
        chosen = min(KINDS, key=lambda kind: (rmse[kind], KINDS.index(kind)))
        record = {"validation_rmse": rmse, "chosen": chosen, "epochs": cfg.train.loss_probe_epochs,
                  "split": cfg.data.val_split}
        if dist.is_main_process():
            write_json(out_dir / RECORD, record)
    log.info("train.regression_loss=auto: validation RMSE huber %.4f, mse %.4f after %d epoch(s): training with %s",
             record["validation_rmse"]["huber"], record["validation_rmse"]["mse"], record["epochs"], record["chosen"])
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, regression_loss=record["chosen"])), record

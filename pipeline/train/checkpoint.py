"""Checkpoints of a training run: the random state of every rank, the resume state of
``last.pt`` and the lean ``best.pt`` that inference and evaluation read.

``last.pt`` holds everything an exact resume needs (optimizer, schedule, scaler, every rank's
random state, the training weights under a moving average). ``best.pt`` holds what scoring
needs: the weights it scores with, config, preprocessing, labels, metrics and epoch.
"""
from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch

from pipeline.config import Config, flatten
from pipeline.model import make_checkpoint
from pipeline.train import distributed as dist

if TYPE_CHECKING:
    from pipeline.train.session import Session

log = logging.getLogger(__name__)

# Keys of a run checkpoint that only resuming reads; best.pt goes without them.
RESUME_KEYS = ("optimizer", "scheduler", "scaler", "rng", "training_model", "average_updates", "bad_epochs",
               "sampler_epoch", "frozen_encoders", "epoch_progress")


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """This process's random states as tensors and lists (loadable with weights_only=True);
    the CUDA states only when the run trains on ``device`` of type cuda (on a GPU machine, a
    run on the CPU must not initialise CUDA)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, python_state, gauss = random.getstate()
    on_cuda = device is not None and device.type == "cuda"
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if on_cuda else [],
            "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
            "python": [version, list(python_state), gauss]}


def set_rng_state(state: Mapping[str, Any], device: torch.device | None = None) -> None:
    """Restore the random states that :func:`rng_state` returned; the CUDA states only on a
    cuda ``device``, and only of the GPUs visible now (a checkpoint written on a machine
    with more GPUs holds more states than there are devices)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and device is not None and device.type == "cuda":
        visible = torch.cuda.device_count()
        if len(state["cuda"]) > visible:
            log.warning("the checkpoint holds the CUDA random states of %d GPUs, %d are visible: restoring "
                        "those of the first %d", len(state["cuda"]), visible, visible)
        for index, cuda_state in enumerate(state["cuda"][:visible]):
            torch.cuda.set_rng_state(cuda_state, index)
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))


def run_checkpoint(cfg: Config, run: Session, epoch: int, best: float, bad_epochs: int,
                    history: list[dict]) -> dict:
    """The checkpoint after ``epoch`` completed epochs (collective: gathers every rank's
    random state, so every rank must call it). With ``train.ema_decay`` its ``model`` is the
    moving average (what inference loads) and ``training_model`` the weights training goes on from."""
    averaging = {} if run.average is None else {"training_model": run.model.state_dict(),
                                                "average_updates": run.average.updates}
    checkpoint = make_checkpoint(
        run.model, cfg, run.caches["train"].preprocess,
        optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(),
        scaler=run.scaler.state_dict() if run.scaler.is_enabled() else None,
        epoch=epoch, best_metric=best, bad_epochs=bad_epochs, sampler_epoch=epoch,
        rng=dist.all_gather_objects(rng_state(run.device)), metrics=history, **averaging)
    if run.average is not None:
        checkpoint["model"] = dict(run.average.average)
    return checkpoint


def restore(run: Session, ckpt: Mapping[str, Any]) -> None:
    """Load model, moving average, optimizer, schedule, scaler and this rank's random state
    from ``ckpt`` (a run on vectors keeps its frozen encoders as built: see resume_checkpoint)."""
    state = ckpt.get("training_model", ckpt["model"])
    frozen = tuple(f"encoders.{m}." for m in ckpt.get("frozen_encoders", ()))
    missing, unexpected = run.model.load_state_dict(state, strict=False)
    wrong = unexpected + [key for key in missing if not key.startswith(frozen)] if frozen else missing + unexpected
    if wrong:
        raise RuntimeError(f"the checkpoint's weights do not fit the model: {wrong[:5]}")
    if run.average is not None:
        run.average.load(ckpt["model"], ckpt.get("average_updates", 0))
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt["scaler"] is not None:
        run.scaler.load_state_dict(ckpt["scaler"])
    if len(ckpt["rng"]) == dist.get_world_size():
        set_rng_state(ckpt["rng"][dist.get_rank()], run.device)
    else:
        log.warning("the checkpoint was written by %d ranks, this job has %d: random states start afresh",
                    len(ckpt["rng"]), dist.get_world_size())


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for each dotted key that differs, except ``train.resume``."""
    before, after = flatten(old), flatten(new)
    return [f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in sorted(set(before) | set(after))
            if key != "train.resume" and before.get(key) != after.get(key)]


def resume_checkpoint(checkpoint: Mapping[str, Any], cfg: Config) -> dict[str, Any]:
    """What ``last.pt`` keeps. A run on vectors (``data.embeddings_dir``) leaves out its frozen
    encoders: training rebuilds and checks them against the vectors' key on every start, and
    rewriting a 440 MB encoder after each epoch of a seconds-long run would cost more than
    the run itself. ``best.pt`` keeps them, for inference on raw clips."""
    if not cfg.data.embeddings_dir:
        return dict(checkpoint)
    prefixes = tuple(f"encoders.{m}." for m in cfg.model.modalities)
    lean = {**checkpoint, "frozen_encoders": list(cfg.model.modalities)}
    for key in ("model", "training_model"):
        if key in lean:
            lean[key] = {name: value for name, value in lean[key].items() if not name.startswith(prefixes)}
    return lean


def inference_checkpoint(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """``checkpoint`` without the resume state: what ``best.pt`` keeps."""
    return {key: value for key, value in checkpoint.items() if key not in RESUME_KEYS}

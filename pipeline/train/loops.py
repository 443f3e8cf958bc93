"""The training and evaluation loops: ``train_one_epoch`` (gradient accumulation, AMP, DDP,
clipping, schedule and weight average per optimizer step) and ``evaluate`` (exact metrics
over the ranks); the text augmentations of pipeline.train.augment change training batches."""
from __future__ import annotations

import contextlib
import math
import sys
import time
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.config import TrainConfig
from pipeline.execution import autocast, to_device
from pipeline.metrics import compute_metrics
from pipeline.train import distributed as dist
from pipeline.train.augment import TextAugmentation
from pipeline.train.losses import MultitaskLoss
from pipeline.train.optim import WeightAverage


class NonFiniteError(FloatingPointError):
    """A non-finite loss or gradient: training stops before it reaches the weights (the
    message names the epoch, the step and the samples of the batch)."""


def check_finite(value: torch.Tensor, what: str, epoch: int, step: int, ids: list[str]) -> None:
    """Raise NonFiniteError when ``value`` (a scalar) is NaN or infinite."""
    if not torch.isfinite(value).item():
        shown = ", ".join(map(str, ids[:16])) + (f" and {len(ids) - 16} more" if len(ids) > 16 else "")
        raise NonFiniteError(f"non-finite {what} ({value.item()}) at epoch {epoch + 1}, step {step + 1}, on the "
                             f"samples {shown}: look for NaN/inf in their cache entries, or lower train.lr; "
                             "the weights of the last finished epoch are in last.pt")


def train_one_epoch(model: nn.Module, loader: DataLoader, loss_fn: MultitaskLoss,
                    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                    scaler: torch.amp.GradScaler, device: torch.device, cfg: TrainConfig, epoch: int,
                    dtype: torch.dtype | None = None, augment: TextAugmentation | None = None,
                    writer: Any = None, average: WeightAverage | None = None,
                    carried: Mapping[str, Any] | None = None,
                    stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """One pass over ``loader`` (at most ``cfg.max_steps_per_epoch`` batches).

    Gradients of ``cfg.accumulate`` batches make one optimizer step (DDP synchronises only
    on the last of them); the scheduler and ``average`` (if any) step with the optimizer,
    not when an fp16 GradScaler skips the step. ``stop()`` is asked after each optimizer
    step; when true the pass ends there. ``carried``: the ``progress`` of such a stopped pass
    (from last.pt); its batches are drawn in the epoch's order and passed over, and its sums
    count in the means, so a stopped and resumed epoch reports what an uninterrupted one does.
    Returns this rank's mean loss, per-task losses, sample count, the seconds spent in total
    and waiting for data, and ``stopped_at`` (None unless ``stop`` ended the pass) with the
    ``progress`` to carry on from.
    """
    model.train()
    unwrapped = model.module if isinstance(model, DistributedDataParallel) else model
    steps = len(loader) if cfg.max_steps_per_epoch == 0 else min(len(loader), cfg.max_steps_per_epoch)
    carried = carried or {}
    start_step = carried.get("step", 0)
    sums: dict[str, Any] = dict(carried.get("sums", {}))
    samples, data_wait = carried.get("samples", 0), carried.get("data_wait", 0.0)
    optimizer.zero_grad(set_to_none=True)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # the loader's seed draw leaves the random state as it
        batches = iter(loader)  # was, so a pass resumed mid-epoch draws the numbers an uninterrupted one does
    group_ids: list[str] = []  # sample ids of the batches whose gradients the next optimizer step sums
    progress = tqdm(range(steps), desc=f"epoch {epoch + 1}", disable=not dist.is_main_process(),
                    leave=False, file=sys.stderr)
    stopped_at = None
    for step in progress:
        wait_start = time.perf_counter()
        batch = next(batches)
        data_wait += time.perf_counter() - wait_start
        if step < start_step:
            continue
        if augment is not None and "text" in batch:
            batch["text"] = augment(batch["text"], batch["ids"])
        batch = to_device(batch, device)
        group_start = step - step % cfg.accumulate
        group_size = min(cfg.accumulate, steps - group_start)
        last_in_group = step == group_start + group_size - 1
        sync = contextlib.nullcontext() if last_in_group or not isinstance(model, DistributedDataParallel) \
            else model.no_sync()
        with sync:
            with autocast(device, dtype):
                outputs = model(batch)
            loss, parts = loss_fn({k: v.float() for k, v in outputs.items()}, batch["labels"])
            group_ids = (group_ids if step > group_start else []) + list(batch["ids"])  # of this optimizer step
            check_finite(loss.detach(), "loss", epoch, step, batch["ids"])
            scaler.scale(loss / group_size).backward()
        if last_in_group:
            # without fp16's scaler (which skips such steps itself) a non-finite gradient
            # would reach the weights: its norm is checked, clipping or not
            if cfg.grad_clip > 0 or not scaler.is_enabled():
                scaler.unscale_(optimizer)
                norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
                if not scaler.is_enabled():
                    check_finite(norm, "gradient norm", epoch, step, group_ids)
            scale = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            # fp16: the scaler skips the step (and lowers its scale) on inf/NaN gradients; the
            # schedule and the average then stay where they are, as the weights did
            if scaler.get_scale() >= scale:
                scheduler.step()
                if average is not None:
                    average.update(unwrapped)
        samples += len(batch["ids"])
        for name, value in {"loss": loss.detach(), **parts}.items():
            sums[name] = sums.get(name, 0.0) + value
        if (step + 1) % cfg.log_every == 0 and dist.is_main_process():
            current = loss.item()
            progress.set_postfix(loss=f"{current:.4f}")
            if writer is not None:
                global_step = epoch * steps + step + 1
                writer.add_scalar("train/loss", current, global_step)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[-1], global_step)
        if last_in_group and stop is not None and step + 1 < steps and stop():
            stopped_at = step + 1
            break
    progress.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    done = stopped_at or steps
    means = {name: float(total) / max(done, 1) for name, total in sums.items()}
    progress_state = {"step": done, "sums": {name: float(total) for name, total in sums.items()},
                      "samples": samples, "data_wait": data_wait}
    return {"loss": means.pop("loss", float("nan")), "parts": means, "samples": samples, "steps": done - start_step,
            "seconds": seconds, "data_wait": data_wait, "stopped_at": stopped_at, "progress": progress_state}


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, loss_fn: MultitaskLoss, device: torch.device,
             dtype: torch.dtype | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Metrics of ``model`` on every sample of ``loader``'s dataset.

    Each rank predicts its share; the predictions of all ranks are gathered with their clip
    ids and the duplicates that DistributedSampler pads with are dropped, so the metrics
    (and the loss, recomputed on the gathered outputs) are those of the whole split,
    identical on every rank. Returns (metrics, arrays sorted by id).
    """
    model.eval()
    ids: list[str] = []
    chunks: dict[str, list[np.ndarray]] = {}
    for batch in loader:
        labels = batch["labels"]
        with autocast(device, dtype):
            outputs = model(to_device(batch, device))
        ids.extend(batch["ids"])
        for task in ("emotion", "sentiment", "regression"):
            if task in outputs and task in labels:
                chunks.setdefault(task, []).append(outputs[task].float().cpu().numpy())
                chunks.setdefault(f"{task}_label", []).append(labels[task].numpy())
    local = {"ids": ids, **{name: np.concatenate(parts) for name, parts in chunks.items()}}
    first: dict[str, tuple[int, int]] = {}
    gathered = dist.all_gather_objects(local)
    for rank, part in enumerate(gathered):
        for row, id_ in enumerate(part["ids"]):
            first.setdefault(id_, (rank, row))
    order = sorted(first)
    arrays = {"ids": np.array(order)}
    for name in local:
        if name != "ids":
            arrays[name] = np.stack([gathered[rank][name][row] for rank, row in (first[i] for i in order)])
    metrics = compute_metrics(arrays)
    outputs = {task: torch.from_numpy(arrays[task]).to(device) for task in ("emotion", "sentiment", "regression")
               if task in arrays}
    labels = {task: torch.from_numpy(arrays[f"{task}_label"]).to(device) for task in outputs}
    metrics["loss"] = float(loss_fn(outputs, labels)[0])
    return metrics, arrays

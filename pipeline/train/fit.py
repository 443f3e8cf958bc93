"""Training: ``python -m pipeline.train --config configs/X.yaml [key=value ...]``.

One process on the CPU or one GPU, or one process per GPU under
``torchrun --nproc_per_node=N -m pipeline.train ...`` (``scripts/train_ddp.sh``); under
DDP ``train.batch_size`` is per rank. The configuration is resolved once, before anything
else, and written to ``output_dir/config.yaml``. Rank 0 alone logs, writes, plots and reads
back ``output_dir`` (the other ranks receive what they need of it, so it need not be on a
filesystem that every node shares):

    output_dir/config.yaml                 the resolved configuration
    output_dir/last.pt, best.pt            checkpoints: every epoch / best validation emotion weighted F1
    output_dir/metrics.json                per-epoch training loss and validation metrics, final test metrics
    output_dir/report.txt                  per-class precision/recall/F1 (test split with best.pt,
    output_dir/classification_report.json  or the validation split when there is no test cache)
    output_dir/confusion_matrix.png        emotion (and confusion_matrix_sentiment.png)
    output_dir/curves.png                  training loss and validation weighted F1 per epoch
    output_dir/events.out.tfevents.*       TensorBoard

The data order is a function of ``(train.seed, epoch)`` and each rank's random state is
stored in every checkpoint, so ``train.resume=true`` after a kill (between or during
epochs) reaches the same final metrics as an uninterrupted run on the CPU. SIGTERM (how
schedulers preempt) stops after the current optimizer step, writes ``last.pt`` with the
place in the epoch (a resume goes on from there) and exits with status 143. A ``last.pt``
that this config cannot continue is refused, naming what differs, before ``config.yaml``
changes; one run at a time holds ``output_dir`` (``pipeline.run_lock``); a full disk stops
the run with one line and leaves the checkpoints written before it whole.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler

from encoders.weights import WeightsError
from pipeline import distributed as dist
from pipeline.averaging import WeightAverage
from pipeline.cache import CacheMismatchError, CacheSplit
from pipeline.checkpoint import config_changes, inference_checkpoint, restore, resume_checkpoint, run_checkpoint
from pipeline.config import Config, ConfigError, dump_yaml, format_config, load_config, to_dict
from pipeline.data import MeldDataset, labels_of
from pipeline.embeddings import open_for_training
from pipeline.execution import amp_dtype
from pipeline.loading import evaluation_order, make_loader, open_split, training_order
from pipeline.loops import NonFiniteError, TokenMasker, evaluate, train_one_epoch
from pipeline.losses import MultitaskLoss, build_loss
from pipeline.metrics import format_report, plot_curves
from pipeline.model import CheckpointError, MultimodalModel, build_model, load_checkpoint
from pipeline.optim import param_groups, warmup_cosine
from pipeline.preemption import Preempted, StopOnSignal
from pipeline.run_lock import RunLock
from pipeline.run_outputs import MONITOR, monitored, summary, write_json, write_reports

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- DDP
def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP around ``model`` under torchrun (again after unfreezing: DDP registers only the
    parameters that require gradients when it is built)."""
    if not dist.is_distributed():
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   gradient_as_bucket_view=True)


# --------------------------------------------------------------------------- outputs
def split_labels(dataset: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A split's labels from its manifest (no array is loaded): emotion and sentiment class
    indices ``[N]`` (-100 unknown) and regression targets ``[N, K]`` (NaN unknown)."""
    labels = [labels_of(record) for record in dataset.records]
    return (np.array([row["emotion"] for row in labels], dtype=np.int64),
            np.array([row["sentiment"] for row in labels], dtype=np.int64),
            np.stack([row["regression"].numpy() for row in labels]))


def warn_double_balancing(cfg: Config) -> None:
    """Warn (rank 0) when the class-balanced sampler and class weights in the loss are both on:
    each corrects the imbalance alone, together they over-weight the rare classes."""
    if cfg.data.balanced_sampler and cfg.train.class_weighting != "none" and dist.is_main_process():
        log.warning("data.balanced_sampler=true already draws every emotion equally often; "
                    "train.class_weighting=%s weights the rare ones up again in the loss, correcting the "
                    "imbalance twice; set train.class_weighting=none unless that is intended",
                    cfg.train.class_weighting)


# --------------------------------------------------------------------------- main
@dataclass
class Session:
    """Everything a run trains with, built from the config by :func:`prepare`."""

    caches: dict[str, CacheSplit]
    datasets: dict[str, MeldDataset]
    loaders: dict[str, DataLoader]
    train_sampler: Sampler
    model: MultimodalModel
    loss_fn: MultitaskLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    dtype: torch.dtype | None
    augment: TokenMasker | None
    average: WeightAverage | None
    steps_per_epoch: int
    device: torch.device = torch.device("cpu")

    @contextlib.contextmanager
    def evaluated_weights(self) -> Iterator[None]:
        """Inside the block the model holds the weights that validation scores and checkpoints
        save (the moving average with ``train.ema_decay``, else its own), with rank 0's
        BatchNorm statistics on every rank."""
        dist.broadcast_buffers(self.model)
        if self.average is None:
            yield
            return
        with self.average.applied(self.model):
            dist.broadcast_buffers(self.model)
            yield


def prepare(cfg: Config, device: torch.device) -> Session:
    """Open the caches (checked against ``cfg.preprocess``), build the loaders, model, loss,
    optimizer and schedule of a run on ``device``."""
    dtype = amp_dtype(cfg.train.amp, device)  # a ConfigError before any cache is read or model built
    caches = {"train": open_split(cfg, cfg.data.train_split, True),
              "val": open_split(cfg, cfg.data.val_split, True),
              "test": open_split(cfg, cfg.data.test_split, False)}
    model = build_model(cfg)
    if cfg.data.embeddings_dir:
        datasets = open_for_training(Path(cfg.data.embeddings_dir), caches, model, cfg.model.encoders,
                                     cfg.model.modalities)
    else:
        datasets = {name: MeldDataset(cache.split_dir, cfg.model.modalities)
                    for name, cache in caches.items() if cache is not None}
    model = model.to(device)
    emotion, sentiment, regression = split_labels(datasets["train"])
    train_sampler = training_order(datasets["train"], emotion, cfg, model)
    loaders = {"train": make_loader(datasets["train"], train_sampler, cfg, device)}
    for name in ("val", "test"):
        if name in datasets:
            loaders[name] = make_loader(datasets[name], evaluation_order(datasets[name], cfg, model), cfg, device)

    if cfg.train.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    augment = None
    if ("text" in cfg.model.modalities and cfg.train.token_mask_samples > 0 and cfg.train.token_mask_prob > 0
            and not cfg.data.embeddings_dir):  # vectors have no tokens to mask
        from encoders.text import load_tokenizer

        augment = TokenMasker(load_tokenizer(cfg.preprocess.text.model), cfg.train.token_mask_prob,
                              cfg.train.token_mask_samples)

    steps_per_epoch = len(loaders["train"])
    if cfg.train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
    optimizer_steps = cfg.train.epochs * math.ceil(steps_per_epoch / cfg.train.accumulate)
    # fused: one kernel for all parameters (on the CPU ~8x faster than the per-tensor loop,
    # a fifth of a MiniLM fine-tuning step)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.train), fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(int(cfg.train.warmup_ratio * optimizer_steps), optimizer_steps))
    warn_double_balancing(cfg)
    return Session(caches=caches, datasets=datasets, loaders=loaders, train_sampler=train_sampler, model=model,
                   loss_fn=build_loss(cfg.train, emotion, sentiment, regression).to(device),
                   optimizer=optimizer, scheduler=scheduler,
                   scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
                   dtype=dtype, augment=augment, steps_per_epoch=steps_per_epoch, device=device,
                   average=WeightAverage(model, cfg.train.ema_decay) if cfg.train.ema_decay else None)


def train(cfg: Config, device: torch.device) -> dict:
    """Train with the resolved ``cfg`` on ``device`` (inside an initialised process group
    under torchrun); returns the content of metrics.json."""
    out_dir = Path(cfg.output_dir)
    # Only rank 0 writes and reads output_dir; what the others need of it comes by broadcast,
    # so nodes without a shared filesystem agree (dist.from_main).
    if dist.from_main((out_dir / "last.pt").exists) and not cfg.train.resume:
        raise FileExistsError(f"{out_dir} already holds a run (last.pt); continue it with train.resume=true "
                              "or choose another output_dir")
    dist.seed_everything(cfg.train.seed)
    run = prepare(cfg, device)  # checks the caches first: a refused run leaves no output folder
    lock = RunLock(out_dir)
    dist.from_main(lock.acquire)  # one run per output_dir (refused on every rank)
    try:
        with StopOnSignal() as stop:
            return fit(cfg, run, stop)
    finally:
        lock.release()


def resume_from(cfg: Config, run: Session, last_path: Path) -> dict | None:
    """The state of ``last.pt`` restored into ``run`` (``train.resume``), or None. A
    checkpoint this config cannot continue (another architecture, other parameter groups)
    is refused naming what differs, before anything in the folder changes."""
    ckpt = dist.from_main(lambda: load_checkpoint(last_path) if cfg.train.resume and last_path.exists() else None)
    if ckpt is None:
        if cfg.train.resume:
            log.warning("train.resume=true but %s does not exist: starting from scratch", last_path)
        return None
    changed = config_changes(ckpt["config"], to_dict(cfg))
    try:
        restore(run, ckpt)
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{last_path} cannot be resumed with this config ({err}); it differs from the "
                              f"run's own config in: {'; '.join(changed) or 'nothing'}. Resume with the run's "
                              f"config ({last_path.parent / 'config.yaml'}) or choose another output_dir") from None
    if changed:
        log.warning("resuming with a config that differs from last.pt's: %s", "; ".join(changed))
    log.info("resumed from %s after epoch %d%s (best %s %.4f)", last_path, ckpt["epoch"],
             f" and {ckpt['epoch_progress']['step']} steps of the next" if ckpt.get("epoch_progress") else "",
             ".".join(MONITOR), ckpt["best_metric"])
    return ckpt


def fit(cfg: Config, run: Session, stop: StopOnSignal) -> dict:
    """The epochs of a run, from scratch or resumed, then the final evaluation and reports."""
    out_dir, device = Path(cfg.output_dir), run.device
    main = dist.is_main_process()
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    model, world = run.model, dist.get_world_size()
    start_epoch, carried, best, bad_epochs, history = 0, None, -math.inf, 0, []
    ckpt = resume_from(cfg, run, last_path)
    if ckpt is not None:
        start_epoch, best, bad_epochs, history = ckpt["epoch"], ckpt["best_metric"], ckpt["bad_epochs"], ckpt["metrics"]
        carried = ckpt.get("epoch_progress")  # where a stop on SIGTERM left the next epoch
    start_step = carried["step"] if carried else 0
    if main:
        dump_yaml(cfg, out_dir / "config.yaml")  # only once the run is sure to start (or go on)

    writer = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir), purge_step=start_epoch * run.steps_per_epoch + start_step + 1)
    unfrozen = False
    ddp_model = wrap_ddp(model, device)
    patience = cfg.train.early_stopping_patience
    log.info("training on %d samples (%d steps per epoch and rank, %d ranks), validating on %d, testing on %s",
             len(run.datasets["train"]), run.steps_per_epoch, world, len(run.datasets["val"]),
             len(run.datasets["test"]) if "test" in run.datasets else "none")
    for epoch in range(start_epoch, cfg.train.epochs):
        if patience and bad_epochs >= patience:
            log.info("early stopping: no better validation %s for %d epochs", ".".join(MONITOR), bad_epochs)
            break
        if 0 < cfg.train.unfreeze_after_epochs <= epoch and not unfrozen and "text" in model.encoders \
                and not cfg.data.embeddings_dir:
            model.encoders["text"].set_trainable_layers(0)
            ddp_model = wrap_ddp(model, device)
            unfrozen = True
            log.info("epoch %d: text encoder fully trainable", epoch + 1)
        run.train_sampler.set_epoch(epoch)
        stats = train_one_epoch(ddp_model, run.loaders["train"], run.loss_fn, run.optimizer, run.scheduler,
                                run.scaler, device, cfg.train, epoch, run.dtype, run.augment, writer, run.average,
                                carried=carried if epoch == start_epoch else None,
                                stop=lambda: stop.requested(device))
        if stats["stopped_at"] is not None:  # preempted: the place in this epoch goes into last.pt
            checkpoint = run_checkpoint(cfg, run, epoch, best, bad_epochs, history)
            checkpoint["epoch_progress"] = stats["progress"]
            dist.save_on_main(resume_checkpoint(checkpoint, cfg), last_path)
            raise Preempted(f"stopped by {stop.name} after step {stats['stopped_at']} of {run.steps_per_epoch} in "
                            f"epoch {epoch + 1}: {last_path} holds the run; continue it with the same command and "
                            "train.resume=true", stop.received)
        with run.evaluated_weights():
            val, _ = evaluate(model, run.loaders["val"], run.loss_fn, device, run.dtype)
        score = monitored(val)
        improved = score > best
        best, bad_epochs = (score, 0) if improved else (best, bad_epochs + 1)
        history.append({
            "epoch": epoch + 1, "train_loss": dist.reduce_mean(stats["loss"], device),
            "train_parts": {k: dist.reduce_mean(v, device) for k, v in stats["parts"].items()},
            "lr": run.scheduler.get_last_lr(), "seconds": stats["seconds"],
            "samples_per_second": stats["samples"] * world / max(stats["seconds"], 1e-9),
            "data_wait_share": stats["data_wait"] / max(stats["seconds"], 1e-9), "val": val})
        checkpoint = run_checkpoint(cfg, run, epoch + 1, best, bad_epochs, history)
        if improved:  # best.pt before last.pt: a kill in between reruns this epoch, rewriting both
            dist.save_on_main(inference_checkpoint(checkpoint), best_path)
        dist.save_on_main(resume_checkpoint(checkpoint, cfg), last_path)
        row = history[-1]
        log.info("epoch %d/%d: train loss %.4f, val loss %.4f, val emotion weighted F1 %.4f%s "
                 "(%.1f samples/s, %.0f%% of the time waiting for data)", epoch + 1, cfg.train.epochs,
                 row["train_loss"], val["loss"], score, " (best)" if improved else "", row["samples_per_second"],
                 100 * row["data_wait_share"])
        if main:
            for name, value in (("val/loss", val["loss"]), ("val/emotion_weighted_f1", score),
                                ("train/epoch_loss", row["train_loss"])):
                writer.add_scalar(name, value, (epoch + 1) * run.steps_per_epoch)
            write_json(out_dir / "metrics.json", summary(history, best, None))
            plot_curves(history, out_dir / "curves.png")
        if epoch + 1 < cfg.train.epochs and stop.requested(device):  # the signal came in evaluation or saving
            raise Preempted(f"stopped by {stop.name} after epoch {epoch + 1}: {last_path} holds the run; continue "
                            "it with the same command and train.resume=true", stop.received)

    if main:
        model.load_state_dict(load_checkpoint(best_path)["model"])
    dist.broadcast_state(model)  # best.pt's weights on every rank, whether or not it can read the file
    final_split = "test" if "test" in run.loaders else "val"
    final, _ = evaluate(model, run.loaders[final_split], run.loss_fn, device, run.dtype)
    result = summary(history, best, final if final_split == "test" else None)
    if main:
        write_json(out_dir / "metrics.json", result)
        write_reports(out_dir, final, cfg.data.test_split if final_split == "test" else cfg.data.val_split)
        plot_curves(history, out_dir / "curves.png")
        writer.close()
        log.info("%s split with best.pt (epoch %s):\n%s", final_split, result["best_epoch"], format_report(final))
    return result


def parse_config(argv: Sequence[str] | None) -> Config:
    """The resolved config of the command line; a bad key or value exits with its message."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file (configs/*.yaml); dataclass defaults without it")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. train.epochs=5 data.cache_dir=cache")
    args = parser.parse_args(argv)
    try:
        return load_config(args.config, args.overrides)
    except ConfigError as err:
        parser.error(str(err))


# What a user's files can get wrong before training starts: a cache made with other
# parameters, a missing run to resume, a damaged or foreign checkpoint, absent weights, and
# settings this machine cannot run (train.amp=fp16 on a CPU).
STARTUP_ERRORS = (CacheMismatchError, CheckpointError, ConfigError, FileExistsError, FileNotFoundError,
                  WeightsError)


@record
def main(argv: Sequence[str] | None = None) -> dict:
    """Resolve the config, join the process group (under torchrun), train, leave the group."""
    cfg = parse_config(argv)
    dist.setup_logging()
    log.info("resolved config:\n%s", format_config(cfg))
    device = dist.init_distributed(cfg.train.device, cfg.train.dist_timeout_minutes)
    try:
        result = train(cfg, device)
    except STARTUP_ERRORS as err:  # the user's files or settings, not a bug: one line, no traceback
        log.error("%s", err)
        raise SystemExit(1) from None
    except NonFiniteError as err:  # stopped before a NaN reached the weights or a checkpoint
        log.error("training stopped: %s", err)
        raise SystemExit(1) from None
    except OSError as err:  # a full disk or a quota: the checkpoints written so far are whole
        if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        log.error("training stopped: %s", err)
        raise SystemExit(1) from None
    except Preempted as err:  # SIGTERM: last.pt written, resumable
        log.error("%s", err)
        dist.cleanup()
        raise SystemExit(err.status) from None
    dist.cleanup()
    return result


if __name__ == "__main__":
    main()

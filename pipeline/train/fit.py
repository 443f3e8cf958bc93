"""A training run from its resolved config: the epochs (from scratch or resumed from
``last.pt``), validation, checkpoints, and the final evaluation and reports. See
:mod:`pipeline.train` for what a run writes into ``output_dir``."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from pipeline.config import Config, dump_yaml, to_dict
from pipeline.metrics import format_report, plot_curves
from pipeline.model import CheckpointError, load_checkpoint
from pipeline.train import distributed as dist
from pipeline.train.checkpoint import config_changes, inference_checkpoint, restore, resume_checkpoint, run_checkpoint
from pipeline.train.guards import Preempted, RunLock, StopOnSignal, check_output_dir
from pipeline.train.loops import evaluate, train_one_epoch
from pipeline.train.probe import choose_regression_loss
from pipeline.train.run_outputs import MONITOR, monitored, summary, write_json, write_reports
from pipeline.train.session import Session, prepare

log = logging.getLogger(__name__)


def train(cfg: Config, device: torch.device) -> dict:
    """Train with the resolved ``cfg`` on ``device`` (inside an initialised process group
    under torchrun); returns the content of metrics.json."""
    out_dir = Path(cfg.output_dir)
    # Only rank 0 writes and reads output_dir; what the others need of it comes by broadcast,
    # so nodes without a shared filesystem agree (dist.from_main).
    dist.from_main(lambda: check_output_dir(out_dir, cfg.train.resume, cfg.train.overwrite))
    cfg, probe = choose_regression_loss(cfg, device, train)  # train.regression_loss=auto: two short runs first
    dist.seed_everything(cfg.train.seed)
    run = prepare(cfg, device)  # checks the caches first: a refused run leaves no output folder
    lock = RunLock(out_dir)
    dist.from_main(lock.acquire)  # one run per output_dir (refused on every rank)
    try:
        with StopOnSignal() as stop:
            return fit(cfg, run, stop, {"regression_loss_probe": probe} if probe else {})
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


def fit(cfg: Config, run: Session, stop: StopOnSignal, extra: dict | None = None) -> dict:
    """The epochs of a run, from scratch or resumed, then the final evaluation and reports;
    ``extra`` goes into metrics.json as it is."""
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
    ddp_model = dist.wrap_ddp(model, device)
    patience = cfg.train.early_stopping_patience
    log.info("training on %d samples (%d steps per epoch and rank, %d ranks), validating on %d%s, testing on %s",
             len(run.datasets["train"]), run.steps_per_epoch, world, len(run.datasets["val"]),
             f" and {len(run.datasets['holdout'])} held out of training" if "holdout" in run.datasets else "",
             len(run.datasets["test"]) if "test" in run.datasets else "none")
    for epoch in range(start_epoch, cfg.train.epochs):
        if patience and bad_epochs >= patience:
            log.info("early stopping: no better validation %s for %d epochs", ".".join(MONITOR), bad_epochs)
            break
        if 0 < cfg.train.unfreeze_after_epochs <= epoch and not unfrozen and "text" in model.encoders \
                and not cfg.data.embeddings_dir:
            model.encoders["text"].set_trainable_layers(0)
            ddp_model = dist.wrap_ddp(model, device)
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
            holdout = (evaluate(model, run.loaders["holdout"], run.loss_fn, device, run.dtype)[0]
                       if "holdout" in run.loaders else None)
        score = monitored(val)
        improved = score > best
        best, bad_epochs = (score, 0) if improved else (best, bad_epochs + 1)
        history.append({
            "epoch": epoch + 1, "train_loss": dist.reduce_mean(stats["loss"], device),
            "train_parts": {k: dist.reduce_mean(v, device) for k, v in stats["parts"].items()},
            "lr": run.scheduler.get_last_lr(), "seconds": stats["seconds"],
            "samples_per_second": stats["samples"] * world / max(stats["seconds"], 1e-9),
            "data_wait_share": stats["data_wait"] / max(stats["seconds"], 1e-9), "val": val})
        if holdout is not None:
            history[-1]["holdout"] = holdout
        replaced = run.augment.take_counts() if run.augment is not None else None
        if replaced is not None:  # this process's batches (each DDP rank draws its own)
            history[-1]["synonyms_replaced"] = replaced
            log.info("epoch %d: synonym replacement changed %d words in %d samples", epoch + 1, replaced["words"],
                     replaced["samples"])
        checkpoint = run_checkpoint(cfg, run, epoch + 1, best, bad_epochs, history)
        if improved:  # best.pt before last.pt: a kill in between reruns this epoch, rewriting both
            dist.save_on_main(inference_checkpoint(checkpoint), best_path)
        dist.save_on_main(resume_checkpoint(checkpoint, cfg), last_path)
        row = history[-1]
        log.info("epoch %d/%d: train loss %.4f, val loss %.4f, val emotion weighted F1 %.4f%s%s "
                 "(%.1f samples/s, %.0f%% of the time waiting for data)", epoch + 1, cfg.train.epochs,
                 row["train_loss"], val["loss"], score, " (best)" if improved else "",
                 "" if holdout is None else f", held-out emotion weighted F1 {monitored(holdout):.4f}",
                 row["samples_per_second"], 100 * row["data_wait_share"])
        if main:
            scalars = [("val/loss", val["loss"]), ("val/emotion_weighted_f1", score),
                       ("train/epoch_loss", row["train_loss"])]
            if holdout is not None:
                scalars.append(("holdout/emotion_weighted_f1", monitored(holdout)))
            for name, value in scalars:
                writer.add_scalar(name, value, (epoch + 1) * run.steps_per_epoch)
            write_json(out_dir / "metrics.json", {**summary(history, best, None), **(extra or {})})
            plot_curves(history, out_dir / "curves.png")
        if epoch + 1 < cfg.train.epochs and stop.requested(device):  # the signal came in evaluation or saving
            raise Preempted(f"stopped by {stop.name} after epoch {epoch + 1}: {last_path} holds the run; continue "
                            "it with the same command and train.resume=true", stop.received)

    if main:
        model.load_state_dict(load_checkpoint(best_path)["model"])
    dist.broadcast_state(model)  # best.pt's weights on every rank, whether or not it can read the file
    final_split = "test" if "test" in run.loaders else "val"
    final, _ = evaluate(model, run.loaders[final_split], run.loss_fn, device, run.dtype)
    result = {**summary(history, best, final if final_split == "test" else None), **(extra or {})}
    if main:
        write_json(out_dir / "metrics.json", result)
        write_reports(out_dir, final, cfg.data.test_split if final_split == "test" else cfg.data.val_split)
        plot_curves(history, out_dir / "curves.png")
        writer.close()
        log.info("%s split with best.pt (epoch %s):\n%s", final_split, result["best_epoch"], format_report(final))
    return result


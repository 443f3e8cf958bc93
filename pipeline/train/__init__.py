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
changes; one run at a time holds ``output_dir`` (``pipeline.train.guards``); a full disk stops
the run with one line and leaves the checkpoints written before it whole.

The stage's modules: ``cli`` (the command), ``fit`` (the epochs of a run), ``session`` (what a
run trains with), ``loading`` (caches, vectors and loaders), ``loops`` (one epoch, evaluation),
``losses``, ``optim`` (parameter groups, schedule, weight averaging), ``checkpoint``,
``distributed`` (torchrun), ``guards`` (preemption, one run per folder), ``run_outputs`` and
``probe`` (``train.regression_loss=auto``).
"""
from pipeline.train.cli import main

__all__ = ["main"]

"""Batch inference: ``python -m pipeline.infer --checkpoint RUN/best.pt --clips DIR|GLOB|LIST.txt``.

    python -m pipeline.infer --checkpoint RUN/best.pt [RUN2/best.pt ...] --clips DIR|GLOB|LIST.txt
        [--transcripts MELD.csv|CLIPS.csv] --out predictions.jsonl|.csv
        [--batch-size B] [--workers N] [--device auto|cpu|cuda|cuda:N] [--quantize int8]

Several checkpoints make an ensemble (``pipeline.infer.ensemble``): each decodes the clips as it
was trained, and a clip's row holds their class probabilities averaged.

Everything the model needs comes from the checkpoint: the architecture and weights, the
preprocessing parameters of the cache it was trained on (``ckpt["preprocess"]``) and the
tokenizer named there. Each clip goes through ``features.extract_features`` (the code that
built the training cache) and ``data.make_item`` + ``data.collate`` (the code that fed the
model in training and evaluation), so a clip gets the prediction evaluation gives it (up to
float rounding: batches are padded to their longest sample).

Clips (``pipeline.infer.clips``): a folder (its video and audio files, sorted by name; what it
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
when ``--out`` ends with ``.csv`` (``pipeline.infer.predictions``). Rows are streamed to
``OUT.partial`` as batches finish and the file is renamed to ``OUT`` at the end: a reader
never mistakes a killed run's output for a complete one, and the partial file still holds
every row done so far (a write that fails, on a full disk, stops the run with one error
line and leaves it cut back to its last whole row). Before any work, an ``--out`` that is one of the run's inputs (a clip, a
sidecar, the checkpoint, the transcripts, the list; links resolved) or a directory is
refused, and ``OUT.partial`` is locked (``fcntl.flock``): a second run with the same
``--out`` is refused while one writes.

``--quantize int8`` runs each model with dynamic INT8 linear layers on the CPU
(``pipeline.quantization``; refused on a GPU), and every row says so (``quantization``).

Decoding runs in a pool of long-lived worker processes (each loads the tokenizer once) fed
through a bounded window of clips in input order, while this process batches the decoded
clips and runs the model: decoding and the model overlap. The first batches go to the model
before they are full (1, 2, 4, ... clips) so that it starts at once (see ``batches``). On
the CPU the cores are split: ``--workers`` decode, the model gets the remaining cores as
torch threads.
"""
from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.config import ConfigError, PreprocessConfig, from_dict
from pipeline.data import meld
from pipeline.logs import setup_cli_logging

logger = logging.getLogger("pipeline.infer")  # messages name the command

PROG = "python -m pipeline.infer"


def format_metrics(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """``task: accuracy A  weighted F1 F  (n=N)`` per task with labels."""
    return "\n".join(f"{task}: accuracy {m['accuracy']:.4f}  weighted F1 {m['weighted_f1']:.4f}  (n={m['count']})"
                     for task, m in metrics.items())


def input_files(args: argparse.Namespace, clips: Sequence[Path]) -> list[Path]:
    """Every file this run reads: the checkpoint, the transcripts, the clip list, the clips
    and the sidecar transcripts next to them."""
    from pipeline.infer.transcripts import SIDECAR_EXTENSIONS

    files = [*args.checkpoint, *clips, *(clip.with_suffix(ext) for clip in clips for ext in SIDECAR_EXTENSIONS)]
    if args.transcripts is not None:
        files.append(args.transcripts)
    if Path(args.clips).is_file():
        files.append(Path(args.clips))
    return files


def read_member(path: Path) -> dict[str, Any]:
    """A checkpoint to predict with: loaded, finite, with its preprocessing parameters."""
    from pipeline.infer.predict import check_finite_weights
    from pipeline.model import CheckpointError, load_checkpoint

    ckpt = load_checkpoint(path)
    check_finite_weights(ckpt, path)
    if not isinstance(ckpt.get("preprocess"), Mapping):
        raise CheckpointError(f"{path} stores no preprocessing parameters (key 'preprocess')")
    return ckpt


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The options of the command, from light modules only (``--help`` imports no torch)."""
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Predict emotion and sentiment for every clip with a trained checkpoint.",
        epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--checkpoint", required=True, type=Path, nargs="+",
                        help="best.pt / last.pt of pipeline.train; several: an ensemble averaging their "
                             "probabilities (required)")
    parser.add_argument("--clips", required=True, help="folder, glob pattern, single clip or .txt list (required)")
    parser.add_argument("--transcripts", type=Path,
                        help="MELD CSV or clip,text CSV (default: .srt/.txt next to each clip)")
    parser.add_argument("--out", required=True, type=Path, help="predictions .jsonl (or .csv) (required)")
    parser.add_argument("--batch-size", type=int, default=16, help="clips per forward pass (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes (default: all cores on a GPU, half on the CPU; 0 = in this process)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    parser.add_argument("--quantize", choices=["int8"], default=None,
                        help="int8: dynamic INT8 quantization of the model's linear layers, on the CPU only "
                             "(default: off, the weights as trained)")
    return parser


def parse_args(argv: Sequence[str] | None, prog: str = PROG) -> argparse.Namespace:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers is not None and args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", args.device):
        parser.error(f"--device must be auto, cpu, cuda or cuda:N, got {args.device!r}")
    return args


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Command line; returns the exit status (0 also when some clips are error rows)."""
    setup_cli_logging()
    args = parse_args(argv, prog)
    import torch  # and the model, decoding and output modules: imported once the arguments hold

    from pipeline.execution import pick_device
    from pipeline.infer.clips import list_clips
    from pipeline.infer.decoding import DecodePool, in_dialogue_order, make_jobs
    from pipeline.infer.ensemble import check_members, ensemble_groups
    from pipeline.infer.predict import (Predictor, default_lookahead, default_workers, model_threads, run,
                                        write_rows)
    from pipeline.infer.predictions import OutputError, RowWriter, check_output
    from pipeline.infer.transcripts import InputError, read_transcripts
    from pipeline.model import CheckpointError
    from pipeline.quantization import QuantizeError

    try:
        device = pick_device(args.device)
    except RuntimeError:  # a CUDA device asked for where none is visible
        logger.error("--device %s: no CUDA device is visible; use --device cpu (or auto)", args.device)
        return 1
    try:
        writer = None
        checkpoints = [read_member(path) for path in args.checkpoint]
        clips = list_clips(args.clips)
        check_output(args.out, input_files(args, clips))
        predictors, member_jobs = [], []
        for path, ckpt in zip(args.checkpoint, checkpoints):  # each member's transcripts read with its context
            pcfg = from_dict(PreprocessConfig, dict(ckpt["preprocess"]), "preprocess")
            transcripts = (read_transcripts(args.transcripts, pcfg.text.context_turns, pcfg.text.context_after)
                           if args.transcripts is not None else None)
            jobs = make_jobs(clips, transcripts, [Path(args.clips)] if Path(args.clips).is_file() else [])
            predictors.append(Predictor(ckpt, device, args.quantize))
            member_jobs.append(in_dialogue_order(jobs) if predictors[-1].model.reads_dialogues else jobs)
            logger.info("checkpoint %s (epoch %s), %s model on %s", path, ckpt.get("epoch"),
                        "+".join(predictors[-1].modalities), device)
        check_members(predictors, args.checkpoint)
        # locks OUT.partial before any decoding; a quantized run's rows have one more column
        writer = RowWriter(args.out, predictors[0].labels, ["quantization"] if args.quantize else [])
        workers = default_workers(device) if args.workers is None else args.workers

        def open_pool(predictor: Predictor, count: int) -> DecodePool:
            return DecodePool(predictor.preprocess, min(workers, count),
                              default_lookahead(args.batch_size, workers)).start()

        pool = open_pool(predictors[0], len(member_jobs[0])) if len(predictors) == 1 else None
    except (CheckpointError, ConfigError, InputError, meld.MeldFormatError, OSError, OutputError,
            QuantizeError) as err:
        if writer is not None:
            writer.abandon()
        logger.error("%s", err)
        return 1
    if device.type == "cpu":
        torch.set_num_threads(model_threads(workers))
    logger.info("%d decoding workers%s", workers,
                f"; an ensemble of {len(predictors)} checkpoints" if len(predictors) > 1 else "")
    try:
        if pool is not None:
            with pool:
                summary = run(predictors[0], member_jobs[0], pool, args.out, args.batch_size, writer)
        else:
            summary = write_rows(ensemble_groups(predictors, member_jobs, open_pool, args.batch_size),
                                 len(member_jobs[0]), predictors[0].labels, args.out, writer)
    except OutputError as err:  # a full disk: one line, the partial file left with whole rows only
        logger.error("%s", err)
        return 1
    if summary["metrics"]:
        print("metrics over the labelled ok clips:\n" + format_metrics(summary["metrics"]))
    return 0

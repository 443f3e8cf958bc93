"""Training: ``python -m pipeline.train --config configs/X.yaml [key=value ...]``.

The command line of the stage (``torchrun --nproc_per_node=N -m pipeline.train ...`` under
DDP): the config resolved once, the process group joined, the run, one line for what a
user's files or settings got wrong. See :mod:`pipeline.train` for what a run writes.

The parser is built from light modules only, so ``--help`` answers without importing torch;
the trainer and torchrun's ``record`` (which writes the error file torchrun reports) are
imported after parsing."""
from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
from typing import Any, Sequence

from pipeline.config import Config, ConfigError, format_config, load_config

log = logging.getLogger("pipeline.train")  # messages name the command

PROG = "python -m pipeline.train"
DESCRIPTION = ("Train a model on a feature cache (or on embedding vectors): one process, or one per GPU under "
               "torchrun --nproc_per_node=N -m pipeline.train.")

# One line per top-level key of Config (tests check that every key has one).
SECTIONS = {
    "output_dir": "folder of the run: config.yaml, checkpoints, metrics, reports",
    "data": "the feature cache (or embeddings_dir vectors), splits, loader workers, sampling",
    "preprocess": "the feature parameters the cache was built with (checked against it)",
    "model": "modalities and the encoder, fusion, context and head sections (type: + options)",
    "train": "epochs, batch size, learning rates, losses, precision, device, seed, resume",
}


def sections_epilog() -> str:
    """The config keys of the command, one line each, for the end of ``--help``."""
    names = [f.name for f in dataclasses.fields(Config)]
    width = max(map(len, names))
    lines = [f"  {name:<{width}}  {SECTIONS.get(name, '')}".rstrip() for name in names]
    return ("config sections (complete examples in configs/*.yaml; every key and its default in\n"
            "pipeline/config/sections.py; --print-config shows the resolved result):\n" + "\n".join(lines))


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=sections_epilog())
    parser.add_argument("--config", help="YAML config file, e.g. configs/default.yaml "
                                         "(default: none, the dataclass defaults)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML (as the run writes config.yaml) and exit "
                             "without training (default: off)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides applied after --config, e.g. train.epochs=5 data.cache_dir=cache "
                             "(default: none)")
    return parser


def resolve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Config:
    """The config of ``--config`` and the overrides; a bad key or value exits with its message."""
    try:
        return load_config(args.config, args.overrides)
    except ConfigError as err:
        parser.error(str(err))


def startup_errors() -> tuple[type[BaseException], ...]:
    """What a user's files can get wrong before training starts: a cache made with other
    parameters, a missing run to resume, a damaged or foreign checkpoint, absent weights, and
    settings this machine cannot run (train.amp=fp16 on a CPU), an output folder taken by
    another run or holding a link where the run writes."""
    from encoders.weights import WeightsError
    from pipeline.data.cache import CacheMismatchError
    from pipeline.model import CheckpointError
    from pipeline.writing import UnsafeOutputError

    return (CacheMismatchError, CheckpointError, ConfigError, FileExistsError, FileNotFoundError,
            UnsafeOutputError, WeightsError)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any] | None:
    """Resolve the config; print it (``--print-config``, then ``None``) or join the process
    group (under torchrun), train, leave the group."""
    cfg = resolve(parser, args)
    if args.print_config:
        print(format_config(cfg))
        return None
    from pipeline.train import distributed as dist
    from pipeline.train.fit import train
    from pipeline.train.guards import Preempted
    from pipeline.train.loops import NonFiniteError

    dist.setup_logging()
    log.info("resolved config:\n%s", format_config(cfg))
    device = dist.init_distributed(cfg.train.device, cfg.train.dist_timeout_minutes)
    try:
        result = train(cfg, device)
    except startup_errors() as err:  # the user's files or settings, not a bug: one line, no traceback
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


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> dict[str, Any] | None:
    """The command: ``--help`` and usage errors answer from the parser alone; the rest runs
    under torchrun's ``record`` (a failed rank's traceback goes to its error file), applied
    here rather than at import so that the parser needs no torch."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(run)(parser, args)

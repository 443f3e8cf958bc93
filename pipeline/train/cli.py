"""Training: ``python -m pipeline.train --config configs/X.yaml [key=value ...]``.

The command line of the stage (``torchrun --nproc_per_node=N -m pipeline.train ...`` under
DDP): the config resolved once, the process group joined, the run, one line for what a
user's files or settings got wrong. See :mod:`pipeline.train` for what a run writes."""
from __future__ import annotations

import argparse
import errno
import logging
from typing import Sequence

from torch.distributed.elastic.multiprocessing.errors import record

from encoders.weights import WeightsError
from pipeline.config import Config, ConfigError, format_config, load_config
from pipeline.data.cache import CacheMismatchError
from pipeline.model import CheckpointError
from pipeline.train import distributed as dist
from pipeline.train.fit import train
from pipeline.train.guards import Preempted
from pipeline.train.loops import NonFiniteError
from pipeline.writing import UnsafeOutputError

log = logging.getLogger("pipeline.train")  # messages name the command


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
# settings this machine cannot run (train.amp=fp16 on a CPU), an output folder taken by another run or
# holding a link where the run writes.
STARTUP_ERRORS = (CacheMismatchError, CheckpointError, ConfigError, FileExistsError, FileNotFoundError,
                  UnsafeOutputError, WeightsError)


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


"""Embedding pass: ``python -m pipeline.embed``: each encoder runs once over every cached item.

    python -m pipeline.embed --config X.yaml [key=value ...] --cache CACHE --out EMB
    python -m pipeline.embed --checkpoint RUN/best.pt --cache CACHE --out EMB
        [--splits train,dev,test] [--batch-size 64] [--device auto|cpu|cuda:N] [--dtype float16|float32]
        [--amp auto|off]

``--config``: the model's encoders as the config builds them (frozen pretrained encoders:
e.g. the packaged MiniLM or a fetched all-mpnet-base-v2); ``--checkpoint``: the encoders of a
trained model (the two-stage recipe: fine-tune, embed, then train a dialogue model on the
vectors). Writes ``EMB/<split>/`` as :mod:`pipeline.data.embeddings` describes: pooled vectors per
modality (float16 [N, D], memory-mappable), masks, ids and ``meta.json``. An interrupted run
resumes where it stopped; a folder made by other encoders or from another cache is refused
with the differing keys. Then train on the vectors with ``data.embeddings_dir=EMB``.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from pipeline.config import ConfigError, config_from_dict, format_config, load_config
from pipeline.logs import setup_cli_logging

log = logging.getLogger("pipeline.embed")  # messages name the command

PROG = "python -m pipeline.embed"
DTYPE_NAMES = ("float16", "float32")  # the keys of pipeline.embed.encode.DTYPES (a test checks), without numpy


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The options of the command, from light modules only (``--help`` imports no torch)."""
    usage = ("%(prog)s (--config YAML [key=value ...] | --checkpoint CKPT) --cache CACHE --out EMB [options]\n"
             "       %(prog)s (--config YAML [key=value ...] | --checkpoint CKPT) --print-config")
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0], usage=usage,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="YAML whose model encoders embed (frozen pretrained encoders); "
                                         "one of --config and --checkpoint is required")
    source.add_argument("--checkpoint", type=Path, help="best.pt / last.pt whose trained encoders embed; "
                                                        "one of --config and --checkpoint is required")
    parser.add_argument("--cache", type=Path, help="feature cache folder (holding <split>/); required")
    parser.add_argument("--out", type=Path, help="embeddings folder (gets <split>/); required")
    parser.add_argument("--splits", default="", help="comma-separated (default: the config's train, val and "
                                                     "test splits that the cache has)")
    parser.add_argument("--batch-size", type=int, default=64, help="items per forward pass (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    parser.add_argument("--dtype", default="float16", choices=DTYPE_NAMES,
                        help="storage type of the vectors (default: %(default)s)")
    parser.add_argument("--amp", default="auto", choices=("auto", "off"),
                        help="precision of the encoders: auto computes in bf16 where the device does so natively "
                             "(GPUs from compute capability 8.0, CPUs with AMX or AVX512-BF16; fp16 on older GPUs), "
                             "off in float32 (default: %(default)s)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (of --config and the overrides, or the checkpoint's) "
                             "as YAML and exit without embedding (default: off)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, with --config only (default: none)")
    return parser


def parse_args(argv: Sequence[str] | None, prog: str = PROG) -> argparse.Namespace:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.checkpoint is not None and args.overrides:
        parser.error("key=value overrides apply to --config only; a checkpoint's config is what it was trained with")
    missing = [flag for flag in ("--cache", "--out") if getattr(args, flag[2:]) is None]
    if missing and not args.print_config:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    if not missing and args.out.resolve() == args.cache.resolve():
        parser.error("--out must not be the feature cache folder itself")
    return args


def print_config(args: argparse.Namespace) -> None:
    """Print the config the encoders would come from: ``--config`` with the overrides
    resolved, or the one stored in ``--checkpoint``."""
    if args.checkpoint is not None:
        from pipeline.model import load_checkpoint  # torch

        cfg = config_from_dict(load_checkpoint(args.checkpoint)["config"])
    else:
        cfg = load_config(args.config, args.overrides)
    print(format_config(cfg))


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    setup_cli_logging()
    args = parse_args(argv, prog)
    from encoders.text import ModelNotFoundError  # torch: imported once the arguments hold
    from encoders.weights import WeightsError
    from pipeline.data.cache import CacheMismatchError, CacheSplit
    from pipeline.embed.encode import embed_split, load_source
    from pipeline.execution import pick_device
    from pipeline.model import CheckpointError

    try:
        if args.print_config:
            print_config(args)
            return 0
        cfg, model, source = load_source(args)
        splits = ([s for s in args.splits.split(",") if s] if args.splits else
                  [s for s in (cfg.data.train_split, cfg.data.val_split, cfg.data.test_split)
                   if s and (args.cache / s / "meta.json").is_file()])
        if not splits:
            raise FileNotFoundError(f"{args.cache} holds no split of the config ({cfg.data.train_split}, "
                                    f"{cfg.data.val_split}, {cfg.data.test_split}); pass --splits")
        device = pick_device(args.device)
        model.to(device)
        sections = {m: cfg.model.encoders[m] for m in model.encoders}
        for split in splits:
            if not (args.cache / split / "meta.json").is_file():
                raise FileNotFoundError(f"no feature cache for split {split!r} in {args.cache / split}")
            cache = CacheSplit(args.cache / split)
            cache.check_params(source["preprocess"])
            if not cache.complete:
                raise CacheMismatchError(f"the cache {cache.split_dir} is incomplete: finish preprocessing first")
            state = embed_split(model, sections, source, cache, args.out / split, args.batch_size, device, args.dtype,
                                args.amp)
            log.info("%s: %s (%d vectors) in %s", split, state, len(cache.records), args.out / split)
    except (CacheMismatchError, CheckpointError, ConfigError, FileNotFoundError, ModelNotFoundError,
            WeightsError) as err:
        log.error("%s", err)
        return 1
    return 0

"""Preprocess raw MELD into the feature cache (see pipeline/data/cache.py for the layout).

    python -m pipeline.preprocess MELD_ROOT OUT_DIR [--splits train,dev,test] [--workers N]
        [--num-shards N --shard-id I] [--config YAML] [--csv-dir DIR]
        [--train-csv F] [--train-clips D] [--dev-csv F] ... [key=value ...]
    python -m pipeline.preprocess --merge OUT_DIR [--splits ...]

``key=value`` are Config overrides with full dotted keys (``preprocess.video.num_frames=4``);
only the ``preprocess`` section matters here. ``preprocess.modalities=[text]`` builds a
text-only cache from the CSVs alone, without any clip.

Each CSV row becomes one manifest row; a clip that is missing, empty or unreadable gives a
``skipped`` row with its reason (the run goes on), and a clip on disk that no row names
gives a ``skipped`` row with reason "no label". Finished ids are recorded one by one, so a
killed run resumes where it stopped and a finished one does nothing. With
``--num-shards N --shard-id I`` this process takes the ids whose hash falls in shard I;
shards may share OUT_DIR, and the last one to finish writes the manifest (``--merge``
does it explicitly).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path
from typing import Sequence

from pipeline.config import Config, ConfigError, format_config, from_dict, resolve_raw, to_dict
from pipeline.data import meld
from pipeline.logs import setup_cli_logging
from pipeline.workers import WorkerStartError

logger = logging.getLogger("pipeline.preprocess")  # messages name the command

PROG = "python -m pipeline.preprocess"

OVERRIDE = re.compile(r"^[A-Za-z_][\w]*(\.[\w]+)*=")  # a key=value among the positional arguments


def split_sources(args: argparse.Namespace, split: str, needs_clips: bool) -> tuple[Path, Path | None]:
    """(CSV, clip folder or None) of ``split`` from the flags or found under MELD_ROOT."""
    csv_path = getattr(args, f"{split}_csv") or meld.find_csv(args.meld_root, split, args.csv_dir)
    clips = getattr(args, f"{split}_clips")
    if needs_clips and clips is None:
        clips = meld.find_clip_dir(args.meld_root, split)
    if clips is not None and not Path(clips).is_dir():
        raise FileNotFoundError(f"clip folder {clips} does not exist")
    return Path(csv_path), Path(clips) if needs_clips else None


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The options of the command, from light modules only (``--help`` imports no torch)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Preprocess raw MELD (CSVs + clips) into the feature cache.",
        usage="%(prog)s MELD_ROOT OUT_DIR [options] [key=value ...]\n"
              "       %(prog)s --merge OUT_DIR [--splits ...]\n"
              "       %(prog)s --print-config [--config YAML] [key=value ...]")
    parser.add_argument("positional", nargs="*", metavar="MELD_ROOT OUT_DIR [key=value ...]",
                        help="MELD root (holding the CSVs and clip folders), output folder, "
                             "then Config overrides such as preprocess.video.num_frames=4 (default: no overrides)")
    parser.add_argument("--splits", default=",".join(meld.SPLITS),
                        help="comma-separated splits to preprocess (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes; 1 = in this process (default: one per CPU, here %(default)s)")
    parser.add_argument("--num-shards", type=int, default=1,
                        help="split the clips into this many shards, one per process or machine sharing "
                             "OUT_DIR (default: %(default)s)")
    parser.add_argument("--shard-id", type=int, default=0,
                        help="the shard this process takes, in [0, --num-shards) (default: %(default)s)")
    parser.add_argument("--config", help="YAML config file whose preprocess section is used "
                                         "(default: none, the dataclass defaults)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved preprocess section as YAML and exit without reading "
                             "any clip (default: off)")
    parser.add_argument("--csv-dir", help="folder holding the three CSVs (default: found under MELD_ROOT)")
    for split in meld.SPLITS:
        parser.add_argument(f"--{split}-csv", help=f"CSV of the {split} split (default: found under MELD_ROOT)")
        parser.add_argument(f"--{split}-clips",
                            help=f"clip folder of the {split} split (default: found under MELD_ROOT)")
    parser.add_argument("--merge", action="store_true",
                        help="only write the manifests of OUT_DIR's finished splits (default: off)")
    return parser


def parse_args(argv: Sequence[str] | None, prog: str = PROG) -> argparse.Namespace:
    parser = build_parser(prog)
    args = parser.parse_intermixed_args(argv)
    args.overrides = [item for item in args.positional if OVERRIDE.match(item)]
    paths = [Path(item) for item in args.positional if not OVERRIDE.match(item)]
    if args.print_config and not paths:
        args.meld_root = args.out_dir = None
    elif args.merge and len(paths) in (1, 2):
        args.meld_root, args.out_dir = None, paths[-1]
    elif len(paths) == 2:
        args.meld_root, args.out_dir = paths
    else:
        parser.error("expected MELD_ROOT OUT_DIR (or --merge OUT_DIR)")
    args.splits = [split.strip() for split in args.splits.split(",") if split.strip()]
    unknown = sorted(set(args.splits) - set(meld.SPLITS))
    if unknown or not args.splits:
        parser.error(f"--splits: unknown {unknown}; choose from {list(meld.SPLITS)}")
    if args.num_shards < 1 or not 0 <= args.shard_id < args.num_shards:
        parser.error(f"--shard-id must be in [0, --num-shards), got {args.shard_id} of {args.num_shards}")
    try:
        # Only the preprocess section is used: the model sections are not resolved, so a
        # text-only cache needs no model.modalities override.
        args.pcfg = from_dict(Config, resolve_raw(Config, args.config, args.overrides)).preprocess
    except ConfigError as err:
        parser.error(str(err))
    return args


def warn_shared_csvs(csvs: dict[str, Path]) -> None:
    """Say so when two splits read one CSV (the train CSV given as dev and test): a model
    would then be chosen and scored on its own training data."""
    splits = list(csvs)
    for i, split in enumerate(splits):
        for other in splits[i + 1:]:
            try:
                same = os.path.samefile(csvs[split], csvs[other])
            except OSError:
                continue
            if same:
                logger.warning("%s and %s read the same CSV (%s): a model validated or tested on it is scored "
                               "on the data it was trained on", split, other, csvs[split])


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    setup_cli_logging()
    args = parse_args(argv, prog)
    if args.print_config:
        print(format_config({"preprocess": to_dict(args.pcfg)}))
        return 0
    from pipeline.data import cache  # numpy, torch: imported once the arguments hold
    from pipeline.preprocess.run import NoSpaceError, Runner, merge, plan_split, preprocess_split

    if args.merge:
        return merge(args.out_dir, args.splits)
    pcfg = args.pcfg
    needs_clips = bool({"audio", "video"} & set(pcfg.modalities))
    if "text" in pcfg.modalities:
        from encoders.text import ModelNotFoundError, check_max_length  # seconds to import: not for --merge

        try:  # before any clip is read: a cache the text model cannot take is refused now, not mid-training
            check_max_length(pcfg.text.model, pcfg.text.max_length)
        except (ModelNotFoundError, OSError, ValueError) as err:
            logger.error("%s", err)
            return 1
    try:  # read every CSV first, so that a bad one stops the run before any work
        plans, csvs = {}, {}
        for split in args.splits:
            csv_path, clip_dir = split_sources(args, split, needs_clips)
            plans[split] = plan_split(split, csv_path, clip_dir, args.out_dir / split, pcfg)
            csvs[split] = csv_path
        warn_shared_csvs(csvs)
    except (FileNotFoundError, meld.MeldFormatError) as err:
        logger.error("%s", err)
        return 1
    try:
        runner = Runner(to_dict(pcfg), args.workers)
    except (OSError, ValueError) as err:  # the text model's tokenizer cannot be loaded
        logger.error("%s", err)
        return 1
    failed = True
    try:
        for split, (tasks, extras) in plans.items():
            preprocess_split(split, tasks, extras, args.out_dir / split, pcfg, runner,
                             args.num_shards, args.shard_id)
        failed = False
    except (cache.CacheMismatchError, NoSpaceError, WorkerStartError) as err:
        logger.error("%s", err)
        return 1
    finally:
        runner.close(failed)
    return 0

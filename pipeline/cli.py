"""``meld-fusion``: one command over the stages, ``meld-fusion STAGE [ARGS ...]``.

``meld-fusion train ARGS`` is ``python -m pipeline.train ARGS``: the same parser (its usage
names ``meld-fusion train``), the same run and the same exit status; likewise every stage.
``python -m pipeline`` runs this command too. ``--help`` and ``--version`` import no stage,
and each stage's ``--help`` imports no torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from importlib import metadata
from typing import Sequence

DISTRIBUTION = "meld-fusion"

# One line per stage for ``--help``; each is ``pipeline.<name>.cli.main(argv, prog=...)``.
STAGES = {
    "preprocess": "raw MELD (CSVs + clips) into the feature cache",
    "train": "train a model on a cache or on embeddings (torchrun for several GPUs)",
    "embed": "run the encoders once over a cache and store the vectors",
    "infer": "predict emotion and sentiment for clips with a trained checkpoint",
    "fetch": "install pretrained weights, verified, for offline use",
    "sample": "write a small MELD-shaped folder with learnable labels",
}


def version() -> str:
    """The installed version of the distribution (setup.cfg's ``version``)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The top-level parser: ``--help`` (the stages, one line each), ``--version`` and the
    error for an unknown stage. A stage's own arguments never reach it."""
    width = max(map(len, STAGES))
    stages = "\n".join(f"  {name:<{width}}  {line}" for name, line in STAGES.items())
    parser = argparse.ArgumentParser(
        prog=prog, usage=f"{prog} [-h] [--version] STAGE [ARGS ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Multimodal emotion recognition on MELD: preprocessing, training, embedding, inference.",
        epilog=f"stages:\n{stages}\n\n`{prog} STAGE --help` shows the options of a stage;\n"
               f"`{prog} STAGE ARGS` is `python -m pipeline.STAGE ARGS`.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}",
                        help="print the installed version and exit")
    parser.add_argument("stage", metavar="STAGE", choices=list(STAGES),
                        help="the stage to run (listed below), followed by its own arguments")
    return parser


def run_stage(name: str, argv: Sequence[str], prog: str) -> int:
    """``pipeline.<name>`` with ``argv``: its exit status (a stage whose ``main`` returns a
    result rather than a status, as train and sample do, ends with 0, as under ``python -m``)."""
    stage = importlib.import_module(f"pipeline.{name}.cli")
    status = stage.main(list(argv), prog=f"{prog} {name}")
    return status if isinstance(status, int) else 0


def main(argv: Sequence[str] | None = None, prog: str = "meld-fusion") -> int:
    """The console command; returns the exit status (argparse's errors exit with 2)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in STAGES:  # the stage's parser reads the rest verbatim
        return run_stage(argv[0], argv[1:], prog)
    args, rest = build_parser(prog).parse_known_args(argv)  # --help, --version, an error, or `-- STAGE`
    return run_stage(args.stage, rest, prog)

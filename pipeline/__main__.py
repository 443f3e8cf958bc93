"""``python -m pipeline STAGE [ARGS ...]``: the ``meld-fusion`` command."""
import sys

from pipeline.cli import main

sys.exit(main(prog="python -m pipeline"))

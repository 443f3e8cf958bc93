"""Logging set-up of the command-line tools (training's rank-aware set-up is in
``pipeline.train.distributed``)."""
from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_cli_logging() -> None:
    """INFO to stderr for a command-line tool, unless the caller (a test, a notebook, another
    tool) has configured logging already."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)

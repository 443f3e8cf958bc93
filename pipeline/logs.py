"""Logging set-up of the command-line tools (training's rank-aware set-up is in
``pipeline.train.distributed``)."""
from __future__ import annotations

import logging
import re

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Control characters other than newline and tab (a file name may hold ESC sequences that
# would move the cursor, recolour or retitle the user's terminal), and their C1 range.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class SafeFormatter(logging.Formatter):
    """Formats as ``LOG_FORMAT`` with control characters shown escaped (``\\x1b``), never raw."""

    def format(self, record: logging.LogRecord) -> str:
        return CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"),
                           super().format(record))


def configure(level: int = logging.INFO, force: bool = False) -> None:
    """``logging.basicConfig`` with :class:`SafeFormatter` on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=force)


def setup_cli_logging() -> None:
    """INFO to stderr for a command-line tool, unless the caller (a test, a notebook, another
    tool) has configured logging already."""
    if not logging.getLogger().handlers:
        configure()

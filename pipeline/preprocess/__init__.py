"""Preprocessing: raw MELD (CSVs and clips) into the feature cache.

``python -m pipeline.preprocess MELD_ROOT OUT_DIR [options] [key=value ...]``: ``cli`` (the
command), ``run`` (planning, the worker pool, manifests). The clips are read by
:mod:`pipeline.media`, the cache written by :mod:`pipeline.data.cache`.
"""
from pipeline.preprocess.cli import main

__all__ = ["main"]

"""Sample data: a small folder shaped exactly like MELD.Raw, with learnable labels.

``python -m pipeline.sample OUT_DIR``: ``cli`` (the command), ``folder`` (the whole folder),
``plan`` (the utterances and clips of a split), ``text`` (sentences and CSVs), ``render``
(voice and face drawn in numpy), ``clip`` (one ffmpeg call per clip).
"""
from pipeline.sample.cli import main
from pipeline.sample.folder import generate

__all__ = ["main", "generate"]

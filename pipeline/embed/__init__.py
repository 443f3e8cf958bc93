"""The embedding pass: each encoder runs once over every cached item.

``python -m pipeline.embed``: ``cli`` (the command), ``encode`` (the pass). The vectors are
stored as :mod:`pipeline.data.embeddings` describes and read by training.
"""
from pipeline.embed.cli import main

__all__ = ["main"]

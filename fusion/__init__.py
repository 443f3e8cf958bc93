"""Fusion modules (concat, attention), output heads (classification, regression, gated, moe)
and dialogue contexts over a dialogue's utterance vectors (none, gru, transformer).

A leaf package: it never imports ``pipeline`` or ``encoders``. ``FUSIONS``, ``HEADS`` and
``CONTEXTS`` map a config ``type:`` to a class with a ``Config`` dataclass.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from torch import nn

FUSIONS: dict[str, type[nn.Module]] = {}
HEADS: dict[str, type[nn.Module]] = {}
CONTEXTS: dict[str, type[nn.Module]] = {}


def register(registry: dict[str, type], name: str) -> Callable[[type], type]:
    """Class decorator: make ``cls`` buildable from ``registry`` as ``type: name``."""
    def add(cls: type) -> type:
        registry[name] = cls
        return cls
    return add


def check_probability(name: str, value: float) -> None:
    """Config check shared by every module here: a dropout-like ``value`` must lie in [0, 1)."""
    if not 0 <= value < 1:
        raise ValueError(f"{name}: must be in [0, 1), got {value}")


def _split(section: Mapping[str, Any], registry: Mapping[str, type]) -> tuple[type, Any]:
    fields = dict(section)
    cls = registry[fields.pop("type")]
    return cls, cls.Config(**fields)


def build_fusion(section: Mapping[str, Any], dims: Mapping[str, int]) -> nn.Module:
    """Fusion over modalities with pooled/sequence widths ``dims`` (modality -> dim)."""
    cls, cfg = _split(section, FUSIONS)
    return cls(dict(dims), cfg)


def build_head(section: Mapping[str, Any], in_dim: int, outputs: Mapping[str, int]) -> nn.Module:
    """Head from ``in_dim`` features to ``outputs`` (task -> size, e.g. emotion: 7)."""
    cls, cfg = _split(section, HEADS)
    return cls(in_dim, dict(outputs), cfg)


def build_context(section: Mapping[str, Any], dim: int) -> nn.Module:
    """Dialogue context over a dialogue's fused utterance vectors of width ``dim`` (fusion/dialogue.py)."""
    cls, cfg = _split(section, CONTEXTS)
    return cls(dim, cfg)


from fusion import attention, concat, dialogue, heads  # noqa: E402,F401  (registers the modules)

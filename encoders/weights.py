"""Reading pretrained weight files for the encoders: clear errors instead of silent random init."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

logger = logging.getLogger(__name__)


class WeightsError(RuntimeError):
    """A weights file exists but cannot be read, or does not fit the module it is meant for."""


def read_state_dict(path: str | Path, drop_prefixes: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """The state dict stored in ``path`` (``torch.load(weights_only=True)``, on the CPU).

    Accepts a bare state dict or one wrapped as ``{"state_dict": ...}`` / ``{"model": ...}``.
    Keys starting with any of ``drop_prefixes`` are left out (e.g. a classifier the
    encoder does not have).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError or EOFError for foreign files
        raise WeightsError(f"{path} is not a torch weights file readable with weights_only=True "
                           f"({type(err).__name__}: {err})") from err
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    prefixes = tuple(drop_prefixes)
    return {k: v for k, v in loaded.items() if not k.startswith(prefixes)}


def load_matching(module: nn.Module, state: dict[str, torch.Tensor], source: str, hint: str = "") -> None:
    """Load ``state`` into ``module`` strictly; on any key or shape difference raise a
    :class:`WeightsError` naming ``source`` and the differences (``hint`` says what fits)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = [f"{label} ({len(items)}): {_first(items)}"
                for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("shape mismatches", mismatched)) if items]
    if problems:
        raise WeightsError(f"weights in {source} do not fit {type(module).__name__}: "
                           + "; ".join(problems) + (f". {hint}" if hint else ""))
    module.load_state_dict(state)
    logger.info("loaded %d tensors from %s into %s", len(state), source, type(module).__name__)


def _first(items: list[str], shown: int = 5) -> str:
    more = f", ... {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more

"""Modality encoders: text (Hugging Face), audio (VGGish-style CNN on log-mel; Whisper or a
Hugging Face speech encoder on the waveform), video (ResNet per frame).

A leaf package: it never imports ``pipeline`` or ``fusion``. ``ENCODERS`` maps a config
``type:`` to a class with a ``Config`` dataclass; ``build(section)`` makes one.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from torch import nn

ENCODERS: dict[str, type[nn.Module]] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make ``cls`` buildable as ``type: name``."""
    def add(cls: type) -> type:
        ENCODERS[name] = cls
        return cls
    return add


def waveform_lengths(inputs: Mapping[str, Any]) -> Any:
    """Valid samples per clip, Long[B], of the waveform inputs of an audio encoder: their
    ``waveform_lengths``, the name a batch that also holds a log-mel (whose ``lengths`` count
    frames) gives them, else their ``lengths``."""
    return inputs["waveform_lengths"] if "waveform_lengths" in inputs else inputs["lengths"]


def check_pretrained_fields(freeze_layers: int, dropout: float) -> None:
    """Config checks shared by the pretrained encoders: ``freeze_layers`` >= -1 (-1 = all
    frozen) and an output ``dropout`` in [0, 1)."""
    if freeze_layers < -1:
        raise ValueError(f"freeze_layers: must be >= -1 (-1 = all), got {freeze_layers}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout: must be in [0, 1), got {dropout}")


def build(section: Mapping[str, Any], load_weights: bool = True) -> nn.Module:
    """Build the encoder of a config section ``{"type": name, **fields}``.

    ``load_weights=False`` skips reading pretrained weight files (when a checkpoint's
    state dict is about to replace them)."""
    fields = dict(section)
    cls = ENCODERS[fields.pop("type")]
    return cls(cls.Config(**fields), load_weights=load_weights)


from encoders import audio, text, video  # noqa: E402,F401  (registers the encoders)
from encoders import hf_audio, whisper  # noqa: E402,F401  (pretrained audio encoders on the waveform)

"""Component sections (``model.encoders.<m>``, ``model.fusion``, ``model.context``,
``model.head``): each is a dict whose ``type:`` selects a class of the ``encoders`` or
``fusion`` registry; it is checked against that class's own ``Config`` and stored with
every default filled in."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from pipeline.config.checking import ConfigError, from_dict, require, to_dict
from pipeline.config.sections import Config


# --------------------------------------------------------------------------- components
def resolve_components(cfg: Config) -> Config:
    """Validate every component section against its registered class's ``Config`` and fill
    in the defaults. Encoder fields that must agree with the cache are inherited from the
    preprocessing section when left unset: the text encoder's ``model`` (``""``) comes from
    ``preprocess.text.model``, the audio encoder's ``n_mels`` from ``preprocess.audio.n_mels``
    (a different explicit ``n_mels`` could never read the cache, so it is an error)."""
    import encoders
    import fusion

    model = cfg.model
    inherited = {"text": ("model", cfg.preprocess.text.model),
                 "audio": ("n_mels", cfg.preprocess.audio.n_mels)}
    resolved = {}
    for name, section in model.encoders.items():
        section = dict(section)
        key, value = inherited.get(name, (None, None))
        cls = encoders.ENCODERS.get(section.get("type"))
        if cls is not None and key in {f.name for f in dataclasses.fields(cls.Config)}:
            if section.get(key) in (None, ""):
                section[key] = value
            require(name != "audio" or section[key] == value, f"model.encoders.{name}.{key}",
                    f"is {section[key]} but the cache has preprocess.audio.n_mels={value}")
        resolved[name] = _resolve_component(encoders.ENCODERS, section, f"model.encoders.{name}")
    model.encoders = resolved
    model.fusion = _resolve_component(fusion.FUSIONS, model.fusion, "model.fusion")
    model.context = _resolve_component(fusion.CONTEXTS, model.context, "model.context")
    model.head = _resolve_component(fusion.HEADS, model.head, "model.head")
    unread = [m for m in model.modalities if m not in cfg.preprocess.modalities]
    require(not unread, "model.modalities",
            f"{unread} not in preprocess.modalities {cfg.preprocess.modalities}")
    check_combinations(cfg)
    return cfg


def check_combinations(cfg: Config) -> None:
    """Settings that are valid alone but cannot work together."""
    import encoders

    audio = cfg.model.encoders.get("audio")
    if "audio" in cfg.model.modalities and audio is not None:
        reads_waveform = getattr(encoders.ENCODERS[audio["type"]], "reads_waveform", False)
        require(not reads_waveform or cfg.preprocess.audio.waveform, "model.encoders.audio.type",
                f"{audio['type']} reads the waveform, which the cache holds only when it is made with "
                "preprocess.audio.waveform=true: set that (and preprocess into a new cache folder)")
    dialogues = cfg.model.context["type"] != "none"
    require(not (dialogues and cfg.data.balanced_sampler), "data.balanced_sampler",
            "cannot be combined with a dialogue model (model.context), whose batches are whole dialogues; "
            "use train.class_weighting for the imbalance")
    require(not (dialogues and cfg.data.group_by_length), "data.group_by_length",
            "cannot be combined with a dialogue model (model.context), whose batches are whole dialogues")
    require(not cfg.data.embeddings_dir or cfg.model.fusion["type"] == "concat", "model.fusion.type",
            f"data.embeddings_dir holds one pooled vector per modality, which only concat fusion reads; "
            f"got {cfg.model.fusion['type']!r}: set model.fusion.type=concat")


def _resolve_component(registry: Mapping[str, type], section: Mapping[str, Any], path: str) -> dict:
    section = dict(section)
    kind = section.pop("type", None)
    if kind not in registry:
        raise ConfigError(f"{path}.type: {kind!r} is not one of {sorted(registry)}")
    checked = from_dict(registry[kind].Config, section, path)
    return {"type": kind, **to_dict(checked)}


"""Reading the encoder of a Hugging Face Whisper folder (``save_pretrained`` layout, e.g. a
snapshot of ``openai/whisper-small``) as ``WhisperEncoder`` tensors, without building the model.

The folder holds ``config.json`` (``model_type: whisper``) and the weights: ``model.safetensors``,
its shards (``model.safetensors.index.json``) or ``pytorch_model.bin``. They may be saved from
``WhisperForConditionalGeneration`` (keys ``model.encoder.*``), ``WhisperModel`` or
``WhisperForAudioClassification`` (``encoder.*``), or a bare ``WhisperEncoder``; only the
encoder's tensors are read (from safetensors, the decoder is never loaded).
"""
from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from encoders.weights import WeightsError, read_state_dict

# Where the encoder sits in the saved models, outermost first: conv1.weight marks it.
ENCODER_PREFIXES = ("model.encoder.", "encoder.", "")


def read_hf_config(folder: Path) -> dict[str, Any]:
    """The ``config.json`` of Hugging Face Whisper folder ``folder``; :class:`WeightsError`
    when it is missing, unreadable or not a Whisper model's."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise WeightsError(f"{folder} holds no readable config.json (a Hugging Face Whisper folder has one): "
                           f"{err}") from err
    if not isinstance(config, dict) or config.get("model_type") != "whisper":
        kind = config.get("model_type") if isinstance(config, dict) else None
        raise WeightsError(f"{folder}/config.json is a {kind!r} model, not a Whisper model (model_type: whisper)")
    return config


def weight_files(folder: Path) -> list[Path]:
    """The files holding the weights of ``folder``, by Hugging Face's order of preference.
    Only the unsuffixed names count: ``model.fp16.safetensors`` beside ``model.safetensors``
    holds the same weights again."""
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as err:
            raise WeightsError(f"{index} is not a readable safetensors index: {err}") from err
        return [folder / shard for shard in shards]
    if (folder / "pytorch_model.bin").is_file():
        return [folder / "pytorch_model.bin"]
    raise WeightsError(f"{folder} holds no Whisper weights: no model.safetensors, model.safetensors.index.json "
                       "or pytorch_model.bin")


def read_hf_encoder_state(folder: Path) -> dict[str, torch.Tensor]:
    """The encoder tensors of the Whisper folder ``folder`` under ``WhisperEncoder`` keys
    (``conv1.weight``, ``layers.0.fc1.bias``, ...), as float32."""
    from safetensors import SafetensorError, safe_open

    files = weight_files(folder)
    if files[0].suffix == ".bin":
        state = read_state_dict(files[0])
        prefix = encoder_prefix(state, folder)
    else:
        with ExitStack() as stack:
            try:
                handles = [stack.enter_context(safe_open(str(path), framework="pt")) for path in files]
            except (OSError, SafetensorError) as err:
                raise WeightsError(f"cannot read the safetensors weights of {folder}: {err}") from err
            names = {name: handle for handle in handles for name in handle.keys()}
            prefix = encoder_prefix(names, folder)
            state = {name: handle.get_tensor(name) for name, handle in names.items() if name.startswith(prefix)}
    return {name[len(prefix):]: value.float() if value.is_floating_point() else value
            for name, value in state.items() if name.startswith(prefix)}


def encoder_prefix(names: dict[str, Any], folder: Path) -> str:
    """The key prefix of the encoder among ``names`` (see :data:`ENCODER_PREFIXES`)."""
    for prefix in ENCODER_PREFIXES:
        if f"{prefix}conv1.weight" in names:
            return prefix
    raise WeightsError(f"the weights of {folder} hold no Whisper encoder (no conv1.weight under "
                       f"{', '.join(repr(p) for p in ENCODER_PREFIXES[:-1])} or at the top)")

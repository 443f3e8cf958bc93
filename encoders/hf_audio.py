"""Audio encoder: a Hugging Face speech encoder of the wav2vec2 family over the raw waveform
(wav2vec2, HuBERT, WavLM, data2vec-audio), by hub name or local folder. A Whisper model
(``openai/whisper-small``) is accepted too: it is built as ``type: whisper``'s encoder
(:class:`encoders.whisper.WhisperAudioEncoder`) with the sizes of its config.json.

Names resolve offline only (:func:`resolve_audio_model`): a folder, or a snapshot already in
the Hugging Face cache; nothing is ever downloaded. The waveform is prepared as the model's
feature extractor (``preprocessor_config.json``) says: zero-mean unit-variance per clip when
``do_normalize``, an attention mask when ``return_attention_mask``. Models trained without an
attention mask (the group-norm ones, e.g. wav2vec2-base, hubert-base) would see zero padding
shift their group-norm statistics and attention, so each of their clips is encoded alone; a
clip's outputs are thus the same alone or in any batch, for every model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from encoders import ENCODERS, check_pretrained_fields, register, waveform_lengths

SAMPLE_RATE = 16_000
# Training-time noise that would leave parameters without gradients in a step (layers
# skipped by LayerDrop, SpecAugment's mask embedding), which DistributedDataParallel rejects.
NO_TRAINING_NOISE = {"layerdrop": 0.0, "apply_spec_augment": False, "mask_time_prob": 0.0,
                     "mask_feature_prob": 0.0}


class AudioModelNotFoundError(FileNotFoundError):
    """An audio model name is neither a folder nor in the local Hugging Face cache."""


def resolve_audio_model(name: str, key: str = "model") -> str:
    """The local folder holding Hugging Face speech model ``name``: an existing folder as is,
    any other name looked up in the Hugging Face cache with ``local_files_only=True``.
    ``key`` is the config field that names the model (for the error message)."""
    if not name:
        raise AudioModelNotFoundError("hf_audio needs model: a Hugging Face speech encoder's name "
                                      "(e.g. facebook/wav2vec2-base) or a local folder")
    folder = Path(name).expanduser()
    if folder.is_dir():
        return str(folder)
    if name.startswith(("/", ".", "~")):
        raise AudioModelNotFoundError(f"audio model folder {folder} does not exist")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return snapshot_download(name, local_files_only=True)
    except (HFValidationError, OSError) as err:  # not cached (LocalEntryNotFoundError) or not a repo id
        raise AudioModelNotFoundError(
            f"audio model {name!r} is not a folder and not in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}); models are never downloaded during a run. Download it once "
            f"with `huggingface-cli download {name}` (needs network), then rerun; or set {key} to a "
            f"local folder holding config.json, the weights and, for a wav2vec2-style model, "
            f"preprocessor_config.json (`{key}: /path/to/folder`). Cause: {err}") from err


@register("hf_audio")
class HFAudioEncoder(nn.Module):
    """Hugging Face speech encoder over the waveform.

    Input ``{"waveform": Float[B,S] (16 kHz mono), "lengths": Long[B] (valid samples),
    "mask": Bool[B] (clip present)}`` (``waveform_lengths`` instead of ``lengths`` where a
    batch also holds a log-mel, see :func:`encoders.waveform_lengths`); output ``sequence``
    [B,L,D] (the last hidden states, one per 20 ms for wav2vec2-style strides, L from S),
    ``sequence_mask`` [B,L] (frames inside a present clip) and ``pooled`` [B,D], the mean
    over valid frames.
    """

    reads_waveform = True  # the cache must store the waveform (preprocess.audio.waveform)

    @dataclass
    class Config:
        model: str = ""  # HF name (e.g. facebook/wav2vec2-base, openai/whisper-small) or folder, resolved offline
        freeze_layers: int = 0  # feature encoder + bottom N transformer layers frozen; -1 = all frozen
        dropout: float = 0.1  # on the encoder outputs (pooled and sequence)
        pretrained: bool = True  # False = random init from the model's config (tests, ablations)

        def __post_init__(self) -> None:
            check_pretrained_fields(self.freeze_layers, self.dropout)

    def __new__(cls, cfg: Config | None = None, load_weights: bool = True) -> nn.Module:
        """A Whisper model (config.json ``model_type: whisper``) is built as type whisper's
        encoder (:meth:`encoders.whisper.WhisperAudioEncoder.from_hf_folder`), with the sizes its
        config.json gives: the same forward pass (no padding to 30 s), the same checkpoint keys.
        Any other model is this class. (``cfg`` is None where copy or pickle recreate an instance.)"""
        if cfg is not None:
            folder = Path(resolve_audio_model(cfg.model))
            if model_type(folder) == "whisper":
                whisper = ENCODERS["whisper"]  # by the registry: encoders.whisper imports this module
                return whisper.from_hf_folder(folder, load_weights, freeze_layers=cfg.freeze_layers,
                                              dropout=cfg.dropout, pretrained=cfg.pretrained)
        return super().__new__(cls)

    def __init__(self, cfg: Config, load_weights: bool = True) -> None:
        """``load_weights=False`` builds the architecture only (the caller loads a checkpoint)."""
        super().__init__()
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

        self.cfg = cfg
        folder = resolve_audio_model(cfg.model)
        config = AutoConfig.from_pretrained(folder)
        for key, value in NO_TRAINING_NOISE.items():
            if hasattr(config, key):
                setattr(config, key, value)
        if cfg.pretrained and load_weights:
            self.model = AutoModel.from_pretrained(folder, config=config, dtype=torch.float32)
        else:
            self.model = AutoModel.from_config(config)
        if not all(hasattr(self.model, name) for name in ("feature_extractor", "feature_projection", "encoder",
                                                          "_get_feat_extract_output_lengths")):
            raise ValueError(f"hf_audio reads speech encoders of the wav2vec2 family (wav2vec2, HuBERT, WavLM, "
                             f"data2vec-audio) and Whisper; {cfg.model} is a {type(self.model).__name__}")
        try:
            extractor = AutoFeatureExtractor.from_pretrained(folder)
        except OSError as err:
            raise AudioModelNotFoundError(f"audio model {cfg.model} has no feature extractor config "
                                          f"(preprocessor_config.json in {folder}): {err}") from err
        if extractor.sampling_rate != SAMPLE_RATE:
            raise ValueError(f"audio model {cfg.model} expects {extractor.sampling_rate} Hz audio; the "
                             f"waveform is {SAMPLE_RATE} Hz")
        self.normalize = bool(getattr(extractor, "do_normalize", False))
        self.attention_mask = bool(getattr(extractor, "return_attention_mask", False))
        self.min_samples = receptive_field(config.conv_kernel, config.conv_stride)
        self.pretrained = cfg.pretrained
        self.out_dim: int = config.hidden_size
        self.dropout = nn.Dropout(cfg.dropout)
        self.set_trainable_layers(cfg.freeze_layers)

    def set_trainable_layers(self, freeze_layers: int) -> None:
        """Freeze the input block (convolutional feature encoder, feature projection,
        positional convolution) and the bottom ``freeze_layers`` transformer layers (-1:
        everything, 0: nothing); progressive unfreezing calls this again with 0."""
        model = self.model
        layers = model.encoder.layers
        if freeze_layers > len(layers):
            raise ValueError(f"freeze_layers: {freeze_layers} is more than the model's {len(layers)} layers")
        model.requires_grad_(freeze_layers != -1)
        if freeze_layers > 0:
            inputs = [model.feature_extractor, model.feature_projection, model.encoder.pos_conv_embed]
            if not getattr(model.config, "do_stable_layer_norm", False):
                inputs.append(model.encoder.layer_norm)  # applied before the layers (after them when stable)
            for module in [*inputs, *layers[:freeze_layers]]:
                module.requires_grad_(False)
        # The feature encoder makes its input require grad while training (for checkpointing),
        # which would backpropagate through it even when frozen.
        model.feature_extractor._requires_grad = any(p.requires_grad for p in model.feature_extractor.parameters())

    def enable_gradient_checkpointing(self) -> None:
        """Recompute layer activations in the backward pass (less memory, slower)."""
        self.model.activation_checkpointing_enable()

    def prepare(self, waveform: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The model's input values: samples past ``lengths`` zeroed, each clip normalised over
        its valid samples when the feature extractor does: ``(x - mean) / sqrt(var + 1e-7)``."""
        valid = torch.arange(waveform.shape[1], device=waveform.device) < lengths.unsqueeze(1)
        waveform = waveform.float().masked_fill(~valid, 0.0)
        if self.normalize:
            count = lengths.unsqueeze(1).to(waveform.dtype)
            mean = waveform.sum(1, keepdim=True) / count
            variance = ((waveform - mean).masked_fill(~valid, 0.0).pow(2)).sum(1, keepdim=True) / count
            waveform = ((waveform - mean) / torch.sqrt(variance + 1e-7)).masked_fill(~valid, 0.0)
        return waveform

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        waveform = inputs["waveform"]
        batch = waveform.shape[0]
        if waveform.shape[1] < self.min_samples:
            waveform = nn.functional.pad(waveform, (0, self.min_samples - waveform.shape[1]))
        present = inputs.get("mask", torch.ones(batch, dtype=torch.bool, device=waveform.device))
        # A clip shorter than the receptive field is read with silence up to it (one frame).
        lengths = waveform_lengths(inputs).clamp(min=self.min_samples, max=waveform.shape[1])
        values = self.prepare(waveform, lengths)
        frames = self.model._get_feat_extract_output_lengths(lengths).long()
        length = int(self.model._get_feat_extract_output_lengths(torch.tensor(waveform.shape[1])))
        if self.attention_mask:
            mask = (torch.arange(values.shape[1], device=values.device) < lengths.unsqueeze(1)).long()
            sequence = self.model(values, attention_mask=mask).last_hidden_state
        else:
            sequence = self.encode_one_by_one(values, lengths, present, length)
        valid = torch.arange(length, device=sequence.device) < frames.unsqueeze(1)
        sequence_mask = valid & present.unsqueeze(1)
        sequence = sequence.masked_fill(~sequence_mask.unsqueeze(-1), 0.0)
        weights = sequence_mask.unsqueeze(-1).to(sequence.dtype)
        pooled = (sequence * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return {"pooled": self.dropout(pooled), "sequence": self.dropout(sequence),
                "sequence_mask": sequence_mask}

    def encode_one_by_one(self, values: torch.Tensor, lengths: torch.Tensor, present: torch.Tensor,
                          length: int) -> torch.Tensor:
        """The last hidden states [B, length, D] of each present clip encoded alone over its
        valid samples (zeros elsewhere). With no clip present the first still runs, so every
        parameter stays in the graph (DistributedDataParallel needs that)."""
        run = present.tolist()
        if not any(run):
            run[0] = True
        hidden = {index: self.model(values[index:index + 1, :samples]).last_hidden_state[0]
                  for index, samples in enumerate(lengths.tolist()) if run[index]}
        padding = next(iter(hidden.values())).new_zeros(length, self.out_dim)
        return torch.stack([torch.cat([hidden[index], padding[len(hidden[index]):]]) if index in hidden
                            else padding for index in range(len(values))])


def model_type(folder: Path) -> str | None:
    """The ``model_type`` of the config.json in ``folder``; None when there is none to read."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config.get("model_type") if isinstance(config, dict) else None


def receptive_field(kernels: tuple[int, ...], strides: tuple[int, ...]) -> int:
    """Samples that one output frame of a stack of unpadded convolutions reads (400 for
    wav2vec2's feature encoder): the shortest input that gives one frame."""
    field = 1
    for kernel, stride in zip(reversed(kernels), reversed(strides)):
        field = (field - 1) * stride + kernel
    return field

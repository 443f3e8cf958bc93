"""Audio encoder: the encoder of OpenAI's Whisper over the raw 16 kHz waveform.

The network is transformers' ``WhisperEncoder``; its weights come from a faster-whisper
folder (``python -m pipeline.fetch whisper-base``), whose ``model.bin`` is a CTranslate2
model file, converted here to ``WhisperEncoder`` keys (:func:`convert_ctranslate2_encoder`),
or from a Hugging Face Whisper folder or hub name (``openai/whisper-small``, resolved offline:
a folder or the local Hugging Face cache), whose encoder tensors already have those keys
(:mod:`encoders.whisper_hf`). Both run the same forward pass below.
The 80-bin log-mel frontend runs in torch on the batch (:class:`WhisperLogMel`). Clips are
not padded to Whisper's 30 s window: only the positions a clip needs are computed, and
padding never reaches a clip's valid outputs (frames past a clip's end are zeroed before each
convolution and masked in attention), so a clip encodes the same alone or in any batch.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torchaudio
from torch import nn

from encoders import check_pretrained_fields, register, waveform_lengths
from encoders.ctranslate2 import read_model
from encoders.hf_audio import resolve_audio_model
from encoders.models_home import ModelNotInstalledError, canonical_name, fetch_command, require_model
from encoders.weights import WeightsError, load_matching
from encoders.whisper_hf import read_hf_config, read_hf_encoder_state

DEFAULT_WEIGHTS = "whisper-base"
SAMPLE_RATE = 16_000
N_FFT = 400  # 25 ms window
HOP = 160  # 10 ms: 100 frames per second; the encoder halves that (stride-2 convolution)
MAX_POSITIONS = 1500  # Whisper's positional table: 3000 frames, 30 s
MAX_SAMPLES = 2 * MAX_POSITIONS * HOP


class WhisperLogMel(nn.Module):
    """Whisper's log-mel spectrogram (as ``WhisperFeatureExtractor``: periodic Hann window,
    power spectrum, Slaney mel filters 0-8 kHz, ``log10`` clamped at 1e-10, floored at 8
    below the clip's maximum, ``(x + 4) / 4``), computed on a padded batch.

    Each clip is read as if zero-padded, like Whisper pads to 30 s; its maximum is taken over
    its own frames, and frames past its end are zero, so padding never changes its features.
    """

    def __init__(self, num_mel_bins: int = 80) -> None:
        super().__init__()
        with torch.device("cpu"):  # computed, even when the model is built on the meta device
            filters = torchaudio.functional.melscale_fbanks(
                n_freqs=N_FFT // 2 + 1, f_min=0.0, f_max=8000.0, n_mels=num_mel_bins,
                sample_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney")
        # Not persistent: derived from constants, so checkpoints do not carry them.
        self.register_buffer("mel_filters", filters, persistent=False)  # [freqs, mels]
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    @staticmethod
    def num_frames(samples: torch.Tensor) -> torch.Tensor:
        """Frames of clips of ``samples`` samples: one per hop started inside the clip, at least one."""
        return torch.div(samples + HOP - 1, HOP, rounding_mode="floor").clamp(min=1)

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``waveform`` Float[B,S] at 16 kHz, ``lengths`` Long[B] valid samples ->
        (log-mel Float[B, mels, T] with T = ceil(S / 160), frames Long[B] valid per clip)."""
        samples = waveform.shape[1]
        valid = torch.arange(samples, device=waveform.device) < lengths.unsqueeze(1)
        # The zeros appended reach past the last window, so the STFT's reflect padding on the
        # right only ever mirrors zeros, as in Whisper's zero-padded 30 s window.
        waveform = nn.functional.pad(waveform.float().masked_fill(~valid, 0.0), (0, N_FFT // 2))
        frames_total = max(1, -(-samples // HOP))
        stft = torch.stft(waveform, N_FFT, HOP, window=self.window, center=True, pad_mode="reflect",
                          return_complex=True)[..., :frames_total]
        mel = self.mel_filters.T @ stft.abs().pow(2)  # [B, mels, T]
        log_mel = mel.clamp(min=1e-10).log10()
        frames = self.num_frames(lengths)
        frame_valid = (torch.arange(frames_total, device=waveform.device) < frames.unsqueeze(1)).unsqueeze(1)
        peak = log_mel.masked_fill(~frame_valid, float("-inf")).amax(dim=(1, 2), keepdim=True)
        log_mel = (torch.maximum(log_mel, peak - 8.0) + 4.0) / 4.0
        return log_mel.masked_fill(~frame_valid, 0.0), frames


@register("whisper")
class WhisperAudioEncoder(nn.Module):
    """Whisper's encoder over the waveform.

    Input ``{"waveform": Float[B,S] (16 kHz mono), "lengths": Long[B] (valid samples),
    "mask": Bool[B] (clip present)}`` (``waveform_lengths`` instead of ``lengths`` where a
    batch also holds a log-mel, see :func:`encoders.waveform_lengths`); only the first 30 s
    of a clip are encoded. Output ``sequence`` [B,L,D] (one vector per 20 ms, L = ceil(S / 320)),
    ``sequence_mask`` [B,L] (positions inside a present clip) and ``pooled`` [B,D], the mean
    over valid positions.
    """

    reads_waveform = True  # the cache must store the waveform (preprocess.audio.waveform)

    @dataclass
    class Config:
        # "" = whisper-base in the models home (installed by `python -m pipeline.fetch whisper-base`);
        # or a folder holding a CTranslate2 model.bin (faster-whisper layout), or the file itself;
        # or a Hugging Face Whisper folder (config.json + model.safetensors) or hub name in the
        # local Hugging Face cache (e.g. openai/whisper-small). Never downloaded.
        weights: str = ""
        freeze_layers: int = 0  # convolutions + bottom N transformer layers frozen; -1 = all frozen
        dropout: float = 0.1  # on the encoder outputs (pooled and sequence)
        pretrained: bool = True  # False = random init of the architecture below (tests, ablations)
        # The architecture (defaults: whisper-base); the weights must have these sizes (an error
        # names the ones that fit). They live here so a checkpoint rebuilds without the weights.
        d_model: int = 512
        encoder_layers: int = 6
        encoder_attention_heads: int = 8
        encoder_ffn_dim: int = 2048
        num_mel_bins: int = 80

        def __post_init__(self) -> None:
            check_pretrained_fields(self.freeze_layers, self.dropout)
            if self.freeze_layers > self.encoder_layers:
                raise ValueError(f"freeze_layers: {self.freeze_layers} is more than the model's "
                                 f"{self.encoder_layers} layers")
            for name in ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "num_mel_bins"):
                if getattr(self, name) < 1:
                    raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
            if self.d_model % self.encoder_attention_heads:
                raise ValueError(f"d_model: {self.d_model} is not divisible by encoder_attention_heads="
                                 f"{self.encoder_attention_heads}")

    def __init__(self, cfg: Config, load_weights: bool = True) -> None:
        """``load_weights=False`` builds the architecture only (the caller loads a checkpoint)."""
        super().__init__()
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        self.cfg = cfg
        config = WhisperConfig(d_model=cfg.d_model, encoder_layers=cfg.encoder_layers,
                               encoder_attention_heads=cfg.encoder_attention_heads,
                               encoder_ffn_dim=cfg.encoder_ffn_dim, num_mel_bins=cfg.num_mel_bins,
                               max_source_positions=MAX_POSITIONS)
        config._attn_implementation = "sdpa"  # forward passes a boolean key mask, which SDPA reads
        self.model = WhisperEncoder(config)
        self.log_mel = WhisperLogMel(cfg.num_mel_bins)
        self.pretrained = cfg.pretrained
        self.out_dim: int = cfg.d_model
        if cfg.pretrained and load_weights:
            path = resolve_weights(cfg.weights)
            if path.is_dir():  # a Hugging Face folder; its config.json first, to say what it is
                heads = hf_architecture(path)["encoder_attention_heads"]
                state = read_hf_encoder_state(path)
            else:
                state, heads = read_whisper_encoder(path)
            if heads != cfg.encoder_attention_heads:
                raise WeightsError(f"weights in {path} have {heads} attention heads but the encoder is built "
                                   f"with encoder_attention_heads={cfg.encoder_attention_heads}. "
                                   + architecture_hint(state, heads))
            load_matching(self.model, state, str(path), architecture_hint(state, heads))
        self.dropout = nn.Dropout(cfg.dropout)
        self.set_trainable_layers(cfg.freeze_layers)

    @classmethod
    def from_hf_folder(cls, folder: str | Path, load_weights: bool = True, **fields) -> WhisperAudioEncoder:
        """The encoder of the Hugging Face Whisper folder ``folder``, with the sizes of its
        config.json; ``fields`` are the other Config fields (type hf_audio builds Whisper so)."""
        return cls(cls.Config(weights=str(folder), **fields, **hf_architecture(Path(folder))), load_weights)

    def set_trainable_layers(self, freeze_layers: int) -> None:
        """Freeze the convolutions and the bottom ``freeze_layers`` layers (-1: everything,
        0: nothing); progressive unfreezing calls this again with 0. The sinusoidal positional
        table stays frozen, as in Whisper."""
        layers = self.model.layers
        if freeze_layers > len(layers):
            raise ValueError(f"freeze_layers: {freeze_layers} is more than the model's {len(layers)} layers")
        self.model.requires_grad_(freeze_layers != -1)
        self.model.embed_positions.requires_grad_(False)
        if freeze_layers > 0:
            self.model.conv1.requires_grad_(False)
            self.model.conv2.requires_grad_(False)
            for layer in layers[:freeze_layers]:
                layer.requires_grad_(False)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute layer activations in the backward pass (less memory, ~30% slower)."""
        self.model.activation_checkpointing_enable()

    def encode(self, features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """``WhisperEncoder``'s forward pass on ``features`` [B, mels, T] of which the first
        ``frames`` [B] are valid, without its 3000-frame requirement -> [B, ceil(T/2), D]."""
        model = self.model
        frame_valid = torch.arange(features.shape[-1], device=features.device) < frames.unsqueeze(1)
        hidden = nn.functional.gelu(model.conv1(features))
        # Zero past the end, as the convolution's own padding is for a clip alone.
        hidden = hidden * frame_valid.unsqueeze(1).to(hidden.dtype)
        hidden = nn.functional.gelu(model.conv2(hidden)).transpose(1, 2)  # [B, L, D]
        positions = hidden.shape[1]
        hidden = hidden + model.embed_positions.weight[:positions]
        hidden = nn.functional.dropout(hidden, p=model.config.dropout, training=self.training)
        key_valid = torch.arange(positions, device=hidden.device) < output_positions(frames).unsqueeze(1)
        attention_mask = key_valid[:, None, None, :]  # [B, 1, 1, L]: True = attend
        for layer in model.layers:
            hidden = layer(hidden, attention_mask)
        return model.layer_norm(hidden)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        waveform = inputs["waveform"][:, :MAX_SAMPLES]
        if waveform.shape[1] == 0:
            waveform = waveform.new_zeros(waveform.shape[0], 1)
        lengths = waveform_lengths(inputs).clamp(max=waveform.shape[1])
        present = inputs.get("mask", torch.ones(len(waveform), dtype=torch.bool, device=waveform.device))
        features, frames = self.log_mel(waveform, lengths)
        sequence = self.encode(features, frames)
        valid = torch.arange(sequence.shape[1], device=sequence.device) < output_positions(frames).unsqueeze(1)
        sequence_mask = valid & present.unsqueeze(1)
        weights = sequence_mask.unsqueeze(-1).to(sequence.dtype)
        pooled = (sequence * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return {"pooled": self.dropout(pooled), "sequence": self.dropout(sequence),
                "sequence_mask": sequence_mask}


def output_positions(frames: torch.Tensor) -> torch.Tensor:
    """Encoder positions of ``frames`` log-mel frames (the stride-2 convolution: ceil(T / 2))."""
    return torch.div(frames + 1, 2, rounding_mode="floor")


def resolve_weights(weights: str) -> Path:
    """What config field ``weights`` names: the ``model.bin`` of a CTranslate2 model (``""`` or
    a fetchable name: the models home copy; a faster-whisper folder; the file), or a Hugging
    Face Whisper folder (a folder with config.json and no model.bin). A name that is no path
    (``openai/whisper-small``) is looked up in the local Hugging Face cache, where either
    layout may be. Missing weights raise a FileNotFoundError saying how to provide them."""
    if canonical_name(weights or DEFAULT_WEIGHTS) is not None:
        return require_model(weights or DEFAULT_WEIGHTS) / "model.bin"
    path = Path(weights).expanduser()
    if not path.exists() and not weights.startswith(("/", ".", "~")):
        path = Path(resolve_audio_model(weights, key="weights"))
    if path.is_dir() and not (path / "model.bin").is_file() and (path / "config.json").is_file():
        return path
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise ModelNotInstalledError(
            f"Whisper weights {path} do not exist. Install whisper-base once with "
            f"`{fetch_command(DEFAULT_WEIGHTS)}` (and leave weights empty), or set weights to a "
            "faster-whisper (CTranslate2) folder holding model.bin, a Hugging Face Whisper folder "
            "(config.json, model.safetensors) or a hub name in the local Hugging Face cache")
    return path


# The fields of WhisperAudioEncoder.Config that a Hugging Face config.json holds, by the same names.
ARCHITECTURE_FIELDS = ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "num_mel_bins")


def hf_architecture(folder: Path) -> dict[str, int]:
    """The architecture fields of :class:`WhisperAudioEncoder.Config` that the Hugging Face
    Whisper folder ``folder`` needs, from its config.json; :class:`WeightsError` when that
    config has a setting the forward pass here does not reproduce."""
    from transformers import WhisperConfig

    config = {**WhisperConfig().to_dict(), **read_hf_config(folder)}  # transformers' defaults for keys left out
    for key, supported in (("max_source_positions", MAX_POSITIONS), ("activation_function", "gelu")):
        if config[key] != supported:
            raise WeightsError(f"{folder}/config.json has {key}={config[key]!r}; type whisper runs "
                               f"Whisper's encoder with {key}={supported!r}")
    try:
        return {field: int(config[field]) for field in ARCHITECTURE_FIELDS}
    except (TypeError, ValueError) as err:
        raise WeightsError(f"{folder}/config.json has a size that is not a whole number: {err}") from err


def read_whisper_encoder(path: str | Path) -> tuple[dict[str, torch.Tensor], int]:
    """The encoder of the CTranslate2 Whisper model file ``path`` as a ``WhisperEncoder``
    state dict (float32), and its number of attention heads."""
    model = read_model(path, keep=lambda name: name.startswith("encoder/"))
    if model.spec != "WhisperSpec":
        raise WeightsError(f"{path} is a CTranslate2 {model.spec!r} model, not a Whisper model (WhisperSpec)")
    return convert_ctranslate2_encoder(model.variables, str(path))


_LAYER = re.compile(r"layer_(\d+)/(.+)")
# CTranslate2 scope (under encoder/ or encoder/layer_N/) -> WhisperEncoder module.
_MODULES = {"conv1": "conv1", "conv2": "conv2", "layer_norm": "layer_norm"}
_LAYER_MODULES = {"self_attention/layer_norm": "self_attn_layer_norm",
                  "self_attention/linear_1": "self_attn.out_proj",
                  "ffn/layer_norm": "final_layer_norm", "ffn/linear_0": "fc1", "ffn/linear_1": "fc2"}
_PARAMETERS = {"weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}


def convert_ctranslate2_encoder(variables: dict[str, torch.Tensor],
                                source: str = "the CTranslate2 model") -> tuple[dict[str, torch.Tensor], int]:
    """Map the ``encoder/...`` variables of a CTranslate2 ``WhisperSpec`` onto ``WhisperEncoder``
    keys: ``gamma``/``beta`` are LayerNorm ``weight``/``bias``; each layer's fused
    ``self_attention/linear_0`` is split into ``q_proj``, ``k_proj`` and ``v_proj``; the
    positional ``encodings`` are ``embed_positions.weight``. Returns (state dict, heads)."""
    state: dict[str, torch.Tensor] = {}
    unknown = []
    heads = None
    for name, value in variables.items():
        if not name.startswith("encoder/"):
            continue
        scope, _, parameter = name[len("encoder/"):].rpartition("/")
        layer = _LAYER.fullmatch(scope)
        value = value.float() if value.is_floating_point() else value
        if name == "encoder/num_heads":
            heads = int(value)
        elif scope == "position_encodings" and parameter == "encodings":
            state["embed_positions.weight"] = value
        elif scope in _MODULES and parameter in _PARAMETERS:
            state[f"{_MODULES[scope]}.{_PARAMETERS[parameter]}"] = value
        elif layer and layer[2] in _LAYER_MODULES and parameter in _PARAMETERS:
            state[f"layers.{layer[1]}.{_LAYER_MODULES[layer[2]]}.{_PARAMETERS[parameter]}"] = value
        elif layer and layer[2] == "self_attention/linear_0" and parameter in ("weight", "bias"):
            prefix = f"layers.{layer[1]}.self_attn"
            query, key, values = value.chunk(3, dim=0)
            state[f"{prefix}.q_proj.{parameter}"] = query
            state[f"{prefix}.v_proj.{parameter}"] = values
            # Whisper's key projection has no bias (the converter fuses zeros). A key bias would
            # add the same q.b to every score of a query, which softmax ignores, so none is lost.
            if parameter == "weight":
                state[f"{prefix}.k_proj.weight"] = key
        else:
            unknown.append(name)
    if unknown:
        raise WeightsError(f"{source} holds encoder variables this converter does not know: "
                           f"{', '.join(sorted(unknown)[:5])}")
    if heads is None:
        raise WeightsError(f"{source} has no encoder/num_heads: not a CTranslate2 Whisper encoder")
    return state, heads


def architecture_hint(state: dict[str, torch.Tensor], heads: int) -> str:
    """The config fields that fit the weights in ``state`` (for an error message)."""
    try:
        conv = state["conv1.weight"]
        layers = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("layers."))
        ffn = state["layers.0.fc1.weight"].shape[0]
    except (KeyError, ValueError):
        return ""
    return (f"These weights need d_model={conv.shape[0]}, encoder_layers={layers}, "
            f"encoder_attention_heads={heads}, encoder_ffn_dim={ffn}, num_mel_bins={conv.shape[1]}")

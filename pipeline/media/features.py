"""Features of one utterance, shared by preprocessing and inference (no train/serve skew).

``extract_features(clip_path, text, pcfg, tokenizer)`` returns the arrays the cache stores:

    input_ids       int32[L]          tokens of "Speaker: utterance" [+ dialogue context]
    attention_mask  int8[L]
    target_mask     int8[L]           1 on the utterance's own tokens (see media/text.py)
    log_mel         float32[T, n_mels] VGGish frontend on 16 kHz mono, T <= 100 * max_seconds
    waveform        int16[S]           (audio.waveform only) the 16 kHz mono samples times
                                       WAVEFORM_SCALE, S <= sample_rate * max_seconds
    frames          uint8[N, H, W, 3]  N = num_frames, H = W = size, RGB

and the modalities present (sorted). A clip without an audio (video) stream simply has no
``log_mel`` (``frames``); a clip that cannot be used raises :class:`ClipError`.
"""
from __future__ import annotations

import functools
import math
import os
from typing import Any

import numpy as np
import torch
import torchaudio

from pipeline.config import AudioFeatures, PreprocessConfig
from pipeline.media.decode import ClipError, load_clip
from pipeline.media.text import Utterance, text_arrays

# The cached waveform is 16-bit PCM: float samples in [-1, 1] times this, rounded. Half the
# size of float32 and exact to 1.5e-5, below the noise floor of MELD's AAC audio.
WAVEFORM_SCALE = 32767


def single_threaded_process() -> None:
    """Set up a pool process that extracts features: one torch thread and no tokenizer
    threads, as the parallelism comes from the processes. Never call it in a caller's own
    process (a bench that trains right after preprocessing would train on one thread)."""
    torch.set_num_threads(1)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


# --------------------------------------------------------------------------- audio
@functools.lru_cache(maxsize=4)
def mel_transform(sample_rate: int, window: int, hop: int, n_mels: int, fmin: float,
                  fmax: float) -> torchaudio.transforms.MelSpectrogram:
    """Magnitude STFT (periodic Hann window of ``window`` samples, FFT size the next power
    of two, no centring) -> HTK-scale triangular mel filters
    without area normalisation (the same filters as ``librosa.filters.mel(htk=True, norm=None)``)."""
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=2 ** math.ceil(math.log2(window)), win_length=window,
        hop_length=hop, f_min=fmin, f_max=fmax, n_mels=n_mels, power=1.0, center=False,
        norm=None, mel_scale="htk")


def log_mel(waveform: np.ndarray | torch.Tensor, audio_cfg: AudioFeatures) -> np.ndarray:
    """VGGish log-mel of a mono waveform float[S] at ``audio_cfg.sample_rate``.

    Returns float32[T, n_mels] with T = 1 + (S' - window) // hop frames (10 ms hop), where
    S' is S capped at ``max_seconds`` and padded to at least one window; values are
    ``log(mel + log_offset)``.
    """
    rate = audio_cfg.sample_rate
    window = int(round(audio_cfg.window_ms * rate / 1000))
    hop = int(round(audio_cfg.hop_ms * rate / 1000))
    samples = torch.as_tensor(waveform, dtype=torch.float32).flatten()[: int(audio_cfg.max_seconds * rate)]
    if samples.numel() < window:
        samples = torch.nn.functional.pad(samples, (0, window - samples.numel()))
    transform = mel_transform(rate, window, hop, audio_cfg.n_mels, audio_cfg.fmin, audio_cfg.fmax)
    # torch frames n_fft samples with the window in their middle; padding by the difference
    # makes frame k cover samples [k * hop, k * hop + window), as VGGish frames them.
    margin = (transform.n_fft - window) // 2
    samples = torch.nn.functional.pad(samples, (margin, transform.n_fft - window - margin))
    with torch.no_grad():
        mel = transform(samples)  # [n_mels, T]
    return torch.log(mel + audio_cfg.log_offset).T.contiguous().numpy()


def pcm16(waveform: np.ndarray, audio_cfg: AudioFeatures) -> np.ndarray:
    """The waveform as the cache stores it: float[S] -> int16[S'], S' = S capped at
    ``max_seconds``, samples clipped to [-1, 1] and scaled by WAVEFORM_SCALE."""
    samples = np.asarray(waveform, dtype=np.float32)[: int(audio_cfg.max_seconds * audio_cfg.sample_rate)]
    return np.round(np.clip(samples, -1.0, 1.0) * WAVEFORM_SCALE).astype(np.int16)


# --------------------------------------------------------------------------- one sample
def extract_features(clip_path: str | os.PathLike | None, text: str | Utterance | None,
                     pcfg: PreprocessConfig, tokenizer: Any,
                     notes: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
    """All features of one sample for the modalities in ``pcfg.modalities``.

    ``clip_path`` None: no audio or video (e.g. a text-only cache); ``text`` None: no text.
    ``tokenizer`` is only used when text is wanted. ``notes``, when given, receives what the
    manifest row records about the clip: ``face_frames``, how many sampled frames showed a
    face (with ``video.face_crop`` on), and ``decode_errors``, what ffmpeg reported about
    damaged data in a clip that was still kept. Returns (arrays as listed in the module docstring,
    sorted present modalities). Raises ClipError for a missing, empty or unreadable clip,
    one with neither stream, or a sample left with no modality at all.
    """
    arrays: dict[str, np.ndarray] = {}
    modalities: list[str] = []
    if "text" in pcfg.modalities and text is not None:
        utterance = text if isinstance(text, Utterance) else Utterance(text)
        arrays.update(text_arrays(utterance, pcfg.text, tokenizer))
        modalities.append("text")
    want_audio, want_video = "audio" in pcfg.modalities, "video" in pcfg.modalities
    if clip_path is not None and (want_audio or want_video):
        clip = load_clip(clip_path, pcfg.audio if want_audio else None, pcfg.video if want_video else None)
        if clip.waveform is not None:
            arrays["log_mel"] = log_mel(clip.waveform, pcfg.audio)
            if pcfg.audio.waveform:
                arrays["waveform"] = pcm16(clip.waveform, pcfg.audio)
            modalities.append("audio")
        if clip.frames is not None:
            arrays["frames"] = clip.frames
            modalities.append("video")
        if notes is not None and clip.face_frames is not None:
            notes["face_frames"] = clip.face_frames
        if notes is not None and clip.decode_errors:
            notes["decode_errors"] = clip.decode_errors
    non_finite = [name for name, array in arrays.items() if array.dtype.kind == "f" and not np.isfinite(array).all()]
    if non_finite:  # e.g. NaN samples in a float audio stream: never written, never trained on
        raise ClipError(clip_path if clip_path is not None else "<no input>",
                        f"non-finite values (NaN or inf) in {', '.join(non_finite)}")
    if not modalities:
        raise ClipError(clip_path if clip_path is not None else "<no input>",
                        f"none of the modalities {pcfg.modalities} is available")
    return arrays, sorted(modalities)

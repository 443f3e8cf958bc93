"""How a batch runs on a device, shared by training, embedding and inference: the device a
setting names, moving nested batches, and the autocast dtype that ``train.amp`` asks for
(bf16 on GPUs and CPUs that compute it natively with ``auto``)."""
from __future__ import annotations

import contextlib
import os
from typing import Any, Mapping

import torch

from pipeline.config import ConfigError


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; under torchrun each rank takes
    the GPU of its ``LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"train.device={name} but no CUDA device is visible; use train.device=cpu")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {key: to_device(value, device) for key, value in batch.items()}
    return batch


# CPU flags of native bf16 matrix arithmetic (Intel AMX since Sapphire Rapids, AVX512-BF16
# on Cooper Lake and AMD Zen 4+): oneDNN runs bf16 matmuls there at 2.5-3.5x float32, while
# elsewhere bf16 is converted in software and slower than float32.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
# "0" or "1" overrides the detection (the test suite sets "0", so that its results stay
# float32 and comparable bit for bit on every machine).
CPU_BF16_ENV = "MELD_FUSION_CPU_BF16"


def cpu_computes_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively: ``MELD_FUSION_CPU_BF16`` when set, else the
    flags of ``/proc/cpuinfo`` (or the text ``cpuinfo``); False where neither says."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
                cpuinfo = file.read()
        except OSError:  # not Linux: no way to tell, keep float32
            return False
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: ``auto`` is bf16 on GPUs that compute it natively (compute capability
    8.0 and up), else fp16 (with a GradScaler); on the CPU, bf16 where it computes it
    natively (:func:`cpu_computes_bf16`), else off."""
    if setting == "off" or (setting == "auto" and device.type != "cuda" and not cpu_computes_bf16()):
        return None
    if setting == "auto" and device.type != "cuda":
        return torch.bfloat16
    if setting == "auto":
        # Without including_emulation=False, V100s and T4s count as bf16 GPUs: they emulate it, slowly.
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native else torch.float16
    if setting == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp: fp16 needs a CUDA device; use bf16 or off on the CPU")
    return torch.bfloat16 if setting == "bf16" else torch.float16


def inference_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of inference on ``device`` for a checkpoint trained with ``train.amp``
    ``setting``: on the CPU, bf16 where it computes it natively and the checkpoint trained
    with autocast, else float32 (an fp16-trained checkpoint runs there too); on a GPU the
    training precision as evaluation in training ran it, bf16 turned to fp16 where the GPU
    does not compute bf16 natively."""
    if setting == "off":
        return None
    if device.type != "cuda":
        return torch.bfloat16 if cpu_computes_bf16() else None
    if setting == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.float16
    return amp_dtype(setting, device)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)

"""The autocast dtype that ``train.amp`` asks for, on GPUs with and without native bf16 (the
CUDA query is faked: no GPU is needed)."""
from __future__ import annotations

import pytest
import torch

from pipeline.config import ConfigError
from pipeline.execution import amp_dtype

CUDA = torch.device("cuda", 0)


def test_auto_is_bf16_only_on_gpus_that_compute_it_natively(monkeypatch):
    def emulating(including_emulation: bool = True) -> bool:  # a V100 or T4: bf16 by emulation only
        return including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", emulating)
    assert amp_dtype("auto", CUDA) is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # A100, H100
    assert amp_dtype("auto", CUDA) is torch.bfloat16


def test_explicit_settings_and_the_cpu(monkeypatch):
    monkeypatch.setenv("MELD_FUSION_CPU_BF16", "0")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert amp_dtype("off", CUDA) is None
    assert amp_dtype("fp16", CUDA) is torch.float16
    assert amp_dtype("bf16", CUDA) is torch.bfloat16
    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) is None and amp_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(ConfigError, match="fp16 needs a CUDA"):
        amp_dtype("fp16", cpu)


SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
EPYC_ZEN2 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma bmi2\n"


def test_cpus_with_native_bf16_are_told_from_their_flags(monkeypatch):
    from pipeline.execution import cpu_computes_bf16

    monkeypatch.delenv("MELD_FUSION_CPU_BF16", raising=False)
    assert cpu_computes_bf16(SAPPHIRE_RAPIDS) and not cpu_computes_bf16(EPYC_ZEN2)
    assert cpu_computes_bf16("flags : avx512f avx512_bf16\n")  # Cooper Lake, Zen 4: AVX512-BF16 alone
    assert not cpu_computes_bf16("")  # no flags line
    monkeypatch.setenv("MELD_FUSION_CPU_BF16", "0")
    assert not cpu_computes_bf16(SAPPHIRE_RAPIDS)
    monkeypatch.setenv("MELD_FUSION_CPU_BF16", "1")
    assert cpu_computes_bf16(EPYC_ZEN2)


def test_auto_is_bf16_on_cpus_that_compute_it_natively_in_training_and_inference(monkeypatch):
    from pipeline.execution import inference_dtype

    cpu = torch.device("cpu")
    monkeypatch.setenv("MELD_FUSION_CPU_BF16", "1")
    assert amp_dtype("auto", cpu) is torch.bfloat16 and amp_dtype("off", cpu) is None
    assert inference_dtype("auto", cpu) is torch.bfloat16 and inference_dtype("fp16", cpu) is torch.bfloat16
    assert inference_dtype("off", cpu) is None
    monkeypatch.setenv("MELD_FUSION_CPU_BF16", "0")
    assert amp_dtype("auto", cpu) is None and inference_dtype("auto", cpu) is None
    assert inference_dtype("bf16", cpu) is None  # emulated bf16 is slower than float32 there

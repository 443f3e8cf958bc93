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
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert amp_dtype("off", CUDA) is None
    assert amp_dtype("fp16", CUDA) is torch.float16
    assert amp_dtype("bf16", CUDA) is torch.bfloat16
    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) is None and amp_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(ConfigError, match="fp16 needs a CUDA"):
        amp_dtype("fp16", cpu)

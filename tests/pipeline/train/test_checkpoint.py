"""Random states in checkpoints on machines with GPUs (CUDA faked: no GPU is needed): a run
on the CPU never touches CUDA, and a checkpoint written where more GPUs were visible than
now resumes."""
from __future__ import annotations

import logging

import torch

from pipeline.train.checkpoint import rng_state, set_rng_state


def cuda_untouchable(monkeypatch) -> None:
    """A GPU machine on which any use of CUDA's random state fails the test."""
    def touched(*args, **kwargs):
        raise AssertionError("a run on the CPU initialised CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for module in (torch.cuda, torch.cuda.random):
        for name in ("get_rng_state", "get_rng_state_all", "set_rng_state", "set_rng_state_all"):
            monkeypatch.setattr(module, name, touched)
    monkeypatch.setattr(torch.cuda, "_lazy_init", touched)


def test_a_cpu_run_on_a_gpu_machine_leaves_cuda_alone(monkeypatch):
    cuda_untouchable(monkeypatch)
    state = rng_state(torch.device("cpu"))
    assert state["cuda"] == []
    # A checkpoint of a GPU run, resumed on the CPU: its CUDA states are not restored.
    set_rng_state({**state, "cuda": [torch.zeros(16, dtype=torch.uint8)]}, torch.device("cpu"))


def test_cuda_states_of_more_gpus_than_are_visible_restore_the_visible_ones(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    restored = {}

    def set_state(state: torch.Tensor, device: int | str | torch.device = "cuda") -> None:
        index = device if isinstance(device, int) else (torch.device(device).index or 0)
        if index >= 2:
            raise RuntimeError("CUDA error: invalid device ordinal")
        restored[index] = state

    monkeypatch.setattr(torch.cuda, "set_rng_state", set_state)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_state)  # what set_rng_state_all calls
    states = [torch.full((16,), gpu, dtype=torch.uint8) for gpu in range(8)]  # written on an 8-GPU node
    with caplog.at_level(logging.WARNING):
        set_rng_state({**rng_state(), "cuda": states}, torch.device("cuda", 1))
    assert sorted(restored) == [0, 1]
    assert all(torch.equal(restored[gpu], states[gpu]) for gpu in (0, 1))
    assert "random states of 8 GPUs, 2 are visible" in caplog.text


def test_a_gpu_run_saves_the_cuda_states(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.ones(16, dtype=torch.uint8)])
    assert torch.equal(rng_state(torch.device("cuda", 0))["cuda"][0], torch.ones(16, dtype=torch.uint8))

"""Every registered head: task outputs, gradients, gates and the MoE balance loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fusion
from fusion.heads import balance_loss

torch.set_num_threads(1)
OUTPUTS = {"emotion": 7, "sentiment": 3, "regression": 2}
IN_DIM = 16
GATED = {"gated": sum(OUTPUTS.values()), "moe": 4}  # head -> gate width


def make(name: str, **fields) -> torch.nn.Module:
    torch.manual_seed(0)
    return fusion.build_head({"type": name, **fields}, IN_DIM, OUTPUTS)


@pytest.mark.parametrize("name", sorted(fusion.HEADS))
def test_outputs_per_task(name):
    head = make(name).eval()
    out = head(torch.randn(5, IN_DIM))
    for task, size in OUTPUTS.items():
        assert out[task].shape == (5, size)
    assert out["aux_loss"].shape == ()
    if name in GATED:
        assert out["gates"].shape == (5, GATED[name])
        torch.testing.assert_close(out["gates"].sum(1), torch.ones(5))
        assert (out["gates"] >= 0).all()
    else:
        assert "gates" not in out and out["aux_loss"] == 0


@pytest.mark.parametrize("name", sorted(fusion.HEADS))
def test_gradients_reach_every_parameter(name):
    head = make(name).train()
    x = torch.randn(6, IN_DIM, requires_grad=True)
    out = head(x)
    loss = sum((out[task] * torch.randn_like(out[task])).sum() for task in OUTPUTS) + out["aux_loss"]
    loss.backward()
    no_grad = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, no_grad
    assert x.grad.abs().sum() > 0


def test_regression_head_is_the_funnel_mlp():
    head = make("regression")
    widths = [m.out_features for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [IN_DIM // 2, IN_DIM // 4, sum(OUTPUTS.values())]
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in head.modules()) == 2
    assert all(m.p == 0.3 for m in head.modules() if isinstance(m, torch.nn.Dropout))


def test_balance_loss_is_zero_for_uniform_load_and_positive_otherwise():
    uniform = torch.full((8, 4), 0.25)
    assert balance_loss(uniform) == 0
    alternating = torch.eye(4).repeat(2, 1)  # every sample picks one expert, but evenly
    assert balance_loss(alternating) == 0
    collapsed = torch.tensor([[0.7, 0.1, 0.1, 0.1]]).repeat(8, 1)
    assert balance_loss(collapsed) > 0
    assert balance_loss(torch.eye(4)[[0] * 8]) > balance_loss(collapsed)


def test_moe_aux_loss_uses_the_coefficient():
    head = make("moe", balance_coef=0.01).eval()
    with torch.no_grad():
        out = head(torch.randn(5, IN_DIM))
        assert out["aux_loss"] > 0
        torch.testing.assert_close(out["aux_loss"], 0.01 * balance_loss(out["gates"]))
        last = head.gate[-1]
        last.weight.zero_()
        last.bias.zero_()  # a constant gate: uniform load
        out = head(torch.randn(5, IN_DIM))
    torch.testing.assert_close(out["gates"], torch.full((5, 4), 0.25))
    assert out["aux_loss"] == 0


def fix_gate(head: torch.nn.Module, probabilities: list[float]) -> None:
    """Make a head's gate give ``probabilities`` for every input (zero weights, log-probability bias)."""
    last = head.gate[-1]
    last.weight.zero_()
    last.bias.copy_(torch.log(torch.tensor(probabilities)))


def test_balance_loss_is_the_squared_coefficient_of_variation_of_the_load():
    # Worked by hand. Load [0.7, 0.1, 0.1, 0.1]: mean 0.25, variance (0.45^2 + 3 * 0.15^2) / 4
    # = 0.0675, cv^2 = 0.0675 / 0.0625 = 1.08 (cv would be 1.039). All on one expert: load
    # [1, 0, 0, 0], variance 0.1875, cv^2 = 3. Two experts, gates [0.9, 0.1] and [0.5, 0.5]:
    # load [0.7, 0.3], variance 0.04, cv^2 = 0.16 (cv 0.4).
    assert balance_loss(torch.tensor([[0.7, 0.1, 0.1, 0.1]]).repeat(8, 1)).item() == pytest.approx(1.08)
    assert balance_loss(torch.eye(4)[[0] * 8]).item() == pytest.approx(3.0)
    assert balance_loss(torch.tensor([[0.9, 0.1], [0.5, 0.5]])).item() == pytest.approx(0.16)


def test_moe_default_coefficient_times_the_balance_loss():
    # The documented default (docs/configuration.md): 0.1. A gate fixed at [0.7, 0.1, 0.1, 0.1]
    # gives cv^2 = 1.08 (above), so aux_loss = 0.108.
    assert fusion.HEADS["moe"].Config().balance_coef == 0.1
    head = make("moe").eval()
    with torch.no_grad():
        fix_gate(head, [0.7, 0.1, 0.1, 0.1])
        out = head(torch.randn(5, IN_DIM))
    assert out["aux_loss"].item() == pytest.approx(0.108, rel=1e-5)


def test_moe_mixes_its_experts_by_the_gate():
    x = torch.randn(5, IN_DIM)
    head = make("moe").eval()
    with torch.no_grad():
        experts = np.stack([expert(x).numpy() for expert in head.experts], axis=1)  # [B,E,K]
        out = head(x)  # the gate of random weights: different per sample
        gates = out["gates"].numpy()
        fix_gate(head, [0.7, 0.1, 0.1, 0.1])
        fixed = head(x)
    assert np.ptp(gates, axis=0).max() > 1e-3
    mixed = np.concatenate([out[task].numpy() for task in OUTPUTS], axis=1)
    np.testing.assert_allclose(mixed, np.einsum("be,bek->bk", gates, experts), rtol=1e-5, atol=1e-6)
    mixed = np.concatenate([fixed[task].numpy() for task in OUTPUTS], axis=1)
    np.testing.assert_allclose(mixed, np.einsum("e,bek->bk", [0.7, 0.1, 0.1, 0.1], experts), rtol=1e-5, atol=1e-6)
    assert np.abs(mixed - experts.mean(axis=1)).max() > 1e-3  # the mean of the experts is another thing


def test_uniform_gate_passes_the_gated_mlp_through():
    head = make("gated").eval()
    x = torch.randn(5, IN_DIM)
    with torch.no_grad():
        head.gate[-1].weight.zero_()
        head.gate[-1].bias.zero_()  # a constant gate: 1/K on every output
        out = head(x)
        plain = head.mlp(x)
    torch.testing.assert_close(torch.cat([out[task] for task in OUTPUTS], dim=1), plain)
    torch.testing.assert_close(out["gates"], torch.full((5, GATED["gated"]), 1 / GATED["gated"]))


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="num_experts"):
        fusion.HEADS["moe"].Config(num_experts=1)
    with pytest.raises(ValueError, match="dropout"):
        fusion.HEADS["gated"].Config(dropout=1.5)
    with pytest.raises(ValueError, match="hidden"):
        fusion.HEADS["classification"].Config(hidden=0)

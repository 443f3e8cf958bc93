"""Every registered dialogue context, causal and not: shapes, gradients, padding, causality,
speakers, the residual start and config checks."""
from __future__ import annotations

import pytest
import torch

import fusion

torch.set_num_threads(1)
DIM = 6
TINY = {"width": 8, "layers": 2, "max_speakers": 3, "dropout": 0.1}
EXTRA = {"transformer": {"heads": 2}}

# Every context type; the learned ones causal and not, adding the input back and not.
VARIANTS = {
    "none": [{}],
    "gru": [{"causal": c, "residual": r} for c in (True, False) for r in (True, False)],
    "transformer": [{"causal": c, "residual": r} for c in (True, False) for r in (True, False)],
}
CASES = [(name, extra) for name in sorted(fusion.CONTEXTS) for extra in VARIANTS[name]]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in extra.items())}" for name, extra in CASES]


def test_every_registered_context_has_cases():
    assert set(VARIANTS) == set(fusion.CONTEXTS)


def make(name: str, extra: dict, as_trained: bool = True) -> torch.nn.Module:
    """A tiny context. ``as_trained``: give the zero-initialised residual branch random
    weights, as training would; otherwise a residual context is the identity and every test
    of what it reads would pass without looking."""
    torch.manual_seed(0)
    fields = {} if name == "none" else {**TINY, **EXTRA.get(name, {}), **extra}
    module = fusion.build_context({"type": name, **fields}, DIM)
    if as_trained and hasattr(module, "out_proj"):
        torch.nn.init.normal_(module.out_proj.weight, std=0.5)
        torch.nn.init.normal_(module.out_proj.bias, std=0.5)
    return module


def make_inputs(lengths: list[int], turns: int | None = None,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [B,T,D], prefix mask [B,T] for ``lengths``, speakers in [0, 3) (-7 at padding)."""
    generator = torch.Generator().manual_seed(seed)
    turns = turns or max(lengths)
    x = torch.randn(len(lengths), turns, DIM, generator=generator)
    mask = torch.arange(turns) < torch.tensor(lengths).unsqueeze(1)
    speakers = torch.randint(0, 3, (len(lengths), turns), generator=generator)
    return x, mask, torch.where(mask, speakers, -7)


def is_learned(name: str) -> bool:
    return name != "none"


@pytest.mark.parametrize(("name", "extra"), CASES, ids=IDS)
def test_shape_out_dim_and_zeros_at_padding(name, extra):
    module = make(name, extra)
    x, mask, speakers = make_inputs([5, 3, 1])
    for mode in (module.train(), module.eval()):
        out = mode(x, mask, speakers)
        assert module.out_dim == DIM and out.shape == (3, 5, DIM)
        assert torch.isfinite(out).all()
        assert (out[~mask] == 0).all() and (out[mask] != 0).all()


@pytest.mark.parametrize(("name", "extra"), CASES, ids=IDS)
def test_gradients_reach_every_parameter_and_only_real_inputs(name, extra):
    module = make(name, extra).train()
    x, mask, speakers = make_inputs([5, 3, 1])
    x.requires_grad_(True)
    out = module(x, mask, speakers)
    (out * torch.randn_like(out)).sum().backward()
    no_grad = [n for n, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, no_grad
    assert (x.grad[mask].abs().sum(-1) > 0).all() and (x.grad[~mask] == 0).all()


@pytest.mark.parametrize(("name", "extra"), CASES, ids=IDS)
def test_a_dialogue_alone_and_padded_in_a_batch_agree(name, extra):
    module = make(name, extra).eval()
    short, short_mask, short_speakers = make_inputs([3], seed=1)
    long, long_mask, long_speakers = make_inputs([6], seed=2)
    x = torch.cat([torch.nn.functional.pad(short, (0, 0, 0, 3)), long])
    mask = torch.cat([torch.nn.functional.pad(short_mask, (0, 3)), long_mask])
    speakers = torch.cat([torch.nn.functional.pad(short_speakers, (0, 3), value=-7), long_speakers])
    batched = module(x, mask, speakers)
    torch.testing.assert_close(batched[0, :3], module(short, short_mask, short_speakers)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[1], module(long, long_mask, long_speakers)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("name", "extra"), CASES, ids=IDS)
def test_values_at_padding_change_nothing(name, extra):
    module = make(name, extra).eval()
    x, mask, speakers = make_inputs([5, 2, 0])  # the last dialogue has no real turn at all
    reference = module(x, mask, speakers)
    garbage = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)) * 1e4
    x = torch.where(mask.unsqueeze(-1), x, garbage)
    x[1, 3, 0] = float("nan")
    x[2, 0, 1] = float("inf")
    speakers = torch.where(mask, speakers, torch.randint(-50, 50, speakers.shape))
    out = module(x, mask, speakers)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference)


@pytest.mark.parametrize(("name", "extra"), CASES, ids=IDS)
def test_a_dialogue_without_turns_gives_zeros_and_finite_gradients(name, extra):
    module = make(name, extra).train()
    x, mask, speakers = make_inputs([3, 0])
    x.requires_grad_(True)
    out = module(x, mask, speakers)
    assert (out[1] == 0).all()
    (out * torch.randn_like(out)).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in [x, *module.parameters()])
    if is_learned(name):
        # Its outputs are zeroed whatever the model computed; but a nan inside it (softmax over
        # no key: this torch gives one in inference) poisons gradients on other torch builds.
        with torch.inference_mode():
            hidden = module.eval().contextualise(torch.randn(2, 3, TINY["width"]), mask, mask.sum(1))
        assert torch.isfinite(hidden).all()


@pytest.mark.parametrize(("name", "extra"), CASES, ids=IDS)
def test_causal_turns_never_see_later_turns(name, extra):
    module = make(name, extra).eval()
    x, mask, speakers = make_inputs([6, 4])
    reference = module(x, mask, speakers)
    k = 2  # perturb turn k of dialogue 0, its vector and its speaker
    x[0, k] += torch.randn(DIM)
    speakers[0, k] = (speakers[0, k] + 1) % 3
    out = module(x, mask, speakers)
    torch.testing.assert_close(out[1], reference[1])  # another dialogue: untouched
    assert not torch.allclose(out[0, k], reference[0, k])
    earlier_changed = [not torch.allclose(out[0, t], reference[0, t]) for t in range(k)]
    later_changed = [not torch.allclose(out[0, t], reference[0, t]) for t in range(k + 1, 6)]
    if not is_learned(name):
        assert not any(earlier_changed) and not any(later_changed)
    elif extra["causal"]:
        assert not any(earlier_changed) and all(later_changed)
        torch.testing.assert_close(out[0, :k], reference[0, :k], atol=0, rtol=0)
    else:  # the whole dialogue: the test above could fail
        assert all(earlier_changed) and all(later_changed)


@pytest.mark.parametrize(("name", "extra"), CASES, ids=IDS)
def test_speakers_are_an_input(name, extra):
    module = make(name, extra).eval()
    x, mask, _ = make_inputs([4])
    alternating = module(x, mask, torch.tensor([[0, 1, 0, 1]]))
    swapped = module(x, mask, torch.tensor([[0, 0, 1, 1]]))  # turns 1 and 2 change speaker
    first = module(x, mask, torch.tensor([[2, 1, 0, 1]]))  # only turn 0 changes speaker
    if not is_learned(name):
        torch.testing.assert_close(alternating, swapped)
        torch.testing.assert_close(alternating, first)
        return
    for t in (1, 2):
        assert not torch.allclose(alternating[0, t], swapped[0, t])
    # Turn 3 keeps its own speaker: it differs only through the context it reads.
    assert not torch.allclose(alternating[0, 3], first[0, 3])


@pytest.mark.parametrize(("name", "extra"), CASES, ids=IDS)
def test_speakers_beyond_the_table_fold_modulo(name, extra):
    module = make(name, extra).eval()
    x, mask, speakers = make_inputs([5])
    reference = module(x, mask, speakers)
    table = TINY["max_speakers"]
    torch.testing.assert_close(module(x, mask, speakers + table), reference)
    torch.testing.assert_close(module(x, mask, speakers + 5 * table), reference)
    torch.testing.assert_close(module(x, mask, speakers - table), reference)


@pytest.mark.parametrize(("name", "extra"), CASES, ids=IDS)
def test_turn_order_matters(name, extra):
    module = make(name, extra).eval()
    x, mask, speakers = make_inputs([5])
    order = torch.tensor([1, 0, 2, 3, 4])  # swap the first two turns
    swapped = module(x[:, order], mask, speakers[:, order])
    reordered = module(x, mask, speakers)[:, order]
    if is_learned(name):  # a transformer without positions would give the same turns reordered
        assert not torch.allclose(swapped, reordered)
    else:
        torch.testing.assert_close(swapped, reordered)


def test_none_is_the_identity():
    module = make("none", {})
    x, mask, speakers = make_inputs([4, 2])
    out = module(x, mask, speakers)
    assert torch.equal(out[mask], x[mask]) and (out[~mask] == 0).all()
    assert module.out_dim == DIM and not list(module.parameters())


@pytest.mark.parametrize("name", [n for n in sorted(fusion.CONTEXTS) if is_learned(n)])
@pytest.mark.parametrize("causal", [True, False])
def test_residual_starts_as_the_utterance_only_model(name, causal):
    x, mask, speakers = make_inputs([5, 3])
    module = make(name, {"causal": causal}, as_trained=False).train()
    out = module(x, mask, speakers)
    torch.testing.assert_close(out[mask], x[mask], atol=0, rtol=0)
    (out * torch.randn_like(out)).sum().backward()
    assert module.out_proj.weight.grad.abs().sum() > 0  # training can leave the identity
    plain = make(name, {"causal": causal, "residual": False}, as_trained=False).eval()
    assert not torch.allclose(plain(x, mask, speakers)[mask], x[mask])


def test_empty_batches():
    for name, extra in CASES:
        module = make(name, extra)
        for shape in ((0, 0), (2, 0)):
            out = module(torch.zeros(*shape, DIM), torch.zeros(shape, dtype=torch.bool),
                         torch.zeros(shape, dtype=torch.long))
            assert out.shape == (*shape, DIM)


@pytest.mark.parametrize(("name", "extra"), CASES, ids=IDS)
def test_inputs_are_checked(name, extra):
    module = make(name, extra)
    x, mask, speakers = make_inputs([4, 2])
    holes = mask.clone()
    holes[0, 1] = False  # a real turn after padding
    with pytest.raises(ValueError, match="mask"):
        module(x, holes, speakers)
    with pytest.raises(ValueError, match="speakers"):
        module(x, mask, speakers[:, :3])


@pytest.mark.parametrize(("name", "fields", "field"), [
    ("gru", {"dropout": 1.0}, "dropout"),
    ("gru", {"layers": 0}, "layers"),
    ("gru", {"width": 0}, "width"),
    ("gru", {"max_speakers": 0}, "max_speakers"),
    ("transformer", {"dropout": -0.1}, "dropout"),
    ("transformer", {"heads": 0}, "heads"),
    ("transformer", {"width": 10, "heads": 4}, "width"),
    ("transformer", {"layers": -1}, "layers"),
])
def test_config_errors_name_the_field(name, fields, field):
    with pytest.raises(ValueError, match=field):
        fusion.CONTEXTS[name].Config(**fields)


def test_unknown_config_keys_are_errors():
    with pytest.raises(TypeError):
        fusion.build_context({"type": "none", "causal": True}, DIM)
    with pytest.raises(TypeError):
        fusion.build_context({"type": "gru", "heads": 2}, DIM)

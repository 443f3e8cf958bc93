"""Every registered fusion: output size, gradients, masks, modality dropout, long sequences."""
from __future__ import annotations

import pytest
import torch

import fusion
from fusion.attention import cap_tokens
from fusion.masking import drop_modalities

torch.set_num_threads(1)
DIMS = {"audio": 6, "text": 10, "video": 8}
LENGTHS = {"audio": 3, "text": 7, "video": 4}
BATCH = 4

# Every fusion type, plus the variants that change its structure.
VARIANTS = {
    "concat": [{}, {"proj_dim": 8, "normalize": False}],
    "attention": [{"tokens": "sequence", "max_tokens_per_modality": 5}, {"tokens": "pooled"}],
}
CASES = [(name, extra) for name in sorted(fusion.FUSIONS) for extra in VARIANTS[name]]


def test_every_registered_fusion_has_cases():
    assert set(VARIANTS) == set(fusion.FUSIONS)


def make(name: str, extra: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    tiny = {"attention": {"dim": 16, "heads": 2, "layers": 1}}.get(name, {})
    return fusion.build_fusion({"type": name, **tiny, **extra}, DIMS)


def make_features(seed: int = 0) -> tuple[dict, dict]:
    """Encoder outputs and masks: sample 1 lacks audio, sample 2 lacks text and video."""
    generator = torch.Generator().manual_seed(seed)
    features = {}
    for m, dim in DIMS.items():
        sequence_mask = torch.ones(BATCH, LENGTHS[m], dtype=torch.bool)
        sequence_mask[3, 2:] = False  # padding of sample 3
        features[m] = {"pooled": torch.randn(BATCH, dim, generator=generator),
                       "sequence": torch.randn(BATCH, LENGTHS[m], dim, generator=generator),
                       "sequence_mask": sequence_mask}
    masks = {m: torch.ones(BATCH, dtype=torch.bool) for m in DIMS}
    masks["audio"][1] = False
    masks["text"][2] = masks["video"][2] = False
    return features, masks


@pytest.mark.parametrize(("name", "extra"), CASES)
def test_output_size_is_computed(name, extra):
    module = make(name, extra).eval()
    features, masks = make_features()
    out = module(features, masks)
    expected = {"concat": extra.get("proj_dim", 0) * 3 or sum(DIMS.values()), "attention": 16}[name]
    assert module.out_dim == expected and out.shape == (BATCH, expected)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "extra"), CASES)
def test_gradients_reach_every_parameter(name, extra):
    module = make(name, extra).train()
    features, masks = make_features()
    for output in features.values():
        output["pooled"].requires_grad_(True)
        output["sequence"].requires_grad_(True)
    out = module(features, masks)
    (out * torch.randn_like(out)).sum().backward()
    no_grad = [n for n, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, no_grad
    reads = "pooled" if name == "concat" or extra.get("tokens") == "pooled" else "sequence"
    assert all(features[m][reads].grad.abs().sum() > 0 for m in DIMS)


@pytest.mark.parametrize(("name", "extra"), CASES)
def test_masked_modalities_and_padding_are_ignored(name, extra):
    module = make(name, extra).eval()
    features, masks = make_features()
    reference = module(features, masks)
    garbage, _ = make_features(seed=1)
    for m, sample in (("audio", 1), ("text", 2), ("video", 2)):
        for key in ("pooled", "sequence"):
            features[m][key][sample] = garbage[m][key][sample] * 1e3
    features["text"]["sequence"][2, 0] = float("nan")
    for m in DIMS:  # padded positions of sample 3
        features[m]["sequence"][3, 2:] = garbage[m]["sequence"][3, 2:]
    torch.testing.assert_close(module(features, masks), reference)


@pytest.mark.parametrize(("name", "extra"), CASES)
def test_a_missing_modality_changes_the_output(name, extra):
    module = make(name, extra).eval()
    features, masks = make_features()
    full = {m: torch.ones(BATCH, dtype=torch.bool) for m in DIMS}
    assert not torch.allclose(module(features, masks)[1], module(features, full)[1])


@pytest.mark.parametrize("name", sorted(fusion.FUSIONS))
def test_modality_dropout_only_in_training(name):
    features, masks = make_features()
    outputs = {}
    for p in (0.0, 0.9):
        module = make(name, {"modality_dropout": p, "dropout": 0.0})  # the only randomness: modalities
        torch.manual_seed(0)
        outputs[p] = module.train()(features, masks), module.eval()(features, masks)
    torch.testing.assert_close(outputs[0.0][0], outputs[0.0][1])
    torch.testing.assert_close(outputs[0.9][1], outputs[0.0][1])  # eval: no modality dropout
    assert not torch.allclose(outputs[0.9][0], outputs[0.9][1])  # training: some were dropped


def test_drop_modalities_keeps_at_least_one_present():
    torch.manual_seed(0)
    count = 2000
    masks = {"audio": torch.rand(count) < 0.7, "text": torch.ones(count, dtype=torch.bool),
             "video": torch.rand(count) < 0.5}
    masks["text"][:10] = False
    masks["audio"][:5] = masks["video"][:5] = False  # samples 0-4 have nothing
    kept = drop_modalities(masks, 0.6)
    stacked = torch.stack([kept[m] for m in masks], 1)
    present = torch.stack(list(masks.values()), 1)
    assert not (stacked & ~present).any()  # nothing absent becomes present
    # At least one modality left wherever there was one; samples 0-4 (nothing) stay empty.
    assert torch.equal(stacked.any(1), present.any(1)) and not present[:5].any()
    assert drop_modalities(masks, 0.0) is masks


def test_drop_modalities_rates():
    torch.manual_seed(0)
    count = 20000
    masks = {m: torch.ones(count, dtype=torch.bool) for m in ("audio", "text", "video")}
    kept = drop_modalities(masks, 0.6)
    # Each is drawn for dropping with p = 0.6; when all three are (0.216) one of them, chosen
    # uniformly, survives: dropped rate 0.6 - 0.216 / 3 = 0.528 per modality.
    for m in masks:
        assert abs((1 - kept[m].float().mean()) - 0.528) < 0.02
    survivors = torch.stack(list(kept.values()), 1).sum(1)
    assert survivors.min() == 1


def test_cap_tokens_averages_valid_positions_of_each_window():
    sequence = torch.arange(8.0).view(1, 8, 1).repeat(2, 1, 1)
    valid = torch.ones(2, 8, dtype=torch.bool)
    valid[1, 3:] = False
    pooled, keep = cap_tokens(sequence, valid, 4)
    assert pooled[0, :, 0].tolist() == [0.5, 2.5, 4.5, 6.5]
    assert pooled[1, :2, 0].tolist() == [0.5, 2.0] and keep[1].tolist() == [True, True, False, False]
    same, same_keep = cap_tokens(sequence, valid, 8)
    assert same is sequence and same_keep is valid


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="dim"):
        fusion.FUSIONS["attention"].Config(dim=10, heads=4)
    with pytest.raises(ValueError, match="proj_dim"):
        fusion.FUSIONS["concat"].Config(proj_dim=-1)

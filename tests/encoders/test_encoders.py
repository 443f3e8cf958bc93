"""Every registered encoder: output shapes, gradients, and masks (tiny configurations)."""
from __future__ import annotations

import pytest
import torch

import encoders

torch.set_num_threads(1)
BATCH = 3  # sample 1 is padded, sample 2 has the modality absent


def tiny_case(name: str, text_model: str, audio_model: str) -> tuple[dict, dict, int]:
    """(config section, inputs, sequence length) of a small version of encoder ``name``."""
    absent = torch.tensor([True, True, False])
    if name == "hf_text":
        ids = torch.tensor([[2, 5, 6, 7, 8, 3], [2, 5, 6, 3, 0, 0], [0, 0, 0, 0, 0, 0]])
        inputs = {"input_ids": ids, "attention_mask": (ids > 0).long(), "mask": absent}
        return {"type": "hf_text", "model": text_model, "dropout": 0.0}, inputs, 6
    if name == "vggish":
        inputs = {"log_mel": torch.randn(BATCH, 80, 32), "lengths": torch.tensor([80, 40, 0]), "mask": absent}
        section = {"type": "vggish", "channels": [4, 8, 8, 8, 16, 16], "fc_dims": [32, 16],
                   "n_mels": 32, "patch_frames": 32, "hop_frames": 16}
        return section, inputs, 4  # patches start at 0, 16, 32, 48
    if name == "resnet":
        frames = torch.randint(0, 256, (BATCH, 2, 3, 32, 32), dtype=torch.uint8)
        return {"type": "resnet", "weights": "none"}, {"frames": frames, "mask": absent}, 2
    if name == "whisper":
        inputs = {"waveform": torch.randn(BATCH, 1600), "lengths": torch.tensor([1600, 800, 0]), "mask": absent}
        section = {"type": "whisper", "pretrained": False, "d_model": 16, "encoder_layers": 2,
                   "encoder_attention_heads": 2, "encoder_ffn_dim": 32, "dropout": 0.0}
        return section, inputs, 5  # 10 log-mel frames, halved by the strided convolution
    if name == "hf_audio":
        inputs = {"waveform": torch.randn(BATCH, 400), "lengths": torch.tensor([400, 200, 0]), "mask": absent}
        return {"type": "hf_audio", "model": audio_model, "dropout": 0.0}, inputs, 39  # a frame per 10 samples
    raise AssertionError(f"no tiny test case for encoder {name!r}: add one here")


def test_every_registered_encoder_has_a_case(tiny_text_model, tiny_wav2vec2_model):
    for name in encoders.ENCODERS:
        tiny_case(name, tiny_text_model, tiny_wav2vec2_model)


@pytest.fixture(params=sorted(encoders.ENCODERS))
def case(request, tiny_text_model, tiny_wav2vec2_model):
    torch.manual_seed(0)
    section, inputs, length = tiny_case(request.param, tiny_text_model, tiny_wav2vec2_model)
    return request.param, encoders.build(section), inputs, length


def test_output_shapes(case):
    name, encoder, inputs, length = case
    out = encoder.eval()(inputs)
    dim = encoder.out_dim
    assert out["pooled"].shape == (BATCH, dim)
    assert out["sequence"].shape == (BATCH, length, dim)
    assert out["sequence_mask"].shape == (BATCH, length) and out["sequence_mask"].dtype == torch.bool
    assert out["sequence_mask"][0].any() and not out["sequence_mask"][2].any()  # sample 2 is absent
    assert torch.isfinite(out["pooled"]).all()
    assert isinstance(encoder.pretrained, bool)


def test_gradients_reach_every_trainable_parameter(case):
    name, encoder, inputs, _ = case
    out = encoder.train()(inputs)
    torch.manual_seed(1)
    # Random projections: a plain sum can have zero gradient through a normalisation layer.
    loss = (out["pooled"] * torch.randn_like(out["pooled"])).sum()
    loss = loss + (out["sequence"] * torch.randn_like(out["sequence"]))[out["sequence_mask"]].sum()
    loss.backward()
    trainable = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]
    assert trainable
    no_grad = [n for n, p in trainable if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"{name}: no gradient for {no_grad[:5]}"


def test_masked_and_padded_inputs_do_not_change_valid_outputs(case):
    """What an absent sample or a padded position holds never reaches the valid outputs."""
    name, encoder, inputs, _ = case
    encoder.eval()
    with torch.no_grad():
        reference = encoder(inputs)
        scrambled = {k: v.clone() for k, v in inputs.items()}
        if name == "hf_text":
            scrambled["input_ids"][2] = torch.randint(5, 17, (6,))  # absent sample
            scrambled["input_ids"][1, 4:] = torch.tensor([9, 10])  # padding of sample 1
        elif name == "vggish":
            scrambled["log_mel"][2] = 1e3 * torch.randn(80, 32)
            scrambled["log_mel"][1, 40:] = 1e3 * torch.randn(40, 32)
        elif name in ("whisper", "hf_audio"):
            samples = scrambled["waveform"].shape[1]
            scrambled["waveform"][2] = 1e3 * torch.randn(samples)
            scrambled["waveform"][1, samples // 2:] = 1e3 * torch.randn(samples - samples // 2)
        else:
            scrambled["frames"][2] = torch.randint(0, 256, scrambled["frames"][2].shape, dtype=torch.uint8)
        out = encoder(scrambled)
    assert torch.equal(out["sequence_mask"], reference["sequence_mask"])
    torch.testing.assert_close(out["pooled"][:2], reference["pooled"][:2], atol=1e-5, rtol=1e-5)
    valid = reference["sequence_mask"]
    torch.testing.assert_close(out["sequence"][valid], reference["sequence"][valid], atol=1e-5, rtol=1e-5)

"""Hugging Face speech encoder: offline resolution, the feature extractor's preparation,
agreement with transformers' own pipeline, masks and freezing (tiny random wav2vec2)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from encoders.hf_audio import AudioModelNotFoundError, HFAudioEncoder, resolve_audio_model

torch.set_num_threads(1)


def encoder(model: str, **fields) -> HFAudioEncoder:
    torch.manual_seed(0)
    return HFAudioEncoder(HFAudioEncoder.Config(model=model, **{"dropout": 0.0, **fields}))


def speech_like(samples: int, seed: int = 0) -> torch.Tensor:
    t = torch.arange(samples) / 16_000
    noise = torch.randn(samples, generator=torch.Generator().manual_seed(seed))
    return 0.3 * torch.sin(2 * math.pi * (200 + 50 * seed) * t) + 0.05 * noise + 0.1


def clips(*lengths: int) -> dict[str, torch.Tensor]:
    """A padded batch of :func:`speech_like` clips (padding filled with loud noise)."""
    waveform = 5 * torch.randn(len(lengths), max(lengths))
    for index, length in enumerate(lengths):
        waveform[index, :length] = speech_like(length, seed=index)
    return {"waveform": waveform, "lengths": torch.tensor(lengths), "mask": torch.ones(len(lengths), dtype=torch.bool)}


@pytest.fixture(params=["tiny_wav2vec2_model", "tiny_wav2vec2_group_model"])
def folder(request) -> str:
    """Both layouts: with an attention mask (batched) and without one (clip by clip)."""
    return request.getfixturevalue(request.param)


def test_reads_what_the_feature_extractor_says(tiny_wav2vec2_model, tiny_wav2vec2_group_model):
    with_mask, without = encoder(tiny_wav2vec2_model), encoder(tiny_wav2vec2_group_model)
    assert with_mask.attention_mask and not without.attention_mask
    assert with_mask.normalize and with_mask.min_samples == 20 and with_mask.out_dim == 16
    assert with_mask.pretrained
    # No LayerDrop, no SpecAugment: every parameter gets a gradient in every step (DDP).
    assert with_mask.model.config.layerdrop == 0.0 and not hasattr(with_mask.model, "masked_spec_embed")


def test_normalisation_matches_the_feature_extractor(tiny_wav2vec2_model):
    from transformers import AutoFeatureExtractor

    audio = encoder(tiny_wav2vec2_model)
    batch = clips(300, 120)
    raw = [batch["waveform"][i, :n].numpy() for i, n in enumerate(batch["lengths"].tolist())]
    reference = AutoFeatureExtractor.from_pretrained(tiny_wav2vec2_model)(
        raw, sampling_rate=16_000, padding=True, return_tensors="np")["input_values"]
    np.testing.assert_allclose(audio.prepare(batch["waveform"], batch["lengths"]).numpy(), reference, atol=1e-5)


def test_outputs_match_transformers_pipeline(folder):
    """The valid frames are the model's own outputs on the feature extractor's inputs: the
    padded batch with its attention mask, or each clip alone for a model without one."""
    from transformers import AutoFeatureExtractor, AutoModel

    audio = encoder(folder).eval()
    model = AutoModel.from_pretrained(folder).eval()
    extractor = AutoFeatureExtractor.from_pretrained(folder)
    batch = clips(400, 230)
    raw = [batch["waveform"][i, :n].numpy() for i, n in enumerate(batch["lengths"].tolist())]
    with torch.no_grad():
        out = audio(batch)
        if extractor.return_attention_mask:
            prepared = extractor(raw, sampling_rate=16_000, padding=True, return_tensors="pt")
            expected = list(model(**prepared).last_hidden_state)
        else:
            expected = [model(**extractor(clip, sampling_rate=16_000, return_tensors="pt")).last_hidden_state[0]
                        for clip in raw]
    frames = out["sequence_mask"].sum(1).tolist()
    assert frames == [39, 22]  # floor((floor((n - 10) / 5) + 1 - 3) / 2) + 1
    for index, count in enumerate(frames):
        torch.testing.assert_close(out["sequence"][index, :count], expected[index][:count], atol=1e-5, rtol=1e-5)


def test_padding_a_batch_does_not_change_a_short_clip(folder):
    audio = encoder(folder).eval()
    with torch.no_grad():
        batch = audio(clips(150, 800, 400))
        alone = audio(clips(150))
    count = int(alone["sequence_mask"].sum())
    assert count == 14 and batch["sequence_mask"].sum(1).tolist() == [14, 79, 39]
    torch.testing.assert_close(batch["pooled"][0], alone["pooled"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch["sequence"][0, :count], alone["sequence"][0], atol=1e-5, rtol=1e-5)


def test_a_clip_shorter_than_one_frame_still_has_one(folder):
    audio = encoder(folder).eval()
    inputs = clips(12, 12)
    inputs["mask"][1] = False  # absent: no valid frame, a zero vector
    with torch.no_grad():
        out = audio(inputs)
    assert out["sequence"].shape == (2, 1, 16) and out["sequence_mask"].tolist() == [[True], [False]]
    assert out["pooled"][0].abs().sum() > 0 and (out["pooled"][1] == 0).all()


def test_frozen_layers_get_no_gradient(folder):
    audio = encoder(folder, freeze_layers=1).train()
    out = audio(clips(400, 200))
    (out["pooled"] * torch.randn_like(out["pooled"])).sum().backward()
    params = dict(audio.model.named_parameters())
    below = ["feature_extractor.", "feature_projection.", "encoder.pos_conv_embed.", "encoder.layers.0."]
    above = ["encoder.layers.1."]
    # The encoder's layer norm comes after the layers in the stable-layer-norm layout, before them otherwise.
    (above if audio.model.config.do_stable_layer_norm else below).append("encoder.layer_norm.")
    frozen = [n for n in params if n.startswith(tuple(below))]
    trainable = [n for n in params if n.startswith(tuple(above))]
    assert len(frozen) + len(trainable) == len(params)
    assert all(params[n].grad is None and not params[n].requires_grad for n in frozen)
    assert all(params[n].grad is not None and params[n].grad.abs().sum() > 0 for n in trainable)
    assert not audio.model.feature_extractor._requires_grad  # no backward pass into a frozen CNN


def test_freeze_all_then_unfreeze(tiny_wav2vec2_model):
    audio = encoder(tiny_wav2vec2_model, freeze_layers=-1)
    assert not any(p.requires_grad for p in audio.parameters())
    audio.set_trainable_layers(0)  # progressive unfreezing
    assert all(p.requires_grad for p in audio.parameters())
    assert audio.model.feature_extractor._requires_grad
    with pytest.raises(ValueError, match="more than the model's 2 layers"):
        audio.set_trainable_layers(3)
    with pytest.raises(ValueError, match="freeze_layers"):
        HFAudioEncoder.Config(freeze_layers=-2)


def test_random_init_only_when_asked(tiny_wav2vec2_model):
    from safetensors.torch import load_file

    saved = load_file(f"{tiny_wav2vec2_model}/model.safetensors")
    loaded = encoder(tiny_wav2vec2_model)
    random = HFAudioEncoder(HFAudioEncoder.Config(model=tiny_wav2vec2_model, pretrained=False))
    assert loaded.pretrained and not random.pretrained
    assert loaded.state_dict().keys() == random.state_dict().keys()
    name = "encoder.layers.0.attention.q_proj.weight"
    assert torch.equal(loaded.state_dict()[f"model.{name}"], saved[name])
    assert not torch.equal(random.state_dict()[f"model.{name}"], saved[name])


def test_models_resolve_offline_with_clear_errors(monkeypatch, tmp_path, tiny_wav2vec2_model, tiny_text_model):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_audio_model(tiny_wav2vec2_model) == tiny_wav2vec2_model
    with pytest.raises(AudioModelNotFoundError) as info:
        resolve_audio_model("nobody-here/no-such-speech-model")
    assert "huggingface-cli download nobody-here/no-such-speech-model" in str(info.value)
    with pytest.raises(AudioModelNotFoundError, match="does not exist"):
        resolve_audio_model(str(tmp_path / "missing_folder"))
    with pytest.raises(AudioModelNotFoundError, match="hf_audio needs model"):
        resolve_audio_model("")
    with pytest.raises(ValueError, match="speech encoders of the wav2vec2 family"):
        encoder(tiny_text_model)

"""VGGish encoder: public weight layout, weight-file errors, patching and pooling."""
from __future__ import annotations

import pytest
import torch

from encoders.audio import VGGishEncoder
from encoders.weights import WeightsError

torch.set_num_threads(1)
SMALL = {"channels": [4, 8, 8, 8, 16, 16], "fc_dims": [32, 16]}


def public_vggish_state_dict() -> dict[str, torch.Tensor]:
    """Names and shapes of harritaylor/torchvggish's ``vggish-10086976.pth`` (random values)."""
    convs = {0: (64, 1), 3: (128, 64), 6: (256, 128), 8: (256, 256), 11: (512, 256), 13: (512, 512)}
    fcs = {0: (4096, 512 * 4 * 6), 2: (4096, 4096), 4: (128, 4096)}
    state = {}
    for index, (out_ch, in_ch) in convs.items():
        state[f"features.{index}.weight"] = torch.randn(out_ch, in_ch, 3, 3) * 0.05
        state[f"features.{index}.bias"] = torch.randn(out_ch) * 0.05
    for index, (out_dim, in_dim) in fcs.items():
        state[f"embeddings.{index}.weight"] = torch.randn(out_dim, in_dim) * 0.01
        state[f"embeddings.{index}.bias"] = torch.randn(out_dim) * 0.01
    return state


def test_public_vggish_weights_load(tmp_path):
    torch.manual_seed(0)
    state = public_vggish_state_dict()
    path = tmp_path / "vggish-10086976.pth"
    torch.save(state, path)
    audio = VGGishEncoder(VGGishEncoder.Config(weights=str(path))).eval()
    assert audio.pretrained and audio.out_dim == 128
    loaded = audio.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    with torch.no_grad():
        out = audio({"log_mel": torch.randn(1, 96, 64), "lengths": torch.tensor([96])})
    assert out["sequence"].shape == (1, 1, 128)


def torchvggish_forward(encoder: VGGishEncoder, patches: torch.Tensor) -> torch.Tensor:
    """The forward pass as written in torchvggish's ``VGG.forward`` (its two transposes)."""
    x = encoder.features(patches.unsqueeze(1))
    x = torch.transpose(x, 1, 3)
    x = torch.transpose(x, 1, 2)
    x = x.contiguous().view(x.size(0), -1)
    return encoder.embeddings(x)


def test_flatten_order_matches_torchvggish():
    torch.manual_seed(0)
    audio = VGGishEncoder(VGGishEncoder.Config(**SMALL)).eval()
    patches = torch.randn(3, 96, 64)
    with torch.no_grad():
        torch.testing.assert_close(audio.embed_patches(patches), torchvggish_forward(audio, patches))


def test_wrapped_state_dict_loads(tmp_path):
    source = VGGishEncoder(VGGishEncoder.Config(**SMALL))
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, path)
    audio = VGGishEncoder(VGGishEncoder.Config(weights=str(path), **SMALL))
    assert torch.equal(audio.features[0].weight, source.features[0].weight)


def test_wrong_weight_files_give_clear_errors(tmp_path):
    small = VGGishEncoder(VGGishEncoder.Config(**SMALL))
    path = tmp_path / "small.pt"
    torch.save(small.state_dict(), path)
    other_layout = {"channels": [4, 8, 8, 8, 16, 8], "fc_dims": [32, 16]}
    with pytest.raises(WeightsError) as info:
        VGGishEncoder(VGGishEncoder.Config(weights=str(path), **other_layout))
    message = str(info.value)
    assert str(path) in message and "features.13.weight" in message and "shape mismatches" in message
    assert "channels=[64, 128, 256, 256, 512, 512]" in message  # how to fit the public weights

    foreign = tmp_path / "foreign.pt"
    torch.save({"conv.weight": torch.zeros(2, 2)}, foreign)
    with pytest.raises(WeightsError, match="missing keys .*features.0.weight.*unexpected keys .*conv.weight"):
        VGGishEncoder(VGGishEncoder.Config(weights=str(foreign), **SMALL))

    not_torch = tmp_path / "notes.txt"
    not_torch.write_text("not weights")
    with pytest.raises(WeightsError, match="notes.txt is not a torch weights file"):
        VGGishEncoder(VGGishEncoder.Config(weights=str(not_torch), **SMALL))
    with pytest.raises(FileNotFoundError, match="missing.pth does not exist"):
        VGGishEncoder(VGGishEncoder.Config(weights=str(tmp_path / "missing.pth"), **SMALL))


def test_patches_masks_and_masked_mean():
    torch.manual_seed(0)
    audio = VGGishEncoder(VGGishEncoder.Config(**SMALL)).eval()
    log_mel = torch.randn(3, 250, 64)
    lengths = torch.tensor([250, 100, 30])  # 3 patches, 2 patches, 1 (short, zero-padded) patch
    with torch.no_grad():
        out = audio({"log_mel": log_mel, "lengths": lengths, "mask": torch.ones(3, dtype=torch.bool)})
        expected_mask = torch.tensor([[True, True, True], [True, True, False], [True, False, False]])
        assert torch.equal(out["sequence_mask"], expected_mask)
        second = log_mel[1, :192].clone()
        second[100:] = 0  # frames past the length are zeroed
        embedded = audio.embed_patches(second.view(2, 96, 64))
    torch.testing.assert_close(out["sequence"][1, :2], embedded)
    torch.testing.assert_close(out["pooled"][1], embedded.mean(0))
    assert torch.equal(out["sequence"][1, 2], torch.zeros(16))


def test_other_mel_counts_and_overlapping_patches():
    audio = VGGishEncoder(VGGishEncoder.Config(n_mels=40, patch_frames=64, hop_frames=32, **SMALL))
    out = audio({"log_mel": torch.randn(2, 128, 40), "lengths": torch.tensor([128, 64])})
    assert out["sequence"].shape == (2, 3, 16)  # starts 0, 32, 64
    assert out["sequence_mask"].tolist() == [[True, True, True], [True, True, False]]
    with pytest.raises(ValueError, match="64 mel bands but the audio encoder is built for n_mels=40"):
        audio({"log_mel": torch.randn(2, 128, 64), "lengths": torch.tensor([128, 64])})
    with pytest.raises(ValueError, match="hop_frames"):
        VGGishEncoder.Config(hop_frames=200)
    with pytest.raises(ValueError, match="channels"):
        VGGishEncoder.Config(channels=[8, 8])


def test_batch_without_audio_keeps_every_parameter_in_the_graph():
    audio = VGGishEncoder(VGGishEncoder.Config(**SMALL))
    out = audio({"log_mel": torch.randn(2, 96, 64), "lengths": torch.tensor([0, 0]),
                 "mask": torch.zeros(2, dtype=torch.bool)})
    assert not out["sequence_mask"].any() and torch.equal(out["pooled"], torch.zeros(2, 16))
    out["sequence"].sum().backward()
    assert all(p.grad is not None for p in audio.parameters())

"""ResNet video encoder: weight sources (never downloaded), normalisation, pooling, chunking."""
from __future__ import annotations

import pytest
import torch
import torchvision

from encoders.video import IMAGENET_MEAN, ResNetVideoEncoder, imagenet_weights_file
from encoders.weights import WeightsError

torch.set_num_threads(1)


def frames(batch: int = 2, count: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"frames": torch.randint(0, 256, (batch, count, 3, 32, 32), dtype=torch.uint8),
            "mask": torch.ones(batch, dtype=torch.bool)}


def test_missing_imagenet_weights_say_which_file_goes_where(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert imagenet_weights_file("resnet18") == expected
    with pytest.raises(FileNotFoundError) as info:
        ResNetVideoEncoder(ResNetVideoEncoder.Config(weights="imagenet"))
    message = str(info.value)
    assert str(expected) in message and "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert not expected.exists()  # nothing was downloaded


def test_imagenet_weights_load_from_the_hub_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = torchvision.models.resnet18()
    path = imagenet_weights_file("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)  # a full torchvision checkpoint, classifier included
    video = ResNetVideoEncoder(ResNetVideoEncoder.Config(weights="imagenet"))
    assert video.pretrained and video.out_dim == 512
    assert torch.equal(video.backbone.conv1.weight, reference.conv1.weight)
    assert torch.equal(video.backbone.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)


def test_state_dict_file_and_wrong_files(tmp_path):
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pt"
    torch.save(reference.state_dict(), path)
    video = ResNetVideoEncoder(ResNetVideoEncoder.Config(weights=str(path)))
    assert torch.equal(video.backbone.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)

    with pytest.raises(WeightsError) as info:
        ResNetVideoEncoder(ResNetVideoEncoder.Config(arch="resnet34", weights=str(path)))
    assert str(path) in str(info.value) and "missing keys" in str(info.value)
    assert "torchvision resnet34 state dict" in str(info.value)
    with pytest.raises(FileNotFoundError, match="nope.pt does not exist"):
        ResNetVideoEncoder(ResNetVideoEncoder.Config(weights=str(tmp_path / "nope.pt")))


def test_imagenet_normalisation_happens_inside():
    video = ResNetVideoEncoder(ResNetVideoEncoder.Config(weights="none")).eval()
    seen = []
    video.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    mean_image = (torch.tensor(IMAGENET_MEAN) * 255).round().to(torch.uint8).view(1, 1, 3, 1, 1)
    with torch.no_grad():
        video({"frames": mean_image.expand(1, 2, 3, 8, 8).contiguous(), "mask": torch.ones(1, dtype=torch.bool)})
    assert seen[0].dtype == torch.float32 and seen[0].abs().max() < 0.01


def test_attention_pooling_starts_as_mean_and_learns_a_query():
    video = ResNetVideoEncoder(ResNetVideoEncoder.Config(weights="none", temporal_pooling="attention")).eval()
    inputs = frames()
    with torch.no_grad():
        out = video(inputs)
        torch.testing.assert_close(out["pooled"], out["sequence"].mean(1))
        video.query.normal_()
        out = video(inputs)
    weights = (out["sequence"] @ video.query / 512 ** 0.5).softmax(1)
    torch.testing.assert_close(out["pooled"], (weights.unsqueeze(-1) * out["sequence"]).sum(1))
    assert not torch.allclose(out["pooled"], out["sequence"].mean(1))


def test_frame_chunks_give_the_same_features():
    whole = ResNetVideoEncoder(ResNetVideoEncoder.Config(weights="none")).eval()
    chunked = ResNetVideoEncoder(ResNetVideoEncoder.Config(weights="none", frame_chunk=4)).eval()
    chunked.load_state_dict(whole.state_dict())
    inputs = frames(batch=3)
    with torch.no_grad():
        torch.testing.assert_close(chunked(inputs)["sequence"], whole(inputs)["sequence"])
    with pytest.raises(ValueError, match="frame_chunk"):
        ResNetVideoEncoder.Config(frame_chunk=-1)


def test_resnet50_width():
    video = ResNetVideoEncoder(ResNetVideoEncoder.Config(arch="resnet50", weights="none")).eval()
    with torch.no_grad():
        out = video(frames(batch=1, count=1))
    assert video.out_dim == 2048 and out["pooled"].shape == (1, 2048)

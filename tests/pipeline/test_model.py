"""The multimodal model: every fusion x head end to end, masks, checkpoints, parameter groups."""
from __future__ import annotations

import pickle

import pytest
import torch

import fusion
from pipeline.config import Config, config_from_dict, to_dict
from pipeline.model import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    MultimodalModel,
    build_model,
    load_checkpoint,
    make_checkpoint,
)

torch.set_num_threads(1)
TINY_FUSION = {"concat": {"proj_dim": 8}, "attention": {"dim": 16, "heads": 2, "layers": 1}}
TINY_HEAD = {"classification": {"hidden": 8}, "regression": {}, "gated": {"hidden": 8}, "moe": {"hidden": 8}}


def tiny_config(text_model: str, fusion_type: str = "attention", head_type: str = "classification",
                video: dict | None = None, modalities: tuple[str, ...] = ("audio", "text", "video")) -> Config:
    encoders = {
        "text": {"type": "hf_text", "dropout": 0.0},  # model: inherited from preprocess.text
        "audio": {"type": "vggish", "channels": [4, 8, 8, 8, 16, 16], "fc_dims": [16], "n_mels": 32,
                  "patch_frames": 32, "hop_frames": 32},
        "video": video or {"type": "resnet", "weights": "none"},
    }
    return config_from_dict({
        "preprocess": {"text": {"model": text_model}, "audio": {"n_mels": 32}},
        "model": {"modalities": list(modalities), "encoders": encoders,
                  "fusion": {"type": fusion_type, **TINY_FUSION[fusion_type]},
                  "head": {"type": head_type, **TINY_HEAD[head_type]}},
    })


def make_batch(seed: int = 0) -> dict:
    """Three clips: 0 complete, 1 without video, 2 without audio."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 17, (3, 6), generator=generator)
    ids[:, 0], ids[:, -1] = 2, 3
    ids[1, 4:] = 0
    return {
        "ids": ["dia0_utt0", "dia0_utt1", "dia1_utt0"],
        "text": {"input_ids": ids, "attention_mask": (ids > 0).long(), "mask": torch.ones(3, dtype=torch.bool)},
        "audio": {"log_mel": torch.randn(3, 64, 32, generator=generator), "lengths": torch.tensor([64, 40, 0]),
                  "mask": torch.tensor([True, True, False])},
        "video": {"frames": torch.randint(0, 256, (3, 2, 3, 32, 32), dtype=torch.uint8, generator=generator),
                  "mask": torch.tensor([True, False, True])},
        "labels": {"emotion": torch.tensor([0, 1, 2]), "sentiment": torch.tensor([0, 1, 2]),
                   "regression": torch.zeros(3, 1)},
    }


def checkpoint_of(model: MultimodalModel, cfg: Config) -> dict:
    return make_checkpoint(model, cfg, to_dict(cfg.preprocess), epoch=1, best_metric=0.5, metrics=[])


@pytest.mark.parametrize("head_type", sorted(fusion.HEADS))
@pytest.mark.parametrize("fusion_type", sorted(fusion.FUSIONS))
def test_every_fusion_and_head_saves_and_reloads_identically(tiny_text_model, tmp_path, fusion_type, head_type):
    torch.manual_seed(0)
    cfg = tiny_config(tiny_text_model, fusion_type, head_type)
    model = build_model(cfg).eval()
    batch = make_batch()
    with torch.no_grad():
        out = model(batch)
    assert out["emotion"].shape == (3, 7) and out["sentiment"].shape == (3, 3)
    assert out["regression"].shape == (3, 1) and out["aux_loss"].shape == ()
    assert ("gates" in out) == (head_type in ("gated", "moe"))
    path = tmp_path / "best.pt"
    torch.save(checkpoint_of(model, cfg), path)
    reloaded = MultimodalModel.from_checkpoint(path)
    assert not reloaded.training
    with torch.no_grad():
        again = reloaded(batch)
    for key, value in out.items():
        assert torch.equal(again[key], value), key


@pytest.mark.parametrize("fusion_type", sorted(fusion.FUSIONS))
def test_absent_modalities_are_ignored_whatever_their_tensors_hold(tiny_text_model, fusion_type):
    torch.manual_seed(0)
    model = build_model(tiny_config(tiny_text_model, fusion_type)).eval()
    batch = make_batch()
    with torch.no_grad():
        reference = model(batch)
        batch["video"]["frames"][1] = 255 - batch["video"]["frames"][1]
        batch["audio"]["log_mel"][2] = 100 * torch.randn(64, 32)
        batch["audio"]["log_mel"][1, 40:] = 100.0  # padding past the clip's length
        out = model(batch)
    torch.testing.assert_close(out["emotion"], reference["emotion"])
    torch.testing.assert_close(out["regression"], reference["regression"])


@pytest.mark.parametrize("fusion_type", sorted(fusion.FUSIONS))
def test_gradients_reach_every_trainable_parameter(tiny_text_model, fusion_type):
    torch.manual_seed(0)
    model = build_model(tiny_config(tiny_text_model, fusion_type, "moe")).train()
    out = model(make_batch())
    loss = out["emotion"].logsumexp(1).sum() + out["regression"].pow(2).sum() + out["aux_loss"]
    loss = loss + (out["sentiment"] * torch.randn_like(out["sentiment"])).sum()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, no_grad[:5]


def test_reloading_needs_no_pretrained_weight_files(tiny_text_model, tmp_path):
    import torchvision

    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    cfg = tiny_config(tiny_text_model, video={"type": "resnet", "weights": str(weights)})
    model = build_model(cfg).eval()
    checkpoint = checkpoint_of(model, cfg)
    weights.unlink()
    reloaded = MultimodalModel.from_checkpoint(checkpoint)
    assert reloaded.encoders["video"].pretrained  # the same parameter groups on resume
    batch = make_batch()
    with torch.no_grad():
        assert torch.equal(reloaded(batch)["emotion"], model(batch)["emotion"])


def test_load_checkpoint_rejects_other_files(tiny_text_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    text_file = tmp_path / "notes.pt"
    text_file.write_text("hello")
    with pytest.raises(CheckpointError, match="not a torch checkpoint file"):
        load_checkpoint(text_file)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(CheckpointError, match=f"not a {CHECKPOINT_FORMAT}"):
        load_checkpoint(foreign)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "object": pickle.PickleError("x")}, pickled)
    with pytest.raises(CheckpointError, match="weights_only loading refuses"):
        load_checkpoint(pickled)

    cfg = tiny_config(tiny_text_model, modalities=("text",))
    model = build_model(cfg)
    newer = tmp_path / "newer.pt"
    torch.save({**checkpoint_of(model, cfg), "version": CHECKPOINT_VERSION + 1}, newer)
    with pytest.raises(CheckpointError, match=f"version {CHECKPOINT_VERSION + 1}"):
        load_checkpoint(newer)
    good = tmp_path / "good.pt"
    torch.save(checkpoint_of(model, cfg), good)
    assert load_checkpoint(good)["epoch"] == 1
    mismatched = checkpoint_of(model, cfg)
    mismatched["model"] = {k: v for k, v in mismatched["model"].items() if not k.startswith("head.")}
    with pytest.raises(CheckpointError, match="do not fit"):
        MultimodalModel.from_checkpoint(mismatched)


def test_parameter_groups_split_pretrained_encoders_from_the_rest(tiny_text_model):
    model = build_model(tiny_config(tiny_text_model))
    pretrained = {id(p) for p in model.pretrained_parameters()}
    scratch = {id(p) for p in model.scratch_parameters()}
    assert pretrained == {id(p) for p in model.encoders["text"].parameters()}
    assert not pretrained & scratch and pretrained | scratch == {id(p) for p in model.parameters()}


def test_only_configured_modalities_are_built_and_read(tiny_text_model):
    cfg = Config()
    cfg.preprocess.text.model = tiny_text_model
    cfg.model.modalities = ["text"]
    cfg.model.encoders = {"text": {"type": "hf_text"}}  # unresolved: model inherited in build_model
    cfg.model.fusion = {"type": "concat"}
    model = build_model(cfg)
    assert list(model.encoders) == ["text"] and model.encoders["text"].out_dim == 32
    assert cfg.model.encoders["text"] == {"type": "hf_text"}  # the caller's config is not changed
    batch = make_batch()
    assert model.eval()(batch)["emotion"].shape == (3, 7)  # audio and video in the batch are not read
    del batch["text"]
    with pytest.raises(KeyError, match="no 'text' inputs"):
        model(batch)


def test_gradient_checkpointing_reaches_the_text_encoder(tiny_text_model):
    model = build_model(tiny_config(tiny_text_model, modalities=("text",)))
    model.enable_gradient_checkpointing()
    assert model.encoders["text"].model.is_activation_checkpointing

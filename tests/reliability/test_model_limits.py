"""What the model can take is checked at start: a text length beyond the text model's
position table is refused by preprocessing and by training before any work (it used to build
a cache, then crash mid-epoch), and a checkpoint's stored config is checked like a YAML one and
bounded by the weights it holds before anything is allocated (a small file asking for a huge
head made inference try to allocate hundreds of GB)."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from pipeline import infer, preprocess, train
from pipeline.data.meld import CLIP_DIRS, CSV_NAMES
from tests.conftest import save_tiny_text_model


def test_preprocessing_refuses_a_length_the_text_model_cannot_take(tiny_meld_cache, tmp_path, caplog):
    out = tmp_path / "cache"
    with caplog.at_level(logging.ERROR):
        status = preprocess.main([tiny_meld_cache["meld_root"], str(out), "--workers", "0",
                                  *tiny_meld_cache["preprocess_overrides"], "preprocess.text.max_length=100"])
    assert status == 1
    assert "preprocess.text.max_length: 100 tokens, but text model" in caplog.text and "at most 64" in caplog.text
    assert not out.exists()


def test_training_refuses_a_text_encoder_shorter_than_the_cache(tiny_meld_cache, trained_run, tmp_path, capsys):
    from transformers import AutoConfig, BertModel

    short = save_tiny_text_model(tmp_path / "short_bert")  # same vocabulary, 8 positions
    config = AutoConfig.from_pretrained(short)
    config.max_position_embeddings = 8
    BertModel(config).save_pretrained(short)
    with pytest.raises(SystemExit):
        train.main([*trained_run["overrides"], f"model.encoders.text.model={short}", f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert "preprocess.text.max_length: 16 tokens, but the text encoder" in err and "at most 8" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def forged(trained_run, tmp_path: Path, change) -> Path:
    ckpt = torch.load(trained_run["out"] / "best.pt", weights_only=True)
    change(ckpt["config"])
    path = tmp_path / "forged.pt"
    torch.save(ckpt, path)
    return path


def predict(tiny_meld_cache, checkpoint: Path, out: Path) -> int:
    root = Path(tiny_meld_cache["meld_root"])
    return infer.main(["--checkpoint", str(checkpoint), "--clips", str(root / CLIP_DIRS["dev"]), "--transcripts",
                       str(root / CSV_NAMES["dev"]), "--out", str(out), "--workers", "0", "--device", "cpu"])


def test_a_checkpoint_asking_for_more_than_its_weights_hold_is_refused_before_allocating(
        tiny_meld_cache, trained_run, tmp_path, caplog, monkeypatch):
    from pipeline import model as model_module

    real_build = model_module.build_model
    devices = []

    def recording(cfg, *args, **kwargs):
        devices.append(torch.empty(0).device.type)  # the default device the model would be built on
        return real_build(cfg, *args, **kwargs)

    monkeypatch.setattr(model_module, "build_model", recording)
    path = forged(trained_run, tmp_path, lambda cfg: cfg["model"].update(head={"type": "moe", "hidden": 100_000}))
    with caplog.at_level(logging.ERROR):
        assert predict(tiny_meld_cache, path, tmp_path / "rows.jsonl") == 1
    assert "asks for a model of" in caplog.text and "but its weights hold" in caplog.text
    assert devices == ["meta"]  # never built for real


@pytest.mark.parametrize("change, key", [
    (lambda cfg: cfg["model"]["head"].update(type="no_such_head"), "model.head"),
    (lambda cfg: cfg["preprocess"]["text"].update(max_length=-3), "preprocess.text.max_length"),
    (lambda cfg: cfg["model"].update(modalities=["text", "smell"]), "model.modalities"),
])
def test_a_checkpoints_stored_config_is_checked_like_a_yaml_one(tiny_meld_cache, trained_run, tmp_path, caplog,
                                                                 change, key):
    with caplog.at_level(logging.ERROR):
        assert predict(tiny_meld_cache, forged(trained_run, tmp_path, change), tmp_path / "rows.jsonl") == 1
    assert key in caplog.text and "Traceback" not in caplog.text

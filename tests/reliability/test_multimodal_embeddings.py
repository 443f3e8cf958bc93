"""The embedding pass with every registered encoder type (text, VGGish, Whisper, a Hugging Face
speech encoder, ResNet), by --config and by --checkpoint, then training on its vectors: the
multimodal two-stage recipe of docs/embeddings.md, on the tiny generated MELD cache."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from pipeline import preprocess
from pipeline.data.embeddings import EmbeddingSplit, weights_hash
from reliability_helpers import TRAIN, run_cli

# Tiny random versions of each audio encoder, and whether it reads the waveform.
AUDIO = {
    "vggish": (["model.encoders.audio.channels=[4,4,8,8,8,8]", "model.encoders.audio.fc_dims=[16]"], False),
    "whisper": (["model.encoders.audio.type=whisper", "model.encoders.audio.pretrained=false",
                 "model.encoders.audio.d_model=16", "model.encoders.audio.encoder_layers=1",
                 "model.encoders.audio.encoder_attention_heads=2", "model.encoders.audio.encoder_ffn_dim=32"], True),
    "hf_audio": ([], True),  # the tiny wav2vec2 folder is added by the test
}


@pytest.fixture(scope="module")
def waveform_cache(tiny_meld_cache, tmp_path_factory) -> str:
    """The tiny MELD folder preprocessed with the 16 kHz waveform cached (the speech encoders' input)."""
    cache = tmp_path_factory.mktemp("waveform") / "cache"
    assert preprocess.main([tiny_meld_cache["meld_root"], str(cache), "--workers", "2",
                            *tiny_meld_cache["preprocess_overrides"], "preprocess.audio.waveform=true"]) == 0
    return str(cache)


def test_the_weights_hash_takes_every_kind_of_tensor_a_state_dict_holds():
    """BatchNorm's step counter is a 0-d int64; a bool buffer and an empty tensor also occur."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    net.register_buffer("flag", torch.tensor(True))
    net.register_buffer("empty", torch.zeros(0))
    first = weights_hash({"video": net})
    assert first == weights_hash({"video": net})
    net[1].num_batches_tracked += 1  # the 0-d counter is part of what the hash covers
    assert weights_hash({"video": net}) != first


@pytest.mark.slow
@pytest.mark.parametrize("audio", sorted(AUDIO))
def test_embedding_and_training_on_vectors_work_with_every_encoder_type(
        audio, tiny_meld_cache, waveform_cache, tiny_wav2vec2_model, tmp_path):
    fields, waveform = AUDIO[audio]
    if audio == "hf_audio":
        fields = ["model.encoders.audio.type=hf_audio", f"model.encoders.audio.model={tiny_wav2vec2_model}"]
    cache = waveform_cache if waveform else tiny_meld_cache["cache_dir"]
    overrides = [f"data.cache_dir={cache}", *tiny_meld_cache["preprocess_overrides"],
                 *(["preprocess.audio.waveform=true"] if waveform else []), *fields,
                 "model.encoders.video.weights=none", "model.modalities=[text,audio,video]", "model.fusion.type=concat",
                 *TRAIN]
    # 1. frozen encoders of a config -> vectors -> a dialogue model trained on them
    emb = tmp_path / "emb"
    result = run_cli(["-m", "pipeline.embed", "--config", "configs/default.yaml", "--cache", cache, "--out", emb,
                      "--device", "cpu", *overrides])
    assert result.returncode == 0, result.stderr[-3000:]
    split = EmbeddingSplit(emb / "train")
    assert sorted(split.vectors) == ["audio", "text", "video"]
    for modality, vectors in split.vectors.items():
        assert np.isfinite(vectors).all() and np.abs(vectors).max() > 0, modality
    run = tmp_path / "two_stage"
    result = run_cli(["-m", "pipeline.train", "--config", "configs/default.yaml", *overrides,
                      f"data.embeddings_dir={emb}", "model.context.type=gru", f"output_dir={run}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["best_epoch"] >= 1
    # 2. the encoders of a trained checkpoint embed the same cache
    result = run_cli(["-m", "pipeline.embed", "--checkpoint", run / "best.pt", "--cache", cache,
                      "--out", tmp_path / "from_checkpoint", "--splits", "dev", "--device", "cpu"])
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_array_equal(EmbeddingSplit(tmp_path / "from_checkpoint" / "dev").vectors["audio"],
                                  EmbeddingSplit(emb / "dev").vectors["audio"])

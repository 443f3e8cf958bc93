"""Whisper from a Hugging Face folder or hub name (``type: whisper``, and ``type: hf_audio``
routed to it): reading each saved layout, agreement with transformers' own encoder on clips
that are not padded to 30 s, agreement with the CTranslate2 layout, offline errors, and the
whole model built from a config (tiny random Whisper saved with ``save_pretrained``)."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import encoders
from encoders.hf_audio import AudioModelNotFoundError, HFAudioEncoder
from encoders.models_home import ModelNotInstalledError
from encoders.weights import WeightsError
from encoders.whisper import WhisperAudioEncoder
from tests.encoders.test_whisper import ctranslate2_whisper_variables, speech_like, write_ctranslate2_model

torch.set_num_threads(1)
SIZES = {"d_model": 16, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 32}


def save_tiny_hf_whisper(folder: Path, layout: str = "generation") -> Path:
    """A tiny random Whisper (the sizes of :data:`SIZES`, 80 mel bins, a one-layer decoder)
    with non-trivial biases and norms, and its feature extractor, saved as ``layout``:
    ``generation`` (WhisperForConditionalGeneration, keys ``model.encoder.*``), ``model``
    (WhisperModel, ``encoder.*``), ``sharded`` (safetensors shards and their index) or ``bin``
    (a ``pytorch_model.bin``)."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperModel

    torch.manual_seed(0)
    config = WhisperConfig(**SIZES, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=32, vocab_size=8,
                           max_target_positions=8, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                           decoder_start_token_id=1)
    model = WhisperModel(config) if layout == "model" else WhisperForConditionalGeneration(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "embed_positions" not in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "bin":
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:
        model.save_pretrained(folder, max_shard_size="40KB" if layout == "sharded" else "50GB")
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hf_whisper(tmp_path_factory) -> str:
    return str(save_tiny_hf_whisper(tmp_path_factory.mktemp("tiny_hf_whisper")))


def whisper(weights: str, **fields) -> WhisperAudioEncoder:
    return WhisperAudioEncoder(WhisperAudioEncoder.Config(weights=weights, **{**SIZES, "dropout": 0.0, **fields})).eval()


def saved_encoder(folder: str, max_source_positions: int = 1500):
    """transformers' own WhisperEncoder with the encoder weights of ``folder``; with fewer
    source positions it takes (exactly) ``2 * max_source_positions`` frames, unpadded."""
    from transformers import WhisperConfig, WhisperModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    full = WhisperModel.from_pretrained(folder).encoder
    if max_source_positions == full.config.max_source_positions:
        return full.eval()
    config = WhisperConfig.from_pretrained(folder, max_source_positions=max_source_positions)
    short = WhisperEncoder(config)
    state = full.state_dict()
    state["embed_positions.weight"] = state["embed_positions.weight"][:max_source_positions]
    short.load_state_dict(state)
    return short.eval()


def extractor_features(folder: str, clip: torch.Tensor, frames: int) -> torch.Tensor:
    """The first ``frames`` log-mel frames of ``clip`` by transformers' WhisperFeatureExtractor."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor.from_pretrained(folder)
    features = extractor(clip.numpy(), sampling_rate=16_000, return_tensors="pt")["input_features"]
    return features[:, :, :frames]


# ---------------------------------------------------------------- reading the layouts
@pytest.mark.parametrize("layout", ["generation", "model", "sharded", "bin"])
def test_every_saved_layout_loads_the_saved_encoder(tmp_path, layout):
    folder = save_tiny_hf_whisper(tmp_path / layout, layout)
    if layout == "sharded":
        assert (folder / "model.safetensors.index.json").is_file() and len(list(folder.glob("*.safetensors"))) > 1
    expected = saved_encoder(str(folder)).state_dict()
    loaded = whisper(str(folder))
    assert loaded.pretrained
    state = loaded.model.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


# ---------------------------------------------------------------- agreement, no padding
def test_short_clips_are_encoded_unpadded_as_transformers_would(hf_whisper):
    """A 3 s and a 2 s clip in one batch: the encoder reads 300 frames (not 3000) and 150
    positions, and each clip's outputs are transformers' WhisperEncoder on that clip's own
    frames (its positional table cut to the clip, so that it takes them without padding)."""
    encoder = whisper(hf_whisper)
    seen = {}
    encoder.model.conv1.register_forward_hook(lambda module, args, out: seen.update(frames=args[0].shape[-1]))
    encoder.model.layers[0].register_forward_hook(lambda module, args, out: seen.update(positions=args[0].shape[1]))
    lengths = (48_000, 32_000)
    batch = {"waveform": torch.zeros(2, 48_000), "lengths": torch.tensor(lengths)}
    for index, length in enumerate(lengths):
        batch["waveform"][index, :length] = speech_like(length, seed=index)
    with torch.no_grad():
        out = encoder(batch)
    assert seen == {"frames": 300, "positions": 150}
    assert out["sequence"].shape == (2, 150, 16) and out["sequence_mask"].sum(1).tolist() == [150, 100]
    for index, length in enumerate(lengths):
        frames = length // 160
        features = extractor_features(hf_whisper, batch["waveform"][index, :length], frames)
        with torch.no_grad():
            expected = saved_encoder(hf_whisper, frames // 2)(features).last_hidden_state[0]
        torch.testing.assert_close(out["sequence"][index, :frames // 2], expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out["pooled"][index], expected.mean(0), atol=1e-4, rtol=1e-4)


def test_a_30_second_clip_matches_the_whisper_model(hf_whisper):
    """On Whisper's full window the outputs are WhisperModel's own encoder outputs."""
    # Ending in silence: the frontend reads past a clip's end as zeros, the feature extractor
    # mirrors the last samples of a clip that fills its 30 s.
    clip = torch.cat([speech_like(478_400), torch.zeros(1_600)])
    with torch.no_grad():
        out = whisper(hf_whisper)({"waveform": clip[None], "lengths": torch.tensor([480_000])})
        expected = saved_encoder(hf_whisper)(extractor_features(hf_whisper, clip, 3000)).last_hidden_state
    torch.testing.assert_close(out["sequence"], expected, atol=1e-4, rtol=1e-4)


def test_hf_and_ctranslate2_layouts_of_the_same_weights_agree(hf_whisper, tmp_path):
    reference = saved_encoder(hf_whisper)
    (tmp_path / "faster-whisper").mkdir()
    write_ctranslate2_model(tmp_path / "faster-whisper" / "model.bin", ctranslate2_whisper_variables(reference, 2))
    from_hf, from_ctranslate2 = whisper(hf_whisper), whisper(str(tmp_path / "faster-whisper"))
    inputs = {"waveform": torch.stack([speech_like(40_000), speech_like(40_000, seed=1)]),
              "lengths": torch.tensor([40_000, 17_000])}
    with torch.no_grad():
        hf_out, ct2_out = from_hf(inputs), from_ctranslate2(inputs)
    torch.testing.assert_close(hf_out["sequence"], ct2_out["sequence"], atol=1e-6, rtol=1e-6)
    assert torch.equal(hf_out["sequence_mask"], ct2_out["sequence_mask"])


# ---------------------------------------------------------------- resolution and errors
def cache_snapshot(hub: Path, repo: str) -> Path:
    """The (empty) snapshot folder of ``repo`` in the Hugging Face cache ``hub``, as a download makes it."""
    folder = hub / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    return snapshot


def test_a_hub_name_resolves_from_the_local_cache(hf_whisper, tmp_path, monkeypatch):
    """``weights: org/name`` reads the snapshot in the Hugging Face cache (never downloads);
    a snapshot that holds a CTranslate2 model.bin (faster-whisper) is read as CTranslate2,
    though it has a config.json too."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = cache_snapshot(tmp_path / "hub", "someone/whisper-tiny-random")
    for file in Path(hf_whisper).iterdir():
        (snapshot / file.name).symlink_to(file)
    faster = cache_snapshot(tmp_path / "hub", "someone/faster-whisper-tiny-random")
    write_ctranslate2_model(faster / "model.bin", ctranslate2_whisper_variables(saved_encoder(hf_whisper), 2))
    (faster / "config.json").write_text('{"alignment_heads": [], "suppress_ids": []}')
    expected = whisper(hf_whisper).state_dict()
    for name in ("someone/whisper-tiny-random", "someone/faster-whisper-tiny-random"):
        state = whisper(name).state_dict()
        assert all(torch.equal(state[key], value) for key, value in expected.items()), name
    with pytest.raises(AudioModelNotFoundError) as info:
        whisper("someone/not-downloaded")
    message = str(info.value)
    assert "huggingface-cli download someone/not-downloaded" in message and "`weights: /path/to/folder`" in message
    assert "\n" not in message


def test_missing_or_foreign_weights_are_one_line_errors(hf_whisper, tiny_wav2vec2_model, tmp_path):
    with pytest.raises(ModelNotInstalledError, match="Hugging Face Whisper folder") as info:
        whisper(str(tmp_path / "no_such_folder"))
    assert "\n" not in str(info.value)
    (tmp_path / "config_only").mkdir()
    (tmp_path / "config_only" / "config.json").write_text((Path(hf_whisper) / "config.json").read_text())
    with pytest.raises(WeightsError, match="holds no Whisper weights"):
        whisper(str(tmp_path / "config_only"))
    relu = json.loads((Path(hf_whisper) / "config.json").read_text()) | {"activation_function": "relu"}
    (tmp_path / "config_only" / "config.json").write_text(json.dumps(relu))
    with pytest.raises(WeightsError, match="activation_function='relu'; type whisper runs"):
        whisper(str(tmp_path / "config_only"))
    with pytest.raises(WeightsError, match="'wav2vec2' model, not a Whisper model"):
        whisper(tiny_wav2vec2_model)
    with pytest.raises(WeightsError, match="These weights need d_model=16, encoder_layers=2, "
                                           "encoder_attention_heads=2, encoder_ffn_dim=32, num_mel_bins=80"):
        whisper(hf_whisper, encoder_ffn_dim=64)


def test_random_init_only_when_asked(hf_whisper):
    saved = saved_encoder(hf_whisper).state_dict()
    random = whisper(hf_whisper, pretrained=False)
    shell = WhisperAudioEncoder(WhisperAudioEncoder.Config(weights=hf_whisper, **SIZES), load_weights=False)
    for encoder in (random, shell):
        assert not torch.equal(encoder.model.state_dict()["layers.0.fc1.weight"], saved["layers.0.fc1.weight"])


# ---------------------------------------------------------------- type: hf_audio
def test_hf_audio_builds_a_whisper_model_as_type_whisper(hf_whisper, tiny_wav2vec2_model):
    routed = encoders.build({"type": "hf_audio", "model": hf_whisper, "dropout": 0.0, "freeze_layers": 1}).eval()
    assert isinstance(routed, WhisperAudioEncoder)
    assert {key: getattr(routed.cfg, key) for key in SIZES} == SIZES and routed.cfg.freeze_layers == 1
    direct = whisper(hf_whisper, freeze_layers=1)
    assert routed.state_dict().keys() == direct.state_dict().keys()
    inputs = {"waveform": speech_like(20_000)[None], "lengths": torch.tensor([20_000])}
    with torch.no_grad():
        torch.testing.assert_close(routed(inputs)["sequence"], direct(inputs)["sequence"], rtol=0, atol=0)
    assert not routed.model.layers[0].fc1.weight.requires_grad and routed.model.layers[1].fc1.weight.requires_grad
    unloaded = encoders.build({"type": "hf_audio", "model": hf_whisper}, load_weights=False)
    assert isinstance(unloaded, WhisperAudioEncoder) and unloaded.cfg.pretrained
    # Copies (and pickles) recreate an instance without a config: both kinds survive.
    wav2vec2 = encoders.build({"type": "hf_audio", "model": tiny_wav2vec2_model})
    assert isinstance(copy.deepcopy(wav2vec2), HFAudioEncoder)
    assert isinstance(copy.deepcopy(routed), WhisperAudioEncoder)


# ---------------------------------------------------------------- the whole model
def test_model_from_a_config_with_a_hugging_face_whisper(hf_whisper, tiny_text_model, tmp_path):
    """``model.encoders.audio: {type: whisper, weights: <HF folder>, sizes}``: the model builds,
    runs a batch of the dataset's layout, and its checkpoint reloads without the weights."""
    from pipeline.config import config_from_dict, to_dict
    from pipeline.model import MultimodalModel, build_model, make_checkpoint

    weights = shutil.copytree(hf_whisper, tmp_path / "whisper")
    cfg = config_from_dict({
        "preprocess": {"text": {"model": tiny_text_model}, "audio": {"waveform": True}},
        "model": {"modalities": ["audio", "text"],
                  "encoders": {"text": {"type": "hf_text", "dropout": 0.0},
                               "audio": {"type": "whisper", "weights": str(weights), "dropout": 0.0, **SIZES}},
                  "fusion": {"type": "attention", "dim": 16, "heads": 2, "layers": 1},
                  "head": {"type": "classification", "hidden": 8}}})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    saved = saved_encoder(hf_whisper).state_dict()["layers.1.fc2.weight"]
    assert torch.equal(model.encoders["audio"].model.layers[1].fc2.weight, saved)
    ids = torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]])
    samples = torch.tensor([24_000, 9_000])
    waveform = torch.stack([speech_like(24_000), torch.cat([speech_like(9_000, seed=1), torch.zeros(15_000)])])
    batch = {"text": {"input_ids": ids, "attention_mask": (ids > 0).long(), "mask": torch.ones(2, dtype=torch.bool)},
             "audio": {"log_mel": torch.zeros(2, 150, 64), "lengths": torch.tensor([150, 57]),
                       "waveform": waveform, "waveform_lengths": samples, "mask": torch.tensor([True, True])}}
    with torch.no_grad():
        out = model(batch)
    assert out["emotion"].shape == (2, 7) and torch.isfinite(out["emotion"]).all()
    path = tmp_path / "best.pt"
    torch.save(make_checkpoint(model, cfg, to_dict(cfg.preprocess), epoch=1, best_metric=0.5, metrics=[]), path)
    shutil.rmtree(weights)  # the checkpoint holds the sizes and the weights
    reloaded = MultimodalModel.from_checkpoint(path)
    with torch.no_grad():
        np.testing.assert_allclose(reloaded(batch)["emotion"].numpy(), out["emotion"].numpy(), atol=1e-6)

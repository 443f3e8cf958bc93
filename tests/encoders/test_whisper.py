"""Whisper encoder: CTranslate2 weights conversion, log-mel frontend, masking, freezing, errors."""
from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from encoders.ctranslate2 import read_model
from encoders.models_home import ModelNotInstalledError, installed_model
from encoders.weights import WeightsError
from encoders.whisper import WhisperAudioEncoder

torch.set_num_threads(1)
TINY = {"d_model": 16, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 32}
FETCH = "python -m pipeline.fetch whisper-base"


def whisper(**fields) -> WhisperAudioEncoder:
    torch.manual_seed(0)
    return WhisperAudioEncoder(WhisperAudioEncoder.Config(**{**TINY, "dropout": 0.0, **fields}))


def random_whisper() -> WhisperAudioEncoder:
    """A tiny random encoder whose biases and norms are not at their initial 0/1 values."""
    encoder = whisper(pretrained=False)
    with torch.no_grad():
        for name, parameter in encoder.model.named_parameters():
            if name != "embed_positions.weight":
                parameter.add_(0.1 * torch.randn_like(parameter))
    return encoder.eval()


# ---------------------------------------------------------------- a CTranslate2 writer
# Written from the format of CTranslate2's ModelSpec._serialize (python/ctranslate2/specs/
# model_spec.py) and the layout WhisperLoader writes (python/ctranslate2/converters/
# transformers.py), independently of encoders.ctranslate2 and encoders.whisper.
CT2_TYPE_IDS = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2, np.dtype("int32"): 3,
                np.dtype("float16"): 4}


def write_string(file, text: str) -> None:
    data = text.encode("utf-8")
    file.write(struct.pack("<H", len(data) + 1) + data + b"\0")


def write_ctranslate2_model(path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str] | None = None,
                            spec: str = "WhisperSpec", revision: int = 3) -> Path:
    aliases = aliases or {}
    with open(path, "wb") as file:
        file.write(struct.pack("<I", 6))  # binary version
        write_string(file, spec)
        file.write(struct.pack("<I", revision))
        file.write(struct.pack("<I", len(variables)))
        for name, array in sorted(variables.items()):
            write_string(file, name)
            file.write(struct.pack("<B", array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape))
            data = np.ascontiguousarray(array).tobytes()
            file.write(struct.pack("<B", CT2_TYPE_IDS[array.dtype]) + struct.pack("<I", len(data)) + data)
        file.write(struct.pack("<I", len(aliases)))
        for alias, name in sorted(aliases.items()):
            write_string(file, alias)
            write_string(file, name)
    return path


def ctranslate2_whisper_variables(encoder: torch.nn.Module, heads: int) -> dict[str, np.ndarray]:
    """The variables CTranslate2's WhisperLoader makes of a ``WhisperEncoder`` (float32),
    with a few decoder variables beside them."""
    p = {name: value.detach().numpy().copy() for name, value in encoder.state_dict().items()}
    v = {"encoder/num_heads": np.array(heads, dtype=np.int16),
         "encoder/position_encodings/encodings": p["embed_positions.weight"],
         "encoder/layer_norm/gamma": p["layer_norm.weight"], "encoder/layer_norm/beta": p["layer_norm.bias"],
         "decoder/embeddings/weight": np.random.default_rng(0).standard_normal((7, 16)).astype(np.float32),
         "decoder/scale_embeddings": np.array(0, dtype=np.int8)}
    for conv in ("conv1", "conv2"):
        v[f"encoder/{conv}/weight"], v[f"encoder/{conv}/bias"] = p[f"{conv}.weight"], p[f"{conv}.bias"]
    for i in range(len(encoder.layers)):
        hf, ct2 = f"layers.{i}.", f"encoder/layer_{i}/"
        v[ct2 + "self_attention/linear_0/weight"] = np.concatenate(
            [p[hf + f"self_attn.{x}_proj.weight"] for x in "qkv"])
        no_key_bias = np.zeros_like(p[hf + "self_attn.q_proj.bias"])
        v[ct2 + "self_attention/linear_0/bias"] = np.concatenate(
            [p[hf + "self_attn.q_proj.bias"], no_key_bias, p[hf + "self_attn.v_proj.bias"]])
        for ours, theirs in (("self_attention/linear_1", "self_attn.out_proj"), ("ffn/linear_0", "fc1"),
                             ("ffn/linear_1", "fc2")):
            v[ct2 + ours + "/weight"], v[ct2 + ours + "/bias"] = p[hf + theirs + ".weight"], p[hf + theirs + ".bias"]
        for ours, theirs in (("self_attention/layer_norm", "self_attn_layer_norm"),
                             ("ffn/layer_norm", "final_layer_norm")):
            v[ct2 + ours + "/gamma"], v[ct2 + ours + "/beta"] = p[hf + theirs + ".weight"], p[hf + theirs + ".bias"]
    return v


def quantize(variables: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """CTranslate2's ``--quantization float16|int8`` (ModelSpec._quantize): float16 casts every
    float; int8 stores linear and convolution weights as ``rint(w * 127 / amax(row))`` with
    that scale per row beside them, and leaves the rest float32."""
    if dtype == "float32":
        return variables
    if dtype == "float16":
        return {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in variables.items()}
    out = {}
    for name, value in variables.items():
        quantizable = name.endswith("/weight") and ("/linear_" in name or "/conv" in name)
        if not quantizable:
            out[name] = value
            continue
        rows = value.reshape(value.shape[0], -1)
        scale = (127.0 / np.abs(rows).max(axis=1)).astype(np.float32)
        out[name] = np.rint(rows * scale[:, None]).astype(np.int8).reshape(value.shape)
        out[name + "_scale"] = scale
    return out


def write_whisper_folder(folder: Path, encoder: WhisperAudioEncoder, dtype: str = "float32") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    variables = quantize(ctranslate2_whisper_variables(encoder.model, encoder.cfg.encoder_attention_heads), dtype)
    write_ctranslate2_model(folder / "model.bin", variables)
    return folder


def speech_like(samples: int, seed: int = 0) -> torch.Tensor:
    """A waveform with some structure: two tones under a slow envelope, plus noise."""
    t = torch.arange(samples) / 16_000
    noise = torch.randn(samples, generator=torch.Generator().manual_seed(seed))
    envelope = 0.5 + 0.5 * torch.sin(2 * math.pi * 3 * t)
    return 0.3 * envelope * (torch.sin(2 * math.pi * 220 * t) + 0.5 * torch.sin(2 * math.pi * 1800 * t)) + 0.02 * noise


def clips(*lengths: int) -> dict[str, torch.Tensor]:
    """A padded batch of :func:`speech_like` clips (padding filled with loud noise)."""
    width = max(lengths)
    waveform = 5 * torch.randn(len(lengths), width)
    for index, length in enumerate(lengths):
        waveform[index, :length] = speech_like(length, seed=index)
    return {"waveform": waveform, "lengths": torch.tensor(lengths), "mask": torch.ones(len(lengths), dtype=torch.bool)}


# ---------------------------------------------------------------- conversion
@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_ctranslate2_weights_convert_to_the_same_encoder(tmp_path, dtype):
    original = random_whisper()
    folder = write_whisper_folder(tmp_path / "faster-whisper-tiny", original, dtype)
    loaded = whisper(weights=str(folder)).eval()
    assert loaded.pretrained
    expected, state = original.state_dict(), loaded.state_dict()
    assert state.keys() == expected.keys()
    # Rounding bounds: float16 keeps 11 bits; int8 rows are off by at most half a step (amax / 254).
    atol = {"float32": 0.0, "float16": 2e-3, "int8": 0.02}[dtype]
    for key in expected:
        torch.testing.assert_close(state[key], expected[key], atol=atol, rtol=atol, msg=key)
    inputs = clips(16_000, 9_000)
    with torch.no_grad():
        want, got = original(inputs), loaded(inputs)
    tolerance = {"float32": 1e-5, "float16": 5e-3, "int8": 5e-2}[dtype]
    torch.testing.assert_close(got["sequence"], want["sequence"], atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(got["pooled"], want["pooled"], atol=tolerance, rtol=tolerance)


def test_reader_resolves_aliases_and_skips_unwanted_variables(tmp_path):
    original = random_whisper()
    # CTranslate2 stores equal variables once and aliases the later names to the first.
    with torch.no_grad():
        original.model.layers[1].final_layer_norm.bias.copy_(original.model.layers[0].final_layer_norm.bias)
    variables = ctranslate2_whisper_variables(original.model, 2)
    alias = "encoder/layer_1/ffn/layer_norm/beta"
    del variables[alias]
    path = write_ctranslate2_model(tmp_path / "model.bin", variables, {alias: "encoder/layer_0/ffn/layer_norm/beta"})
    model = read_model(path, keep=lambda name: name.startswith("encoder/"))
    assert model.spec == "WhisperSpec" and model.revision == 3 and model.binary_version == 6
    assert not any(name.startswith("decoder/") for name in model.variables)
    first = torch.from_numpy(variables["encoder/layer_0/ffn/layer_norm/beta"])
    torch.testing.assert_close(model.variables[alias], first)
    loaded = whisper(weights=str(path))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in original.state_dict().items())


def test_converted_forward_matches_whisper_encoder_on_30_seconds():
    """On a full 30 s window the hand-run forward pass is WhisperEncoder's own."""
    encoder = random_whisper()
    features = torch.randn(2, 80, 3000)
    with torch.no_grad():
        ours = encoder.encode(features, torch.tensor([3000, 3000]))
        theirs = encoder.model(features).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_weights_of_another_size_say_which_fields_fit(tmp_path):
    folder = write_whisper_folder(tmp_path / "w", random_whisper())
    with pytest.raises(WeightsError, match="d_model=16, encoder_layers=2, encoder_attention_heads=2, "
                                           "encoder_ffn_dim=32, num_mel_bins=80"):
        whisper(weights=str(folder), encoder_ffn_dim=64)


def test_foreign_and_truncated_files_are_errors(tmp_path):
    original = random_whisper()
    variables = ctranslate2_whisper_variables(original.model, 2)
    path = write_ctranslate2_model(tmp_path / "model.bin", variables, spec="TransformerSpec")
    with pytest.raises(WeightsError, match="not a Whisper model"):
        whisper(weights=str(path))
    path = write_ctranslate2_model(tmp_path / "model.bin", variables)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(WeightsError, match="ends early"):
        whisper(weights=str(path))
    path.write_bytes(b"PK\x03\x04 a zip archive, not a model")
    with pytest.raises(WeightsError, match="binary version"):
        whisper(weights=str(path))


def test_missing_weights_name_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MELD_FUSION_MODELS", str(tmp_path / "empty_home"))
    with pytest.raises(ModelNotInstalledError, match=FETCH):
        whisper()  # weights "" = whisper-base in the models home
    with pytest.raises(ModelNotInstalledError, match=FETCH):
        whisper(weights=str(tmp_path / "no_such_folder"))
    # Building from a checkpoint reads no weights file.
    assert WhisperAudioEncoder(WhisperAudioEncoder.Config(**TINY), load_weights=False).pretrained


# ---------------------------------------------------------------- frontend
def test_log_mel_matches_whisper_feature_extractor():
    from transformers import WhisperFeatureExtractor

    t = np.arange(24_000) / 16_000
    sine = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32)
    reference = WhisperFeatureExtractor()(sine, sampling_rate=16_000, return_tensors="np")["input_features"][0]
    encoder = whisper(pretrained=False)
    ours, frames = encoder.log_mel(torch.from_numpy(sine)[None], torch.tensor([24_000]))
    assert ours.shape == (1, 80, 150) and frames.tolist() == [150]
    # The reference is padded to 30 s (3000 frames); the clip's own frames must agree.
    np.testing.assert_allclose(ours[0].numpy(), reference[:, :150], atol=1e-4)


def test_log_mel_of_a_clip_does_not_depend_on_its_batch():
    encoder = whisper(pretrained=False)
    batch = clips(8_000, 20_000)
    batch["waveform"][1] *= 30  # a louder clip: its peak must not set the other's floor
    features, frames = encoder.log_mel(batch["waveform"], batch["lengths"])
    alone, _ = encoder.log_mel(batch["waveform"][:1, :8_000], batch["lengths"][:1])
    assert frames.tolist() == [50, 125]
    torch.testing.assert_close(features[0, :, :50], alone[0])
    assert (features[0, :, 50:] == 0).all()


# ---------------------------------------------------------------- masks, freezing
def test_padding_a_batch_does_not_change_a_short_clip():
    encoder = random_whisper()
    inputs = clips(5_900, 40_000, 16_000)  # 37 frames: the last position reads one past the end
    inputs["waveform"][1] *= 30
    with torch.no_grad():
        batch = encoder(inputs)
        alone = encoder(clips(5_900))
    assert batch["sequence_mask"].sum(1).tolist() == [19, 125, 50]  # ceil(ceil(n / 160) / 2)
    torch.testing.assert_close(batch["pooled"][0], alone["pooled"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch["sequence"][0, :19], alone["sequence"][0], atol=1e-5, rtol=1e-5)


def test_frozen_layers_get_no_gradient():
    encoder = whisper(pretrained=False, freeze_layers=1).train()
    out = encoder(clips(3_200, 1_600))
    (out["pooled"] * torch.randn_like(out["pooled"])).sum().backward()
    params = dict(encoder.model.named_parameters())
    frozen = [n for n in params if n.startswith(("conv1.", "conv2.", "layers.0.", "embed_positions."))]
    trainable = [n for n in params if n.startswith(("layers.1.", "layer_norm."))]
    assert len(frozen) + len(trainable) == len(params)
    assert all(params[n].grad is None and not params[n].requires_grad for n in frozen)
    assert all(params[n].grad is not None and params[n].grad.abs().sum() > 0 for n in trainable)


def test_freeze_all_then_unfreeze():
    encoder = whisper(pretrained=False, freeze_layers=-1)
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.set_trainable_layers(0)  # progressive unfreezing
    trainable = {n for n, p in encoder.model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in encoder.model.named_parameters()} - {"embed_positions.weight"}
    with pytest.raises(ValueError, match="more than the model's 2 layers"):
        encoder.set_trainable_layers(3)
    with pytest.raises(ValueError, match="freeze_layers"):
        WhisperAudioEncoder.Config(freeze_layers=-2)


def test_gradient_checkpointing_keeps_outputs_and_gradients():
    encoder = whisper(pretrained=False).train()
    inputs = clips(3_200, 1_600)
    reference = encoder(inputs)["pooled"]
    encoder.enable_gradient_checkpointing()
    pooled = encoder(inputs)["pooled"]
    torch.testing.assert_close(pooled, reference)
    pooled.sum().backward()
    assert all(p.grad is not None for p in encoder.parameters() if p.requires_grad)


def test_clips_past_30_seconds_are_cut():
    encoder = whisper(pretrained=False)
    waveform = speech_like(16_000 * 31)[None]
    with torch.no_grad():
        out = encoder({"waveform": waveform, "lengths": torch.tensor([16_000 * 31])})
    assert out["sequence"].shape == (1, 1500, 16) and out["sequence_mask"].all()


@pytest.mark.skipif(installed_model("whisper-base") is None, reason="whisper-base is not installed")
def test_installed_whisper_base_loads():
    encoder = WhisperAudioEncoder(WhisperAudioEncoder.Config(dropout=0.0)).eval()
    with torch.no_grad():
        out = encoder(clips(32_000, 16_000))
    assert out["pooled"].shape == (2, 512) and torch.isfinite(out["sequence"]).all()


def test_a_batch_with_a_log_mel_names_the_waveform_lengths_apart():
    """The pipeline's audio batch holds the log-mel's ``lengths`` (frames) beside the
    waveform's ``waveform_lengths`` (samples); the encoder reads the samples."""
    encoder = random_whisper()
    waveform = torch.randn(2, 8000) * 0.1
    samples = torch.tensor([8000, 3000])
    alone = encoder({"waveform": waveform, "lengths": samples})
    batch = encoder({"waveform": waveform, "waveform_lengths": samples, "lengths": torch.tensor([50, 19]),
                     "log_mel": torch.zeros(2, 50, 64)})
    torch.testing.assert_close(batch["pooled"], alone["pooled"])
    assert batch["sequence_mask"].sum(1).tolist() == [25, 10]  # 20 ms positions of 0.5 s and 0.1875 s

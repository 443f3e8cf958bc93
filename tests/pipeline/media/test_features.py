from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from pipeline.config import AudioFeatures, PreprocessConfig, TextFeatures, VideoFeatures
from pipeline.media.decode import ClipError
from pipeline.media.features import extract_features, log_mel
from pipeline.media.text import Utterance, build_text, normalize_text, tokenize
from tests.pipeline.meld_fixtures import make_clip, save_tokenizer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(save_tokenizer(tmp_path_factory.mktemp("tok")))


def test_log_mel_matches_librosa():
    rate = 16000
    rng = np.random.default_rng(0)
    t = np.arange(int(1.7 * rate)) / rate
    signal = (0.4 * np.sin(2 * np.pi * 300 * t) * (1 + np.sin(2 * np.pi * 3 * t))
              + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    ours = log_mel(signal, AudioFeatures())
    # VGGish's frontend written with librosa: 400-sample frames every 160 samples, periodic
    # Hann window, 512-point FFT magnitude, HTK mel filters 125-7500 Hz, log(mel + 0.01).
    frames = librosa.util.frame(signal, frame_length=400, hop_length=160)  # [400, T]
    window = librosa.filters.get_window("hann", 400, fftbins=True)[:, None]
    magnitude = np.abs(np.fft.rfft(frames * window, n=512, axis=0))
    filters = librosa.filters.mel(sr=rate, n_fft=512, n_mels=64, fmin=125, fmax=7500, htk=True, norm=None)
    reference = np.log(filters @ magnitude + 0.01).T
    assert ours.shape == reference.shape == (1 + (signal.size - 400) // 160, 64)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4)


def test_log_mel_caps_and_pads():
    cfg = AudioFeatures(max_seconds=1.0)
    assert log_mel(np.zeros(5 * 16000, dtype=np.float32), cfg).shape == (1 + (16000 - 400) // 160, 64)
    tiny = log_mel(np.zeros(100, dtype=np.float32), cfg)
    assert tiny.shape == (1, 64)
    np.testing.assert_allclose(tiny, np.log(0.01), rtol=1e-6)  # silence is log(log_offset)


def test_normalize_text_repairs_mojibake_and_whitespace():
    assert normalize_text("I\x92m  fine\x85") == "I’m fine…"
    assert normalize_text("\x93Hi\x94 \x96 \x97 \x91x\x92") == "“Hi” – — ‘x’"
    assert normalize_text("  a\u00a0b\r\n\tc  ") == "a b c"
    assert normalize_text("Café — it’s “ok”") == "Café — it’s “ok”"  # correct UTF-8 is left alone
    assert normalize_text("x\x81y") == "x\x81y"  # no cp1252 character for 0x81


def test_build_text_with_speaker_and_context():
    context = (("Monica", "Hi."), ("Ross", "Hey\x92"), ("Joey", "  How  you doin?"))
    cfg = TextFeatures(context_turns=2)
    target, turns = build_text("I\x92m fine.", "Rachel", context, cfg)
    assert target == "Rachel: I’m fine."
    assert turns == ["Joey: How you doin?", "Ross: Hey’"]  # newest first, only 2
    assert build_text("I\x92m fine.", "Rachel", context, TextFeatures(speaker=False)) == ("I’m fine.", [])


def test_tokenize_never_cuts_the_target(tokenizer):
    target = "joey: how you doin?"
    turns = ["monica: oh my god!", "chandler: i am so happy."]
    ids, mask = tokenize(target, turns, tokenizer, max_length=64)
    assert ids.dtype == np.int32 and mask.dtype == np.int8 and mask.all()
    tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
    assert tokens == ["[CLS]", "joey", ":", "how", "you", "doin", "?", "[SEP]", "monica", ":", "oh", "my", "god",
                      "!", "[SEP]", "chandler", ":", "i", "am", "so", "happy", ".", "[SEP]"]
    short, _ = tokenize(target, turns, tokenizer, max_length=12)
    assert tokenizer.convert_ids_to_tokens(short.tolist()) == [
        "[CLS]", "joey", ":", "how", "you", "doin", "?", "[SEP]", "monica", ":", "oh", "[SEP]"]
    alone, _ = tokenize(target, turns, tokenizer, max_length=8)  # no room for context
    assert tokenizer.convert_ids_to_tokens(alone.tolist()) == ["[CLS]", "joey", ":", "how", "you", "doin", "?", "[SEP]"]
    cut, _ = tokenize(target + " " + "yes " * 20, [], tokenizer, max_length=10)
    assert len(cut) == 10


def test_extract_features_text_only(tokenizer):
    pcfg = PreprocessConfig(modalities=["text"], text=TextFeatures(context_turns=1))
    arrays, modalities = extract_features(None, Utterance("I\x92m fine", "Joey", (("Monica", "Okay"),)),
                                          pcfg, tokenizer)
    assert modalities == ["text"] and set(arrays) == {"input_ids", "attention_mask", "target_mask"}
    assert tokenizer.decode(arrays["input_ids"].tolist()) == "[CLS] joey : i ’ m fine [SEP] monica : okay [SEP]"
    plain, _ = extract_features(None, "how you doin", pcfg, tokenizer)
    assert tokenizer.convert_ids_to_tokens(plain["input_ids"].tolist()) == ["[CLS]", "how", "you", "doin", "[SEP]"]


def test_extract_features_from_a_clip(tmp_path, tokenizer):
    pcfg = PreprocessConfig(video=VideoFeatures(num_frames=3, size=16))
    clip = make_clip(tmp_path / "c.mp4", 1.0)
    arrays, modalities = extract_features(clip, "oh my god", pcfg, tokenizer)
    assert modalities == ["audio", "text", "video"]
    assert arrays["input_ids"].dtype == np.int32 and arrays["attention_mask"].dtype == np.int8
    assert arrays["log_mel"].dtype == np.float32 and arrays["log_mel"].shape[1] == 64
    assert 95 <= arrays["log_mel"].shape[0] <= 104  # ~1 s at a 10 ms hop
    assert arrays["frames"].shape == (3, 16, 16, 3) and arrays["frames"].dtype == np.uint8

    silent = make_clip(tmp_path / "silent.mp4", 1.0, audio=False)
    arrays, modalities = extract_features(silent, None, pcfg, tokenizer)
    assert modalities == ["video"] and set(arrays) == {"frames"}

    audio_only = PreprocessConfig(modalities=["audio"])
    with pytest.raises(ClipError, match="none of the modalities"):
        extract_features(silent, "text is not wanted", audio_only, tokenizer)
    with pytest.raises(ClipError, match="missing file"):
        extract_features(tmp_path / "nope.mp4", "hi", pcfg, tokenizer)


def test_the_waveform_is_stored_as_16_bit_pcm_capped_at_max_seconds(tmp_path, tokenizer):
    from pipeline.media.decode import load_clip
    from pipeline.media.features import WAVEFORM_SCALE, pcm16

    clip = make_clip(tmp_path / "c.mp4", 2.0)
    audio = AudioFeatures(max_seconds=1.5, waveform=True)
    arrays, _ = extract_features(clip, None, PreprocessConfig(modalities=["audio"], audio=audio), tokenizer)
    decoded = load_clip(clip, AudioFeatures(max_seconds=5.0), None).waveform  # the whole 2 s, float32
    assert arrays["waveform"].dtype == np.int16 and arrays["waveform"].shape == (24000,)  # 1.5 s at 16 kHz
    np.testing.assert_allclose(arrays["waveform"] / WAVEFORM_SCALE, decoded[:24000], atol=1 / WAVEFORM_SCALE)
    # the sine (amplitude 1/8, at -3 dB in each channel of the stereo clip), not silence
    assert np.abs(arrays["waveform"]).max() > 0.08 * WAVEFORM_SCALE
    # The log-mel is still there (VGGish reads it), and without the option no waveform is stored.
    assert arrays["log_mel"].shape[0] == 1 + (24000 - 400) // 160
    plain, _ = extract_features(clip, None, PreprocessConfig(modalities=["audio"]), tokenizer)
    assert set(plain) == {"log_mel"}
    # Longer input than max_seconds is cut, and samples past full scale are clipped.
    assert pcm16(np.full(40000, 1.5, np.float32), audio).tolist() == [WAVEFORM_SCALE] * 24000


def test_face_crop_notes_how_many_frames_showed_a_face(tmp_path, tokenizer, monkeypatch):
    from pipeline.media import decode as media

    clip = make_clip(tmp_path / "c.mp4", 1.0)
    frames_seen = iter(range(100))
    monkeypatch.setattr(media, "largest_face", lambda frame: (4, 4, 8, 8) if next(frames_seen) % 2 else None)
    pcfg = PreprocessConfig(modalities=["video"], video=VideoFeatures(num_frames=4, size=16, face_crop="opencv"))
    notes = {}
    arrays, _ = extract_features(clip, None, pcfg, tokenizer, notes)
    assert notes == {"face_frames": 2} and arrays["frames"].shape == (4, 16, 16, 3)
    notes = {}
    extract_features(clip, None, PreprocessConfig(modalities=["video"], video=VideoFeatures(num_frames=4, size=16)),
                     tokenizer, notes)
    assert notes == {}  # no face crop, nothing to note

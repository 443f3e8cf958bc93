"""Audio as real files carry it: the stream marked default is the one decoded (not merely
the first), every channel layout of one sound decodes to one level (5.1 was 3.4 times
louder than stereo), and a clip whose middle is damaged is kept with what was lost written
into its manifest row (it was "ok" with a third of its audio silently missing)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from reliability_helpers import read_manifest

from pipeline import preprocess
from pipeline.config import AudioFeatures
from pipeline.data.meld import CLIP_DIRS
from pipeline.media.decode import load_clip

RATE = 16000


def ffmpeg(*args: str | Path) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *map(str, args)], check=True)


def tone(frequency: int, seconds: float = 1.0) -> list[str]:
    return ["-f", "lavfi", "-i", f"sine=frequency={frequency}:sample_rate={RATE}:duration={seconds}"]


def dominant_hz(waveform: np.ndarray) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(waveform))) * RATE / waveform.size)


def rms(waveform: np.ndarray) -> float:
    return float(np.sqrt(np.mean(waveform.astype(np.float64) ** 2)))


@pytest.mark.parametrize("suffix, codec", [(".mkv", "pcm_s16le"), (".mp4", "aac")])
def test_the_stream_marked_default_is_decoded_not_the_first(tmp_path, suffix, codec):
    clip = tmp_path / f"two_languages{suffix}"
    ffmpeg(*tone(300), *tone(1000), "-map", "0:a", "-map", "1:a", "-c:a", codec,
           "-disposition:a:0", "0", "-disposition:a:1", "default", clip)
    waveform = load_clip(clip, AudioFeatures(), None).waveform
    assert dominant_hz(waveform) == pytest.approx(1000, abs=5)
    # Without any default mark, the first stream is the one.
    plain = tmp_path / f"unmarked{suffix}"
    ffmpeg(*tone(300), *tone(1000), "-map", "0:a", "-map", "1:a", "-c:a", codec,
           "-disposition:a:0", "0", "-disposition:a:1", "0", plain)
    assert dominant_hz(load_clip(plain, AudioFeatures(), None).waveform) == pytest.approx(300, abs=5)


def test_one_sound_decodes_to_one_level_in_mono_stereo_and_5_1(tmp_path):
    """The same tone on every channel: mono, stereo and 5.1 give the same samples; a tone on
    the LFE channel alone is left out of the downmix, as the standard downmix does."""
    layouts = {"mono": "mono|c0=c0", "stereo": "stereo|c0=c0|c1=c0",
               "5.1": "5.1|c0=c0|c1=c0|c2=c0|c3=c0|c4=c0|c5=c0", "lfe": "5.1|c3=c0"}
    levels = {}
    for name, pan in layouts.items():
        clip = tmp_path / f"{name}.wav"
        ffmpeg(*tone(440), "-af", f"pan={pan}", "-c:a", "pcm_f32le", clip)
        levels[name] = rms(load_clip(clip, AudioFeatures(), None).waveform)
    source = 0.125 / np.sqrt(2)  # ffmpeg's sine: amplitude 1/8
    assert levels["mono"] == pytest.approx(source, rel=0.01)
    assert levels["stereo"] == pytest.approx(source, rel=0.01)
    assert levels["5.1"] == pytest.approx(source, rel=0.01)
    assert levels["lfe"] < 0.01 * source


def damage_middle(clip: Path, share: float = 1 / 3) -> None:
    """Overwrite the middle ``share`` of the clip's mdat box (the coded samples, not the
    index) with random bytes, as a bad sector or a broken download would."""
    data = bytearray(clip.read_bytes())
    at = data.find(b"mdat")
    size = int.from_bytes(data[at - 4: at], "big")
    start = at + 4 + int(size * (1 - share) / 2)
    end = start + int(size * share)
    data[start:end] = np.random.default_rng(0).integers(0, 256, end - start, dtype=np.uint8).tobytes()
    clip.write_bytes(bytes(data))


def test_a_clip_with_a_damaged_middle_is_kept_and_its_row_says_what_was_lost(tiny_meld_cache, tmp_path):
    root = tmp_path / "meld"
    shutil.copytree(tiny_meld_cache["meld_root"], root)
    damaged = root / CLIP_DIRS["dev"] / "dia0_utt0.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x36:rate=12:duration=3", *tone(440, 3.0),
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", damaged)
    damage_middle(damaged, share=0.25)
    out = tmp_path / "cache"
    assert preprocess.main([str(root), str(out), "--splits", "dev", "--workers", "1",
                            *tiny_meld_cache["preprocess_overrides"]]) == 0
    rows = read_manifest(out / "dev")
    row = rows["dia0_utt0"]
    assert row["status"] == "ok"
    assert "Invalid data" in row["decode_errors"]
    assert re.search(r"audio: [\d.]+ s decoded of [\d.]+ s", row["decode_errors"]), row["decode_errors"]
    clean = [r for id_, r in rows.items() if id_ != "dia0_utt0" and r["status"] == "ok"]
    assert clean and all("decode_errors" not in r for r in clean)

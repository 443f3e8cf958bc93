from __future__ import annotations

import subprocess

import numpy as np
import pytest

from pipeline.config import AudioFeatures, VideoFeatures
from pipeline.media import decode as media
from pipeline.media.decode import load_clip
from pipeline.media.probe import ClipError, probe, probe_ffprobe, probe_mp4
from tests.pipeline.meld_fixtures import make_clip


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    return {
        "av": make_clip(folder / "av.mp4", 2.0, channels=6, sample_rate=48000),
        "ramp": make_clip(folder / "ramp.mp4", 3.0, width=32, height=32, brightness_per_second=60),
        "long": make_clip(folder / "long.mp4", 30.0, width=32, height=32, fps=10, brightness_per_second=8),
        "portrait": make_clip(folder / "portrait.mp4", 1.0, width=48, height=64),
        "short": make_clip(folder / "short.mp4", 0.3, fps=24),
        "silent": make_clip(folder / "silent.mp4", 1.0, audio=False),
        "audio_only": make_clip(folder / "audio_only.mp4", 1.5, video=False, channels=1, sample_rate=44100),
    }


def test_mp4_header_reader_agrees_with_ffprobe(clips):
    for name in ("av", "portrait", "silent", "audio_only", "long"):
        fast, slow = probe_mp4(clips[name]), probe_ffprobe(clips[name])
        assert fast is not None, name
        assert (fast.has_audio, fast.has_video) == (slow.has_audio, slow.has_video), name
        assert fast.duration == pytest.approx(slow.duration, abs=0.05), name
        assert (fast.width, fast.height) == (slow.width, slow.height), name
        assert fast.fps == pytest.approx(slow.fps, rel=0.01), name


def test_probe_other_containers_through_ffprobe(tmp_path, clips):
    mkv = tmp_path / "clip.mkv"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(clips["av"]), "-c", "copy", str(mkv)], check=True)
    assert probe_mp4(mkv) is None
    info = probe(mkv)
    assert info.has_audio and info.has_video and info.duration == pytest.approx(2.0, abs=0.1)
    clip = load_clip(mkv, AudioFeatures(), VideoFeatures(num_frames=3, size=16))
    assert clip.frames.shape == (3, 16, 16, 3)


@pytest.mark.parametrize("name, duration", [("av", 2.0), ("portrait", 1.0), ("short", 0.3)])
def test_decodes_mono_16k_and_square_frames(clips, name, duration):
    clip = load_clip(clips[name], AudioFeatures(), VideoFeatures(num_frames=5, size=24))
    assert clip.frames.shape == (5, 24, 24, 3) and clip.frames.dtype == np.uint8
    assert clip.waveform.dtype == np.float32 and clip.waveform.ndim == 1
    # AAC adds up to ~50 ms of priming/padding
    assert clip.waveform.size == pytest.approx(duration * 16000, abs=0.06 * 16000)
    # the sine is there, not silence or garbage (the 5.1 "av" clip holds it in the centre
    # channel alone, whose weight in the mean downmix is 1 / 3.41)
    assert 0.03 < np.abs(clip.waveform).max() <= 1.0
    spectrum = np.abs(np.fft.rfft(clip.waveform))
    assert np.argmax(spectrum) * 16000 / clip.waveform.size == pytest.approx(440, abs=4)


def test_audio_of_any_rate_and_channels_is_resampled(clips):
    clip = load_clip(clips["audio_only"], AudioFeatures(sample_rate=8000, fmax=3800), None)
    assert clip.frames is None
    assert clip.waveform.size == pytest.approx(1.5 * 8000, abs=0.06 * 8000)
    spectrum = np.abs(np.fft.rfft(clip.waveform[:8000]))
    assert np.argmax(spectrum) == pytest.approx(440, abs=2)  # 1 s window: bin = Hz


def test_frames_are_sampled_uniformly(clips):
    """Brightness = 60 * t: the k-th of N frames shows t ~ (k + 0.5) * duration / N."""
    clip = load_clip(clips["ramp"], None, VideoFeatures(num_frames=6, size=16))
    shown = clip.frames.reshape(6, -1).mean(axis=1) / 60
    expected = (np.arange(6) + 0.5) * 3.0 / 6
    np.testing.assert_allclose(shown, expected, atol=0.15)


def test_long_clip_seeks_to_each_frame_and_caps_audio(clips):
    args = media.video_output(clips["long"], 30.0, 4, 16, crop=True).get_args()
    assert args.count("-ss") == 4  # one keyframe seek per sampled frame, no full decode
    clip = load_clip(clips["long"], AudioFeatures(max_seconds=2.5), VideoFeatures(num_frames=4, size=16))
    shown = clip.frames.reshape(4, -1).mean(axis=1) / 8
    np.testing.assert_allclose(shown, (np.arange(4) + 0.5) * 30 / 4, atol=0.3)
    assert clip.waveform.size == 2.5 * 16000


def test_very_short_clip_repeats_frames(clips):
    clip = load_clip(clips["short"], None, VideoFeatures(num_frames=16, size=16))
    assert clip.frames.shape == (16, 16, 16, 3)


def test_portrait_is_centre_cropped_from_the_short_side(tmp_path):
    # Left half red, right half blue, top half (of a portrait frame) different from the bottom:
    # a centre crop keeps both colours side by side and drops the top and bottom quarter.
    path = tmp_path / "portrait.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                    "color=red:s=32x64:d=1,format=rgb24,geq=r='if(lt(X,16),255,0)':g='if(lt(Y,16),255,0)':b='if(lt(X,16),0,255)'",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv444p", "-qp", "0", str(path)],
                   check=True)
    frames = load_clip(path, None, VideoFeatures(num_frames=2, size=16)).frames
    left, right = frames[0, 8, :4].mean(axis=0), frames[0, 8, -4:].mean(axis=0)
    assert left[0] > 200 and left[2] < 50 and right[2] > 200 and right[0] < 50
    assert frames[0, :, :, 1].max() < 50  # the green top quarter was cropped away


def test_clip_without_audio_or_video_stream(clips):
    silent = load_clip(clips["silent"], AudioFeatures(), VideoFeatures(num_frames=2, size=16))
    assert silent.waveform is None and silent.frames.shape == (2, 16, 16, 3)
    mute = load_clip(clips["audio_only"], AudioFeatures(), VideoFeatures(num_frames=2, size=16))
    assert mute.frames is None and mute.waveform.size > 0


def test_unusable_files_raise_clip_error_with_reason(tmp_path, clips):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video\n")
    data = clips["av"].read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "folder.mp4").mkdir()
    srt = tmp_path / "subs.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(srt), "-c:s", "mov_text",
                    str(tmp_path / "subtitles_only.mp4")], check=True)
    expected = {"missing.mp4": "missing file", "empty.mp4": "empty file", "folder.mp4": "not a file",
                "subtitles_only.mp4": "no audio or video stream"}
    for name, reason in expected.items():
        with pytest.raises(ClipError) as info:
            load_clip(tmp_path / name, AudioFeatures(), VideoFeatures())
        assert info.value.reason == reason and info.value.path.endswith(name)
    for name in ("text.mp4", "truncated.mp4"):
        with pytest.raises(ClipError) as info:
            load_clip(tmp_path / name, AudioFeatures(), VideoFeatures())
        assert info.value.reason.startswith("unreadable: ") and len(info.value.reason) > 12
        assert str(tmp_path) not in info.value.reason  # short, no full paths


def test_truncated_clip_with_its_header_first_is_refused(tmp_path, clips):
    """With the moov box first (faststart), a cut file still probes fine and ffmpeg exits 0
    after decoding what is there; the clip must not pass as a complete one."""
    faststart = tmp_path / "faststart.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(clips["av"]), "-c", "copy",
                    "-movflags", "+faststart", str(faststart)], check=True)
    whole = load_clip(faststart, AudioFeatures(), VideoFeatures(num_frames=8, size=16))
    assert whole.frames.shape[0] == 8
    data = faststart.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 3])
    for audio, video in ((AudioFeatures(), VideoFeatures(num_frames=8, size=16)), (AudioFeatures(), None)):
        with pytest.raises(ClipError) as info:
            load_clip(tmp_path / "cut.mp4", audio, video)
        assert info.value.reason.startswith("truncated: ")


def test_awkward_paths_are_passed_as_arguments_not_shell(tmp_path, clips, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = "-it's a \"clip\" $(touch pwned) `touch pwned2`; é ✓.mp4"
    target = tmp_path / "dir with space" / name
    target.parent.mkdir()
    target.write_bytes(clips["av"].read_bytes())
    monkeypatch.chdir(target.parent)
    clip = load_clip(name, AudioFeatures(), VideoFeatures(num_frames=2, size=16))  # relative, starts with "-"
    assert clip.frames.shape == (2, 16, 16, 3) and clip.waveform.size > 0
    assert not list(tmp_path.rglob("pwned*"))


def test_face_crop_follows_the_detected_face(monkeypatch):
    frames = np.zeros((3, 40, 60, 3), dtype=np.uint8)
    frames[:, 10:20, 40:50] = 255  # the "face": a white square right of centre
    boxes = {0: (40, 10, 10, 10)}  # detected in the first frame only
    calls = iter(range(3))
    monkeypatch.setattr(media, "largest_face", lambda frame: boxes.get(next(calls)))
    out, found = media.face_crop(frames, size=20)
    assert out.shape == (3, 20, 20, 3) and found == 1
    for frame in out:  # every frame uses the nearest detection: the face fills the crop's centre
        assert frame[8:12, 8:12].min() == 255 and frame[0, 0].max() == 0


def test_face_crop_without_a_face_falls_back_to_centre(clips):
    centre = load_clip(clips["av"], None, VideoFeatures(num_frames=3, size=24)).frames
    faces = load_clip(clips["av"], None, VideoFeatures(num_frames=3, size=24, face_crop=True)).frames
    assert faces.shape == centre.shape

    def blocks(frames):  # 4x4-pixel block means: the same view survives different resampling
        return frames.reshape(3, 6, 4, 6, 4, 3).mean(axis=(2, 4))

    assert np.abs(blocks(faces.astype(float)) - blocks(centre.astype(float))).mean() < 6

"""Tests of the sample-data generator: MELD layout, CSV format, streams, determinism,
odd clips for other tests, and that each modality carries the emotion."""
from __future__ import annotations

import colorsys
import csv
import io
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.labels import EMOTIONS
from pipeline.sample import clip as sample_clip
from pipeline.sample.cli import main
from pipeline.sample.clip import make_clip
from pipeline.sample.folder import generate
from pipeline.sample.plan import CLIP_DIRS, CSV_NAMES, SPLITS, Difficulty, plan_split, split_sizes
from pipeline.sample.render import EMOTION_STYLES
from pipeline.sample.text import (AMBIGUOUS, FILLERS, MELD_COLUMNS, TEMPLATES, format_time, utterance_text,
                                  write_meld_csv)

SMALL = {"width": 64, "height": 36, "duration_range": (1.0, 1.0), "workers": 2}
TIME = re.compile(r"^\d\d:\d\d:[0-5]\d,\d\d\d$")


def probe(path: Path) -> dict[str, list[dict]]:
    """ffprobe's streams of ``path`` grouped by codec type ({"video": [...], "audio": [...]})."""
    out = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(path)],
                         capture_output=True, check=True, text=True).stdout
    streams: dict[str, list[dict]] = {"video": [], "audio": []}
    for stream in json.loads(out)["streams"]:
        streams.setdefault(stream["codec_type"], []).append(stream)
    return streams


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a MELD CSV as dicts."""
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def seconds(text: str) -> float:
    """MELD's ``hh:mm:ss,mmm`` as seconds."""
    hms, ms = text.split(",")
    h, m, s = (int(v) for v in hms.split(":"))
    return 3600 * h + 60 * m + s + int(ms) / 1000


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """All three splits, 1 train clip per emotion, small frames, 1 s clips."""
    root = tmp_path_factory.mktemp("meld") / "MELD.Raw"
    return root, generate(root, clips_per_class=1, seed=3, **SMALL)


def test_layout_every_row_has_its_clip_and_extras_have_none(sample_root):
    root, summary = sample_root
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [*CSV_NAMES.values(), *CLIP_DIRS.values()])
    for split in SPLITS:
        rows = read_rows(root / CSV_NAMES[split])
        named = {f"dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}.mp4" for r in rows}
        on_disk = {p.name for p in (root / CLIP_DIRS[split]).iterdir()}
        assert named <= on_disk
        extras = on_disk - named
        assert extras == set(summary["splits"][split]["extras"])
        expected_per_class = 1 if split == "train" else 2  # dev/test: a third, at least 2
        assert [sum(r["Emotion"] == e for r in rows) for e in EMOTIONS] == [expected_per_class] * 7
    assert summary["splits"]["train"]["extras"] == []
    assert summary["splits"]["test"]["extras"] == ["final_videos_testdia0_utt0.mp4"]
    (dev_extra,) = summary["splits"]["dev"]["extras"]
    assert re.fullmatch(r"dia\d+_utt\d+\.mp4", dev_extra)
    assert summary["clips"] == 7 + 15 + 15
    assert all(info["off_label"] == {"audio": 0, "video": 0} for info in summary["splits"].values())


def test_csv_is_meld_shaped(sample_root):
    root, _ = sample_root
    for split in SPLITS:
        raw = (root / CSV_NAMES[split]).read_bytes()
        assert raw.startswith((",".join(MELD_COLUMNS) + "\r\n").encode())
        assert raw.count(b"\n") == raw.count(b"\r\n")  # CRLF everywhere, as in MELD
        assert not raw.startswith(b"\xef\xbb\xbf")
        assert re.search(rb',"\d\d:\d\d:\d\d,\d\d\d","\d\d:\d\d:\d\d,\d\d\d"\r\n', raw)
        rows = read_rows(root / CSV_NAMES[split])
        assert [int(r["Sr No."]) for r in rows] == list(range(1, len(rows) + 1))
        by_dialogue: dict[str, list[int]] = {}
        for row in rows:
            assert TIME.match(row["StartTime"]) and TIME.match(row["EndTime"])
            assert seconds(row["EndTime"]) - seconds(row["StartTime"]) == pytest.approx(1.0)
            by_dialogue.setdefault(row["Dialogue_ID"], []).append(int(row["Utterance_ID"]))
            expected = {"joy": {"positive"}, "neutral": {"neutral"},
                        "surprise": {"positive", "negative"}}.get(row["Emotion"], {"negative"})
            assert row["Sentiment"] in expected
            assert row["Utterance"] and row["Speaker"]
        assert all(ids == list(range(len(ids))) for ids in by_dialogue.values())
        assert len(by_dialogue) >= 2 and max(map(len, by_dialogue.values())) >= 3


def test_streams_of_generated_clips(sample_root):
    root, _ = sample_root
    channels = set()
    for clip in sorted((root / CLIP_DIRS["dev"]).glob("*.mp4")):
        streams = probe(clip)
        (video,), (audio,) = streams["video"], streams["audio"]
        assert (video["codec_name"], video["pix_fmt"]) == ("h264", "yuv420p")
        assert (video["width"], video["height"]) == (64, 36)
        assert video["avg_frame_rate"] == "24/1"
        assert (audio["codec_name"], audio["sample_rate"]) == ("aac", "48000")
        channels.add(audio["channels"])
    assert channels == {2, 6}  # both channel counts occur, as in MELD


def test_default_resolution_is_meld_broadcast(tmp_path):
    summary = generate(tmp_path, clips_per_class=1, splits=["train"], duration_range=(1.0, 1.0),
                       extras=False, workers=2)
    assert summary["clips"] == 7
    assert not (tmp_path / CLIP_DIRS["dev"]).exists()
    streams = probe(tmp_path / CLIP_DIRS["train"] / "dia0_utt0.mp4")
    (video,), (audio,) = streams["video"], streams["audio"]
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 1280, 720)
    assert video["r_frame_rate"] == "24/1" and int(video["nb_frames"]) == 24
    assert audio["codec_name"] == "aac" and audio["sample_rate"] == "48000"
    assert audio["channels"] in (2, 6)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kwargs = dict(clips_per_class=1, splits=["train"], **SMALL)
    first = tree_bytes(Path(generate(tmp_path / "a", seed=7, **kwargs)["out_dir"]))
    again = tree_bytes(Path(generate(tmp_path / "b", seed=7, **kwargs)["out_dir"]))
    other = tree_bytes(Path(generate(tmp_path / "c", seed=8, **kwargs)["out_dir"]))
    assert len(first) == 1 + 7
    assert first == again
    csv_name = CSV_NAMES["train"]
    assert other[csv_name] != first[csv_name]
    clips = [name for name in first if name.endswith(".mp4")]
    assert all(other.get(name) != first[name] for name in clips)


def test_existing_output_needs_overwrite_which_drops_stale_clips(tmp_path):
    kwargs = dict(splits=["train"], **SMALL)
    generate(tmp_path, clips_per_class=2, **kwargs)
    with pytest.raises(FileExistsError, match="overwrite"):
        generate(tmp_path, clips_per_class=1, **kwargs)
    generate(tmp_path, clips_per_class=1, overwrite=True, **kwargs)
    rows = read_rows(tmp_path / CSV_NAMES["train"])
    assert len(rows) == 7
    assert len(list((tmp_path / CLIP_DIRS["train"]).glob("*.mp4"))) == 7


def test_cli_writes_requested_splits_without_extras(tmp_path):
    summary = main([str(tmp_path), "--clips-per-class", "1", "--splits", "dev", "--no-extras",
                    "--width", "64", "--height", "36", "--duration-range", "0.5,0.5",
                    "--workers", "2", "--seed", "1"])
    assert {p.name for p in tmp_path.iterdir()} == {CLIP_DIRS["dev"], CSV_NAMES["dev"]}
    assert summary["splits"]["dev"]["extras"] == []
    assert len(list((tmp_path / CLIP_DIRS["dev"]).iterdir())) == 14
    with pytest.raises(SystemExit):
        main([str(tmp_path / "x"), "--splits", "train,validation"])


def test_cli_sets_the_dev_and_test_size_apart_from_train(tmp_path):
    summary = main([str(tmp_path), "--clips-per-class", "5", "--eval-clips-per-class", "1",
                    "--splits", "dev,test", "--no-extras", "--width", "64", "--height", "36",
                    "--duration-range", "0.5,0.5", "--workers", "2"])
    for split in ("dev", "test"):
        assert summary["splits"][split]["emotions"] == {emotion: 1 for emotion in EMOTIONS}
        assert len(read_rows(tmp_path / CSV_NAMES[split])) == 7
    assert split_sizes(5) == {"train": 5, "dev": 2, "test": 2}
    with pytest.raises(SystemExit):
        main([str(tmp_path / "x"), "--eval-clips-per-class", "0"])


@pytest.mark.parametrize("kwargs, expected", [
    ({"audio": False}, {"video": (64, 36, "24/1"), "audio": None}),
    ({"video": False}, {"video": None, "audio": (48000, 2)}),
    ({"duration": 0.3}, {"video": (64, 36, "24/1"), "audio": (48000, 2), "duration": 0.3}),
    ({"duration": 30.0}, {"video": (64, 36, "24/1"), "audio": (48000, 2), "duration": 30.0}),
    ({"width": 720, "height": 1280, "duration": 0.5}, {"video": (720, 1280, "24/1")}),
    ({"width": 1920, "height": 1080, "duration": 0.5}, {"video": (1920, 1080, "24/1")}),
    ({"fps": 30}, {"video": (64, 36, "30/1")}),
    ({"fps": 24000 / 1001}, {"video": (64, 36, "24000/1001")}),
    ({"channels": 1, "sample_rate": 44100}, {"audio": (44100, 1)}),
    ({"channels": 6}, {"audio": (48000, 6)}),
])
def test_make_clip_odd_clips(tmp_path, kwargs, expected):
    args = {"duration": 1.0, "width": 64, "height": 36, **kwargs}
    path = make_clip(tmp_path / "odd.mp4", "joy", seed=0, **args)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    streams = probe(path)
    if "video" in expected:
        if expected["video"] is None:
            assert streams["video"] == []
        else:
            (video,) = streams["video"]
            assert (video["width"], video["height"], video["r_frame_rate"]) == expected["video"]
            assert video["codec_name"] == "h264"
    if "audio" in expected:
        if expected["audio"] is None:
            assert streams["audio"] == []
        else:
            (audio,) = streams["audio"]
            assert (int(audio["sample_rate"]), audio["channels"]) == expected["audio"]
    if "duration" in expected:
        for stream in streams["video"] + streams["audio"]:
            assert float(stream["duration"]) == pytest.approx(expected["duration"], abs=0.05)


@pytest.mark.parametrize("kwargs", [
    {"emotion": "boredom"}, {"channels": 3}, {"width": 63}, {"duration": 0},
    {"sample_rate": 0}, {"audio": False, "video": False},
])
def test_make_clip_rejects_impossible_values(tmp_path, kwargs):
    args = {"emotion": "joy", "seed": 0, "duration": 1.0, "width": 64, "height": 36, **kwargs}
    with pytest.raises(ValueError):
        make_clip(tmp_path / "bad.mp4", **args)
    assert list(tmp_path.iterdir()) == []


def test_make_clip_reports_ffmpeg_failure_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(sample_clip, "AUDIO_BITRATE", "loud")  # an option ffmpeg rejects
    with pytest.raises(RuntimeError, match="ffmpeg failed"):
        make_clip(tmp_path / "x.mp4", "fear", seed=0, duration=0.5, width=64, height=36)
    assert list(tmp_path.iterdir()) == []


def dominant_frequency(path: Path) -> float:
    """Strongest frequency (Hz) of the clip's audio decoded as 16 kHz mono."""
    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-ac", "1", "-ar", "16000",
                          "-f", "f32le", "-"], capture_output=True, check=True).stdout
    signal = np.frombuffer(pcm, dtype=np.float32)
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    return float(np.fft.rfftfreq(len(signal), 1 / 16000)[spectrum.argmax()])


def background_hue(path: Path) -> float:
    """Hue (degrees) of the corners of a 64x64 centre crop of the middle frame."""
    rgb = subprocess.run(["ffmpeg", "-v", "error", "-ss", "0.5", "-i", str(path), "-frames:v", "1",
                          "-vf", "scale=-2:64,crop=64:64", "-f", "rawvideo", "-pix_fmt", "rgb24",
                          "-"], capture_output=True, check=True).stdout
    frame = np.frombuffer(rgb, dtype=np.uint8).reshape(64, 64, 3) / 255.0
    corners = np.concatenate([frame[:4, :4], frame[:4, -4:], frame[-4:, :4], frame[-4:, -4:]])
    return 360.0 * colorsys.rgb_to_hsv(*corners.reshape(-1, 3).mean(0))[0]


def test_each_emotion_is_recognisable_from_audio_and_from_video(tmp_path):
    found = {}
    for i, emotion in enumerate(EMOTIONS):
        path = make_clip(tmp_path / f"{emotion}.mp4", emotion, seed=100 + i, duration=1.0,
                         width=128, height=72, channels=6 if i % 2 else 2)
        found[emotion] = (dominant_frequency(path), background_hue(path))
    for emotion, (frequency, hue) in found.items():
        style = EMOTION_STYLES[emotion]
        # Pitch bands are ~1.35x apart; within 15 % of the band centre means no confusion.
        assert frequency == pytest.approx(style.pitch_hz, rel=0.15), emotion
        assert min(abs(hue - style.hue), 360 - abs(hue - style.hue)) < 20, emotion
    frequencies = sorted(f for f, _ in found.values())
    assert all(b / a > 1.2 for a, b in zip(frequencies, frequencies[1:]))


def test_text_templates_carry_the_label_except_ambiguous_share():
    rng = np.random.default_rng(0)
    texts = {e: [utterance_text(e, rng) for _ in range(300)] for e in EMOTIONS}
    ambiguous = {t.format(name=n, thing=th, time="")
                 for t in AMBIGUOUS for n in FILLERS["name"] for th in FILLERS["thing"]}
    share = np.mean([t in ambiguous for ts in texts.values() for t in ts])
    assert 0.2 < share < 0.4
    specific = {e: {t for t in ts if t not in ambiguous} for e, ts in texts.items()}
    for a in EMOTIONS:
        for b in EMOTIONS:
            if a < b:
                assert not specific[a] & specific[b], (a, b)
    assert all(len(TEMPLATES[e]) >= 3 for e in EMOTIONS)


def test_write_meld_csv_round_trips_and_rejects_unknown_columns(tmp_path):
    row = {"Sr No.": 1, "Utterance": 'He said "hi", then left…', "Speaker": "Ross",
           "Emotion": "neutral", "Sentiment": "neutral", "Dialogue_ID": 4, "Utterance_ID": 0,
           "StartTime": format_time(3723.5), "EndTime": format_time(3725.0)}
    path = write_meld_csv(tmp_path / "x.csv", [row])
    (read,) = read_rows(path)
    assert read["Utterance"] == row["Utterance"]
    assert (read["StartTime"], read["EndTime"]) == ("01:02:03,500", "01:02:05,000")
    assert read["Season"] == "" and list(read) == list(MELD_COLUMNS)
    assert path.read_bytes().endswith(b'"01:02:05,000"\r\n')
    with pytest.raises(ValueError):
        write_meld_csv(tmp_path / "y.csv", [{**row, "Mood": "x"}])
    assert list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))[0] == list(MELD_COLUMNS)


def test_difficulty_randomises_each_stream_independently_and_keeps_the_rows(tmp_path):
    default_rows, default_jobs, _ = plan_split("train", 100, 5, (1.0, 2.0), tmp_path, False)
    assert all(job.audio_style == job.video_style == job.emotion for job in default_jobs)
    rows, jobs, _ = plan_split("train", 100, 5, (1.0, 2.0), tmp_path, False,
                               Difficulty(audio_random_share=0.5, video_random_share=0.25))
    assert rows == default_rows  # only the styles change
    assert [(j.path, j.emotion, j.seed) for j in jobs] == [(j.path, j.emotion, j.seed) for j in default_jobs]
    audio_off = np.array([job.audio_style != job.emotion for job in jobs])
    video_off = np.array([job.video_style != job.emotion for job in jobs])
    # A random style matches the label one time in seven: off-label shares 6/7 of the knob.
    assert audio_off.mean() == pytest.approx(0.5 * 6 / 7, abs=0.05)
    assert video_off.mean() == pytest.approx(0.25 * 6 / 7, abs=0.05)
    assert (audio_off & video_off).mean() == pytest.approx(audio_off.mean() * video_off.mean(), abs=0.04)
    assert {job.audio_style for job in jobs if job.audio_style != job.emotion} == set(EMOTIONS)


@pytest.mark.parametrize("share, expected", [(0.0, 0.0), (1.0, 1.0)])
def test_difficulty_sets_the_ambiguous_text_share(tmp_path, share, expected):
    rows, _, _ = plan_split("train", 20, 0, (1.0, 2.0), tmp_path, False, Difficulty(ambiguous_share=share))
    ambiguous = {t.format(name=n, thing=th) for t in AMBIGUOUS for n in FILLERS["name"] for th in FILLERS["thing"]}
    assert np.mean([row["Utterance"] in ambiguous for row in rows]) == expected


@pytest.mark.parametrize("field", ["ambiguous_share", "audio_random_share", "video_random_share"])
def test_difficulty_rejects_shares_outside_0_1(field):
    with pytest.raises(ValueError, match=field):
        Difficulty(**{field: 1.5})
    with pytest.raises(ValueError, match="audio_style"):
        make_clip("unused.mp4", "joy", seed=0, duration=1.0, audio_style="bored")


def test_styles_override_the_emotion_per_stream(tmp_path):
    path = make_clip(tmp_path / "c.mp4", "joy", seed=1, duration=1.0, width=128, height=72,
                     audio_style="sadness", video_style="anger")
    assert dominant_frequency(path) == pytest.approx(EMOTION_STYLES["sadness"].pitch_hz, rel=0.15)
    hue = background_hue(path)
    assert min(hue, 360 - hue) < 20  # anger's background hue is 0 degrees

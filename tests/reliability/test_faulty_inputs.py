"""Bad input, end to end through the command-line tools: one MELD-shaped folder holding every
fault at once (broken, odd and missing clips, mojibake and multi-line CSV rows, under a path
with spaces, quotes, ``$(...)`` and non-ASCII), preprocessed once with
``python -m pipeline.preprocess`` and predicted once with ``python -m pipeline.infer``; then
bad CSVs (unknown label, duplicate id) refused by both tools before any work."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from reliability_helpers import ODD_NAME, SHELL_MARKER, read_manifest, run_cli

from pipeline import infer, preprocess
from pipeline.data.cache import CacheSplit
from pipeline.data.meld import CLIP_DIRS, CSV_NAMES
from pipeline.sample.clip import make_clip
from pipeline.sample.text import write_meld_csv

# fault -> id of its dev row. Every clip is 160x90, 1 s, stereo 48 kHz, 24 fps unless the fault says otherwise.
FAULTS = {
    "missing": "dia1_utt0", "empty": "dia1_utt1", "truncated": "dia1_utt2", "not_video": "dia1_utt3",
    "no_audio": "dia2_utt0", "no_video": "dia2_utt1", "short": "dia2_utt2", "long": "dia2_utt3",
    "portrait": "dia3_utt0", "hd": "dia3_utt1", "mono_44k_30fps": "dia3_utt2",
}
BROKEN = {"missing": "missing file", "empty": "empty file", "truncated": "unreadable: ", "not_video": "unreadable: "}
MODALITIES = {"no_audio": ["text", "video"], "no_video": ["audio", "text"]}  # the others: all three
EXTRA = "dia66_utt9"  # a clip that no CSV row names, as in MELD's dev and test folders
# CSV text faults, on rows whose clips are fine: a quoted comma and a CRLF inside the
# utterance, and cp1252 mojibake (U+0092 for ’, U+0085 for …, U+0093/U+0094 for “”, U+0096 for –).
MULTILINE = ("short", 'He said, "no, way"\r\nand left', 'He said, "no, way" and left')
MOJIBAKE = ("portrait", "I\x92m fine\x85 \x93really\x94 \x96 ok", "I’m fine… “really” – ok")
TRAIN_TEXT = ("I’m here… “now”", "Fine – go")  # written to the train CSV as cp1252 bytes
EMOTIONS = ["neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"]
SENTIMENTS = ["neutral", "positive", "negative"]
MAX_SECONDS = 1.5  # preprocess.audio.max_seconds of the tiny cache's parameters
NUM_FRAMES, SIZE = 2, 32  # preprocess.video.num_frames / size of the same


def meld_row(number: int, dialogue: int, utterance: int, text: str, speaker: str = "Monica") -> dict:
    return {"Sr No.": number, "Utterance": text, "Speaker": speaker, "Emotion": EMOTIONS[number % 7],
            "Sentiment": SENTIMENTS[number % 3], "Dialogue_ID": dialogue, "Utterance_ID": utterance,
            "Season": 1, "Episode": 1, "StartTime": "00:00:01,000", "EndTime": "00:00:02,000"}


def make_fault_tree(root: Path) -> None:
    """``root`` shaped like MELD.Raw: a cp1252 train CSV with two clean clips, and a UTF-8
    dev CSV whose rows hit every fault of FAULTS, plus the unlabelled clip EXTRA."""
    train_rows = [meld_row(i, 0, i, text, "Joey") for i, text in enumerate(TRAIN_TEXT)]
    train_csv = write_meld_csv(root / CSV_NAMES["train"], train_rows)
    train_csv.write_bytes(train_csv.read_text(encoding="utf-8").encode("cp1252"))  # an old release's bytes
    for i in range(len(TRAIN_TEXT)):
        make_clip(root / CLIP_DIRS["train"] / f"dia0_utt{i}.mp4", EMOTIONS[i], i, 1.0, 160, 90)

    texts = {MULTILINE[0]: MULTILINE[1], MOJIBAKE[0]: MOJIBAKE[1]}
    dev_rows = [meld_row(n, int(id_[3]), int(id_[-1]), texts.get(fault, f"Okay {fault}."))
                for n, (fault, id_) in enumerate(FAULTS.items())]
    write_meld_csv(root / CSV_NAMES["dev"], dev_rows)
    clips = root / CLIP_DIRS["dev"]
    clips.mkdir()

    def clip(fault: str, **kwargs) -> Path:
        options = {"duration": 1.0, "width": 160, "height": 90, **kwargs}
        return make_clip(clips / f"{FAULTS[fault]}.mp4", "joy", len(fault), **options)

    (clips / f"{FAULTS['empty']}.mp4").write_bytes(b"")
    whole = clip("truncated").read_bytes()
    (clips / f"{FAULTS['truncated']}.mp4").write_bytes(whole[: len(whole) // 2])
    (clips / f"{FAULTS['not_video']}.mp4").write_text("this is not a video\n", encoding="utf-8")
    clip("no_audio", audio=False)
    clip("no_video", video=False)
    clip("short", duration=0.3)
    clip("long", duration=30.0)
    clip("portrait", width=90, height=160)
    clip("hd", width=1920, height=1080)
    clip("mono_44k_30fps", fps=30, channels=1, sample_rate=44100)
    make_clip(clips / f"{EXTRA}.mp4", "anger", 99, 1.0, 160, 90)


@pytest.fixture(scope="module")
def faults(tiny_meld_cache, tmp_path_factory) -> dict:
    """The fault tree, preprocessed by the CLI (2 workers) with the tiny cache's parameters
    into a folder with an odd name; every command runs in an empty working folder, where a
    shell would have run ``$(touch pwned)``."""
    base = tmp_path_factory.mktemp("faults")
    root, out, cwd = base / f"MELD {ODD_NAME}", base / f"cache {ODD_NAME}", base / "cwd"
    cwd.mkdir()
    make_fault_tree(root)
    result = run_cli(["-m", "pipeline.preprocess", root, out, "--splits", "train,dev", "--workers", "2",
                      *tiny_meld_cache["preprocess_overrides"]], cwd=cwd)
    return {"base": base, "root": root, "out": out, "cwd": cwd, "result": result}


def by_fault(out: Path) -> dict[str, dict]:
    rows = read_manifest(out / "dev")
    return {fault: rows[id_] for fault, id_ in FAULTS.items()}


def test_preprocessing_goes_on_past_every_fault(faults):
    result = faults["result"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dev: 7 ok, 5 skipped" in result.stderr  # the summary line counts what was lost
    rows = read_manifest(faults["out"] / "dev")
    assert list(rows) == [*FAULTS.values(), EXTRA]  # one row per CSV row, then the unlabelled clip
    for fault, row in by_fault(faults["out"]).items():
        if fault in BROKEN:
            assert row["status"] == "skipped" and row["reason"].startswith(BROKEN[fault]), row
            assert ODD_NAME not in row["reason"]  # reasons name the fault, not the folder
            assert row["modalities"] == [] and not (faults["out"] / "dev" / "items" / f"{row['id']}.npz").exists()
        else:
            assert row["status"] == "ok" and row["reason"] is None, row
            assert row["modalities"] == MODALITIES.get(fault, ["audio", "text", "video"]), fault
    labels = [(row["emotion"], row["sentiment"]) for row in rows.values()][: len(FAULTS)]
    assert labels == [(EMOTIONS[n % 7], SENTIMENTS[n % 3]) for n in range(len(FAULTS))]  # still aligned
    assert rows[EXTRA]["status"] == "skipped" and rows[EXTRA]["reason"] == "no label"
    assert not [path for path in faults["out"].rglob("*") if path.name.endswith(".tmp")]


def test_odd_clips_give_features_of_the_configured_shape(faults):
    reader = CacheSplit(faults["out"] / "dev")
    arrays = {fault: reader.load(FAULTS[fault]) for fault in FAULTS if fault not in BROKEN}
    for fault, sample in arrays.items():
        if "video" in MODALITIES.get(fault, ["video"]):
            assert sample["frames"].shape == (NUM_FRAMES, SIZE, SIZE, 3) and sample["frames"].dtype == np.uint8
            assert sample["frames"].std() > 0, fault  # a picture, not a blank frame
        else:
            assert "frames" not in sample
        if "audio" in MODALITIES.get(fault, ["audio"]):
            assert sample["log_mel"].dtype == np.float32 and sample["log_mel"].shape[1] == 64
            assert np.isfinite(sample["log_mel"]).all()
        else:
            assert "log_mel" not in sample
        assert sample["input_ids"].dtype == np.int32 and len(sample["input_ids"]) <= 16
    mel_frames = {fault: len(arrays[fault]["log_mel"]) for fault in ("short", "long", "hd", "mono_44k_30fps")}
    assert mel_frames["long"] == 1 + (MAX_SECONDS * 16000 - 400) // 160  # 30 s clip: only max_seconds decoded
    assert 20 <= mel_frames["short"] <= 40  # 0.3 s at a 10 ms hop
    assert 90 <= mel_frames["hd"] <= 105 and 90 <= mel_frames["mono_44k_30fps"] <= 105  # 1 s, resampled to 16 kHz


def test_csv_quirks_reach_the_manifest_repaired(faults):
    rows = by_fault(faults["out"])
    assert rows[MULTILINE[0]]["text"] == MULTILINE[2]  # quoted comma kept, newline folded
    assert rows[MOJIBAKE[0]]["text"] == MOJIBAKE[2]  # cp1252 mojibake of a UTF-8 file repaired
    train = read_manifest(faults["out"] / "train").values()
    assert [row["text"] for row in train] == list(TRAIN_TEXT)  # a cp1252 file (not UTF-8) read and repaired
    assert all(row["status"] == "ok" for row in train)


@pytest.fixture(scope="module")
def predictions(faults, trained_run) -> dict:
    """``python -m pipeline.infer`` over the fault folder's dev clips with its dev CSV, writing
    to a folder with an odd name, from the empty working folder."""
    out = faults["base"] / f"predictions {ODD_NAME}" / "p.jsonl"
    result = run_cli(["-m", "pipeline.infer", "--checkpoint", trained_run["out"] / "best.pt",
                      "--clips", faults["root"] / CLIP_DIRS["dev"], "--transcripts", faults["root"] / CSV_NAMES["dev"],
                      "--out", out, "--batch-size", "4", "--workers", "0", "--device", "cpu"], cwd=faults["cwd"])
    return {"out": out, "result": result}


def test_inference_gives_every_clip_a_row_and_the_same_verdict_as_preprocessing(faults, predictions):
    result = predictions["result"]
    assert result.returncode == 0, result.stderr[-3000:]  # broken clips are rows, not failures
    rows = [json.loads(line) for line in predictions["out"].read_text(encoding="utf-8").splitlines()]
    clips = sorted((faults["root"] / CLIP_DIRS["dev"]).glob("*.mp4"))
    assert [row["clip"] for row in rows] == [str(clip) for clip in clips]  # the missing clip has no file, no row
    manifest = read_manifest(faults["out"] / "dev")
    for row in rows:
        cached = manifest[row["id"]]
        if row["id"] == EXTRA:  # no transcript: predicted from audio and video
            assert row["status"] == "ok" and row["modalities"] == ["audio", "video"]
        elif cached["status"] == "ok":
            assert row["status"] == "ok" and row["modalities"] == cached["modalities"], row
            assert sum(row["emotion_probs"].values()) == pytest.approx(1.0, abs=1e-5)
            assert np.isfinite(list(row["emotion_probs"].values())).all()
        else:  # the same extraction code, so the same reason, word for word
            assert row["status"] == "error" and row["error"] == cached["reason"], row
            assert row["emotion"] is None
    assert "emotion: accuracy" in result.stdout and "(n=7)" in result.stdout  # the labelled ok clips


def test_no_path_was_ever_run_through_a_shell(faults, predictions):
    assert predictions["result"].returncode == 0 and faults["result"].returncode == 0
    assert not list(faults["base"].rglob(SHELL_MARKER))
    assert list(faults["cwd"].iterdir()) == []


@pytest.mark.parametrize("change, message", [
    (lambda rows: rows[1].update(Emotion="happy"), "line 3: unknown emotion 'happy'; expected one of"),
    (lambda rows: rows[2].update(Utterance_ID=rows[0]["Utterance_ID"]),
     r"line 4: duplicate utterance dia5_utt0 (Dialogue_ID 5, Utterance_ID 0) first seen on line 2"),
])
def test_bad_csv_rows_are_refused_by_both_tools_before_any_work(trained_run, tmp_path, caplog, change, message):
    rows = [meld_row(n, 5, n, f"Line {n}.") for n in range(3)]
    change(rows)
    root = tmp_path / f"MELD {ODD_NAME}"
    csv_path = write_meld_csv(root / CSV_NAMES["dev"], rows)
    (root / CLIP_DIRS["dev"]).mkdir()
    (root / CLIP_DIRS["dev"] / "dia5_utt0.mp4").write_bytes(b"")  # inference needs a clip to list
    with caplog.at_level(logging.ERROR):
        status = preprocess.main([str(root), str(tmp_path / "cache"), "--splits", "dev", "--workers", "1",
                                  "preprocess.modalities=[text]"])
    assert status == 1
    assert f"{csv_path}, {message}" in caplog.text
    assert not (tmp_path / "cache").exists()  # the CSVs are read before anything is written

    caplog.clear()
    with caplog.at_level(logging.ERROR):
        status = infer.main(["--checkpoint", str(trained_run["out"] / "best.pt"),
                             "--clips", str(root / CLIP_DIRS["dev"]), "--transcripts", str(csv_path),
                             "--out", str(tmp_path / "p.jsonl"), "--workers", "0"])
    assert status == 1
    assert f"{csv_path}, {message}" in caplog.text
    assert not (tmp_path / "p.jsonl").exists() and not (tmp_path / "p.jsonl.partial").exists()

"""Round three's weaker spots, each through the tool a user calls: bounds per clip (frame
size, transcript size, decoding time), names (NFD file names, one stem in two containers, a
clip list beside its clip), spreadsheet formulas and terminal control characters in what is
written, label lists of a checkpoint, one CSV given for two splits, and overrides that are
paths."""
from __future__ import annotations

import json
import logging
import shutil
import unicodedata
from pathlib import Path

import pytest
import torch

from pipeline import infer, preprocess
from pipeline.config import ConfigError, load_config
from pipeline.data.meld import CLIP_DIRS, CSV_NAMES
from pipeline.media import decode
from reliability_helpers import run_cli


@pytest.fixture()
def clips(tiny_meld_cache, tmp_path) -> Path:
    """A folder of four dev clips (copies: the tests rename and add files)."""
    folder = tmp_path / "clips"
    folder.mkdir()
    for clip in sorted((Path(tiny_meld_cache["meld_root"]) / CLIP_DIRS["dev"]).glob("*.mp4"))[:4]:
        shutil.copy(clip, folder / clip.name)
    return folder


def predict(trained_run, clips: str | Path, out: Path, *extra: str) -> list[dict]:
    status = infer.main(["--checkpoint", str(trained_run["out"] / "best.pt"), "--clips", str(clips), "--out",
                         str(out), "--workers", "0", "--device", "cpu", *extra])
    assert status == 0
    if out.suffix == ".csv":
        return []
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


# --------------------------------------------------------------------------- bounds per clip
def test_a_clip_over_the_frame_bound_is_its_own_error_row(trained_run, clips, tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "MAX_FRAME_PIXELS", 64 * 36 - 1)  # the tiny clips are 64x36
    rows = predict(trained_run, clips, tmp_path / "rows.jsonl")
    assert len(rows) == 4 and all(row["status"] == "error" for row in rows)
    assert "frames of 64x36 pixels, over the bound" in rows[0]["error"]


def test_a_hung_decoder_is_killed_and_the_clip_is_an_error_row(trained_run, clips, tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "DECODE_SECONDS", 0.0)  # every ffmpeg run "hangs" past its bound
    rows = predict(trained_run, clips, tmp_path / "rows.jsonl")
    assert len(rows) == 4 and all(row["status"] == "error" and "timed out" in row["error"] for row in rows)


def test_a_huge_transcript_file_is_an_error_row_not_read(trained_run, clips, tmp_path):
    first, second = sorted(clips.glob("*.mp4"))[:2]
    first.with_suffix(".txt").write_text("so happy\n", encoding="utf-8")
    with open(second.with_suffix(".txt"), "wb") as file:
        file.truncate(50 << 20)  # 50 MB, sparse
    rows = {row["id"]: row for row in predict(trained_run, clips, tmp_path / "rows.jsonl")}
    assert rows[first.stem]["status"] == "ok" and "text" in rows[first.stem]["modalities"]
    assert rows[second.stem]["status"] == "error" and "over the 1 MiB" in rows[second.stem]["error"]


# --------------------------------------------------------------------------- names
def test_an_nfd_file_name_finds_its_nfc_transcript_row(trained_run, clips, tmp_path):
    clip = sorted(clips.glob("*.mp4"))[0]
    nfc_name = "café scène.mp4"
    clip.rename(clips / unicodedata.normalize("NFD", nfc_name))  # as macOS writes it
    table = tmp_path / "said.csv"
    table.write_text(f"clip,text\n{nfc_name},so happy\n", encoding="utf-8")
    rows = predict(trained_run, clips, tmp_path / "rows.jsonl", "--transcripts", str(table))
    named = [row for row in rows if unicodedata.normalize("NFC", row["id"]) == "café scène"]
    assert len(named) == 1 and "text" in named[0]["modalities"]


def test_one_stem_in_two_containers_gets_two_ids(trained_run, clips, tmp_path):
    clip = sorted(clips.glob("*.mp4"))[0]
    shutil.copy(clip, clip.with_suffix(".mkv"))
    rows = predict(trained_run, clips, tmp_path / "rows.jsonl")
    assert len(rows) == 5 and len({row["id"] for row in rows}) == 5
    assert {clip.name, clip.with_suffix(".mkv").name} <= {row["id"] for row in rows}


def test_a_clip_list_beside_its_clip_is_not_read_as_its_transcript(trained_run, clips, tmp_path):
    clip = sorted(clips.glob("*.mp4"))[0]
    listing = clip.with_suffix(".txt")
    listing.write_text(f"{clip.name}\n", encoding="utf-8")
    rows = predict(trained_run, listing, tmp_path / "rows.jsonl")
    assert len(rows) == 1 and rows[0]["status"] == "ok" and "text" not in rows[0]["modalities"]


# --------------------------------------------------------------------------- what is written
def test_a_csv_cell_that_a_spreadsheet_would_run_is_defused(trained_run, clips, tmp_path):
    clip = sorted(clips.glob("*.mp4"))[0]
    clip.rename(clips / "=HYPERLINK(evil).mp4")
    out = tmp_path / "rows.csv"
    predict(trained_run, clips, out)
    cells = [cell for line in out.read_text(encoding="utf-8").splitlines() for cell in line.split(",")]
    assert "'=HYPERLINK(evil)" in cells and "=HYPERLINK(evil)" not in cells


def test_control_characters_in_a_file_name_never_reach_the_terminal_raw(trained_run, clips, tmp_path):
    (clips / "notes\x1b]0;pwned\x07\x1b[2J.doc").write_text("not a clip")  # named in the skipped-files warning
    result = run_cli(["-m", "pipeline.infer", "--checkpoint", trained_run["out"] / "best.pt", "--clips", clips,
                      "--out", tmp_path / "rows.jsonl", "--workers", "0", "--device", "cpu"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr and "\\x1b" in result.stderr


# --------------------------------------------------------------------------- checkpoints and splits
def test_a_checkpoint_with_repeated_labels_is_refused(trained_run, clips, tmp_path, caplog):
    ckpt = torch.load(trained_run["out"] / "best.pt", weights_only=True)
    ckpt["labels"]["emotion"] = ["joy"] * len(ckpt["labels"]["emotion"])
    forged = tmp_path / "forged.pt"
    torch.save(ckpt, forged)
    with caplog.at_level(logging.ERROR):
        status = infer.main(["--checkpoint", str(forged), "--clips", str(clips), "--out", str(tmp_path / "r.jsonl"),
                             "--workers", "0", "--device", "cpu"])
    assert status == 1 and "the emotion labels repeat ['joy']" in caplog.text


def test_the_train_csv_given_as_dev_is_said(tiny_meld_cache, tmp_path, caplog):
    root = Path(tiny_meld_cache["meld_root"])
    with caplog.at_level(logging.WARNING):
        assert preprocess.main([str(root), str(tmp_path / "cache"), "--splits", "train,dev", "--workers", "0",
                                "--dev-csv", str(root / CSV_NAMES["train"]),
                                *tiny_meld_cache["preprocess_overrides"]]) == 0
    assert "train and dev read the same CSV" in caplog.text


# --------------------------------------------------------------------------- overrides
@pytest.mark.parametrize("value", ["/runs/exp #2", "runs/two\nlines", "runs/#hash", "runs/it's"])
def test_an_override_that_is_a_path_is_taken_as_typed(value):
    assert load_config(None, [f"output_dir={value}"]).output_dir == value


def test_overrides_keep_their_yaml_types_and_quotes():
    cfg = load_config(None, ["train.lr=1e-4", "model.modalities=[text, audio]", "train.resume=true",
                             "output_dir='quoted #1'"])
    assert cfg.train.lr == 1e-4 and cfg.model.modalities == ["text", "audio"] and cfg.train.resume is True
    assert cfg.output_dir == "quoted #1"


def test_an_empty_output_dir_is_refused():
    with pytest.raises(ConfigError, match="output_dir: must name a folder"):
        load_config(None, ["output_dir="])


# --------------------------------------------------------------------------- sizes
def test_a_cache_that_cannot_fit_is_refused_before_any_clip_is_decoded(tiny_meld_cache, tmp_path, caplog,
                                                                       monkeypatch):
    from collections import namedtuple

    from pipeline.preprocess import run as preprocess_run

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(preprocess_run.shutil, "disk_usage", lambda path: usage(10**9, 0, 50 * 10**6))  # 50 MB free
    decoded = []
    monkeypatch.setattr(preprocess_run, "extract_features", lambda *args, **kwargs: decoded.append(args))
    overrides = [o for o in tiny_meld_cache["preprocess_overrides"] if not o.startswith("preprocess.video.size")]
    args = ["--splits", "dev", "--workers", "0", *overrides]
    with caplog.at_level(logging.INFO):
        assert preprocess.main([tiny_meld_cache["meld_root"], str(tmp_path / "big"), *args,
                                "preprocess.video.size=2240"]) == 1  # 2 frames of 2240x2240: 30 MB an entry
    assert "do not fit in the 0.1 GB free" in caplog.text and "preprocess.video.size" in caplog.text and not decoded
    caplog.clear()
    monkeypatch.undo()
    with caplog.at_level(logging.INFO):
        assert preprocess.main([tiny_meld_cache["meld_root"], str(tmp_path / "small"), *args,
                                "preprocess.video.size=32"]) == 0
    assert "new entries take" in caplog.text  # what the cache costs is said

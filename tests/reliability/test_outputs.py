"""Outputs never destroy inputs: ``pipeline.infer --out`` naming a clip, the checkpoint, the
transcripts, a link to one of them or a directory is refused before any work, leaving every
file as it was; a second run with the same ``--out`` as a live one is refused (the live one's
``OUT.partial`` is locked) instead of interleaving rows into it; a disk that fills up while a
row is written leaves ``OUT.partial`` with the whole rows before it and stops the run with one
error line."""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from pipeline import infer
from pipeline.data.meld import CLIP_DIRS, CSV_NAMES
from pipeline.infer import predictions


@pytest.fixture()
def inputs(trained_run, tiny_meld_cache, tmp_path) -> dict[str, Path]:
    """Copies of a checkpoint, the dev clips and their CSV (the tests may try to overwrite them)."""
    root = Path(tiny_meld_cache["meld_root"])
    clips = tmp_path / "clips"
    shutil.copytree(root / CLIP_DIRS["dev"], clips)
    checkpoint = tmp_path / "best.pt"
    shutil.copy(trained_run["out"] / "best.pt", checkpoint)
    transcripts = tmp_path / "dev.csv"
    shutil.copy(root / CSV_NAMES["dev"], transcripts)
    return {"clips": clips, "checkpoint": checkpoint, "transcripts": transcripts,
            "clip": sorted(clips.glob("*.mp4"))[0]}


def predict(inputs: dict[str, Path], out: Path, *extra: str) -> int:
    return infer.main(["--checkpoint", str(inputs["checkpoint"]), "--clips", str(inputs["clips"]),
                       "--transcripts", str(inputs["transcripts"]), "--out", str(out), "--workers", "0",
                       "--device", "cpu", *extra])


def snapshot(folder: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("target", ["clip", "checkpoint", "transcripts", "symlink_to_clip", "hardlink_to_checkpoint",
                                    "partial_is_clip"])
def test_an_out_that_is_an_input_is_refused_before_any_work(inputs, tmp_path, caplog, target):
    if target == "symlink_to_clip":
        out = tmp_path / "link.jsonl"
        out.symlink_to(inputs["clip"])
    elif target == "hardlink_to_checkpoint":
        out = tmp_path / "hard.jsonl"
        os.link(inputs["checkpoint"], out)
    elif target == "partial_is_clip":  # OUT.partial, the file the run writes first, is a clip
        out = inputs["clip"].parent / "x.jsonl"
        (inputs["clip"].parent / "x.jsonl.partial").symlink_to(inputs["clip"])
    else:
        out = inputs[target]
    before = snapshot(tmp_path)
    with caplog.at_level(logging.ERROR):
        status = predict(inputs, out)
    assert status == 1
    assert f"--out {out}:" in caplog.text and "is an input of this run" in caplog.text
    assert snapshot(tmp_path) == before  # every input byte for byte, nothing written


def test_an_out_that_is_a_directory_fails_before_any_work(inputs, tmp_path, caplog):
    out = tmp_path / "predictions"
    out.mkdir()
    with caplog.at_level(logging.INFO):
        status = predict(inputs, out)
    assert status == 1
    assert f"--out {out}: {out} is a directory" in caplog.text
    assert "clips;" not in caplog.text  # refused before the jobs were even made
    assert list(out.iterdir()) == []


def test_a_second_run_with_the_same_out_is_refused_while_the_first_writes(inputs, tmp_path, caplog):
    out = tmp_path / "p.jsonl"
    partial = out.with_name("p.jsonl.partial")
    with open(partial, "w", encoding="utf-8") as live:  # a live run: it holds the lock and has written a row
        fcntl.flock(live.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        live.write('{"clip": "a row of the first run"}\n')
        live.flush()
        with caplog.at_level(logging.ERROR):
            status = predict(inputs, out)
        assert status == 1
        assert f"another pipeline.infer run is writing it ({partial} is locked)" in caplog.text
        assert partial.read_text(encoding="utf-8") == '{"clip": "a row of the first run"}\n'  # untouched
        assert not out.exists()
    assert predict(inputs, out) == 0  # once the first run is gone, the same --out works
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len(list(inputs["clips"].glob("*.mp4"))) and not partial.exists()


class FullDisk:
    """A file on a disk with ``room`` bytes left: a write that does not fit writes what fits
    and says so (a short write), the next one fails with ENOSPC, as write(2) does."""

    def __init__(self, file, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data):
        if self.room == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        part = data[: self.room]
        self.room -= len(part)
        return self.file.write(part)

    def __getattr__(self, name):
        return getattr(self.file, name)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_full_disk_leaves_only_whole_rows_and_one_error_line(inputs, tmp_path, caplog, monkeypatch, suffix):
    complete = tmp_path / f"complete{suffix}"
    assert predict(inputs, complete) == 0
    lines = complete.read_bytes().splitlines(keepends=True)
    whole = 3 if suffix == ".csv" else 2  # the CSV header, then rows
    expected = b"".join(lines[:whole])  # the rows the disk had room for
    assert len(lines) > whole + 1 and len(lines[whole]) > 10

    out = tmp_path / f"p{suffix}"
    claim = predictions.claim_partial
    monkeypatch.setattr(predictions, "claim_partial", lambda partial: FullDisk(claim(partial), len(expected) + 10))
    with caplog.at_level(logging.INFO):
        status = predict(inputs, out)
    assert status == 1
    partial = out.with_name(out.name + ".partial")
    assert partial.read_bytes() == expected  # no half row at the end
    assert not out.exists()
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    rows = whole - 1 if suffix == ".csv" else whole
    assert str(partial) in errors[0] and os.strerror(errno.ENOSPC) in errors[0], errors[0]
    assert f"{rows} complete rows" in errors[0], errors[0]

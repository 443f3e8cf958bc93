"""``pipeline.infer --clips FOLDER`` predicts every media file in the folder, audio-only ones
(``.wav``, ``.m4a``) from their audio and text with the video masked, transport streams
(``.ts``) like any video; and it says which entries it skipped and why instead of dropping
them silently (it skipped .wav, .m4a and .ts without a word)."""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

from pipeline import infer
from pipeline.data.meld import CLIP_DIRS, CSV_NAMES


def ffmpeg(*args: str | Path) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *map(str, args)], check=True)


def test_a_folder_of_mixed_media_gets_a_row_per_media_file_and_the_rest_is_listed(trained_run, tiny_meld_cache,
                                                                                     tmp_path, caplog):
    source = Path(tiny_meld_cache["meld_root"]) / CLIP_DIRS["dev"]
    folder = tmp_path / "clips"
    folder.mkdir()
    shutil.copy(source / "dia0_utt0.mp4", folder / "dia0_utt0.mp4")
    ffmpeg("-i", source / "dia0_utt1.mp4", "-vn", "-c:a", "pcm_s16le", folder / "dia0_utt1.wav")
    ffmpeg("-i", source / "dia0_utt2.mp4", "-vn", "-c:a", "aac", folder / "dia0_utt2.m4a")
    ffmpeg("-i", source / "dia1_utt0.mp4", "-c", "copy", "-f", "mpegts", folder / "dia1_utt0.ts")
    (folder / "notes.docx").write_bytes(b"PK\x03\x04 not a clip")
    shutil.copy(source / "dia0_utt0.mp4", folder / ".dia0_utt0.mp4")  # macOS-style hidden copy
    (folder / "old").mkdir()
    out = tmp_path / "predictions.jsonl"
    with caplog.at_level(logging.INFO):
        status = infer.main(["--checkpoint", str(trained_run["out"] / "best.pt"), "--clips", str(folder),
                             "--transcripts", str(Path(tiny_meld_cache["meld_root"]) / CSV_NAMES["dev"]),
                             "--out", str(out), "--workers", "0", "--device", "cpu"])
    assert status == 0
    rows = {Path(row["clip"]).name: row for row in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    assert sorted(rows) == ["dia0_utt0.mp4", "dia0_utt1.wav", "dia0_utt2.m4a", "dia1_utt0.ts"]
    assert all(row["status"] == "ok" for row in rows.values()), rows
    assert rows["dia0_utt1.wav"]["modalities"] == ["audio", "text"]
    assert rows["dia0_utt2.m4a"]["modalities"] == ["audio", "text"]
    assert "video" in rows["dia1_utt0.ts"]["modalities"] and "video" in rows["dia0_utt0.mp4"]["modalities"]
    skipped = next(r.getMessage() for r in caplog.records if "entries skipped" in r.getMessage())
    assert "3 of its entries skipped" in skipped
    assert "notes.docx (extension .docx is not a media type)" in skipped
    assert ".dia0_utt0.mp4 (hidden file)" in skipped
    assert "old/ (a folder" in skipped

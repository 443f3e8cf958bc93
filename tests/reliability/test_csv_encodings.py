"""CSV text as users have it: one cp1252 byte in an otherwise UTF-8 MELD CSV (or clip,text
transcripts) is repaired where it is, leaving every other curly quote and accent as written,
and the repair is reported with its line; ids such as ``1_0`` are refused, not read as 10."""
from __future__ import annotations

import logging
from pathlib import Path

from reliability_helpers import read_manifest

from pipeline import preprocess
from pipeline.data.meld import CSV_NAMES
from pipeline.infer.transcripts import read_transcripts

TEXTS = ["“Really?” said Zoë", "I’m fine… thanks", "Café – naïve", "Okay."]
CP1252_ROW = 2  # the ’ of this row (0-based; line 4 of the file) is the single cp1252 byte 0x92
HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\r\n"


def mixed_csv(path: Path, texts: list[str], dialogue_ids: list[str] | None = None) -> Path:
    lines = [HEADER.encode("utf-8")]
    for n, text in enumerate(texts):
        dialogue = dialogue_ids[n] if dialogue_ids else "0"
        line = f'{n},"{text}",Ross,neutral,neutral,{dialogue},{n},1,1,"00:00:01,000","00:00:02,000"\r\n'
        encoded = line.encode("utf-8")
        lines.append(encoded.replace("’".encode("utf-8"), b"\x92") if n == CP1252_ROW else encoded)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(lines))
    return path


def test_one_cp1252_byte_is_repaired_where_it_is_and_reported(tiny_meld_cache, tmp_path, caplog):
    texts = [TEXTS[0], TEXTS[2], TEXTS[1], TEXTS[3]]  # the cp1252 byte sits in the third row, line 4
    csv_path = mixed_csv(tmp_path / "meld" / CSV_NAMES["dev"], texts)
    raw = csv_path.read_bytes()
    assert b"I\x92m" in raw and "“Really?”".encode("utf-8") in raw  # both encodings in one file
    with caplog.at_level(logging.INFO):
        status = preprocess.main([str(tmp_path / "meld"), str(tmp_path / "cache"), "--splits", "dev",
                                  "--workers", "1", *tiny_meld_cache["preprocess_overrides"],
                                  "preprocess.modalities=[text]"])
    assert status == 0
    assert [row["text"] for row in read_manifest(tmp_path / "cache" / "dev").values()] == texts
    assert f"{csv_path}: 1 non-UTF-8 byte sequences read as cp1252 on 1 lines (line 4)" in caplog.text


def test_clip_text_transcripts_with_one_cp1252_byte(tmp_path, caplog):
    path = tmp_path / "t.csv"
    path.write_bytes("clip,text\r\na.mp4,“Zoë” said\r\n".encode("utf-8") + b"b.mp4,I\x92m here\r\n")
    with caplog.at_level(logging.WARNING):
        table = read_transcripts(path, 0)
    assert table.find(tmp_path / "a.mp4").utterance.text == "“Zoë” said"
    assert table.find(tmp_path / "b.mp4").utterance.text == "I’m here"
    assert "on 1 lines (line 3)" in caplog.text


def test_an_id_that_is_not_plain_digits_is_refused(tiny_meld_cache, tmp_path, caplog):
    csv_path = mixed_csv(tmp_path / "meld" / CSV_NAMES["dev"], ["Okay.", "Fine."], dialogue_ids=["1", "1_0"])
    with caplog.at_level(logging.ERROR):
        status = preprocess.main([str(tmp_path / "meld"), str(tmp_path / "cache"), "--splits", "dev",
                                  "--workers", "1", *tiny_meld_cache["preprocess_overrides"],
                                  "preprocess.modalities=[text]"])
    assert status == 1
    assert f"{csv_path}, line 3: Dialogue_ID '1_0' is not an integer (digits only)" in caplog.text
    assert not (tmp_path / "cache").exists()

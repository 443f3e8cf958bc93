from __future__ import annotations

import pytest

from pipeline.data import meld
from pipeline.data.meld import MeldFormatError, dialogue_context, read_csv
from tests.pipeline.meld_fixtures import HEADER, csv_text, row, write_csv


def test_reads_the_quirks_of_real_meld_csvs(tmp_path):
    rows = [row(0, 0, 'He said, "no"\r\nand left', "Chandler", "Joy ", " POSITIVE"),
            row(0, 1, "Fine…", "Monica"),
            row(3, 2, "", "", "fear", "negative")]
    path = tmp_path / "dev_sent_emo.csv"
    path.write_bytes(csv_text(rows, bom=True).encode("utf-8") + b"\r\n\r\n")  # trailing blank lines
    parsed = read_csv(path)
    assert [r.id for r in parsed] == ["dia0_utt0", "dia0_utt1", "dia3_utt2"]
    first = parsed[0]
    assert first.utterance == 'He said, "no"\r\nand left' and first.speaker == "Chandler"
    assert (first.emotion, first.sentiment, first.dialogue_id, first.utterance_id) == ("joy", "positive", 0, 0)
    assert parsed[1].line == 4  # the first row spans lines 2-3
    assert parsed[2].utterance == "" and parsed[2].emotion == "fear"


def test_reads_a_cp1252_file_and_padded_headers(tmp_path):
    text = csv_text([row(1, 0, "I\u2019m here")], bom=False).replace("Utterance_ID", " Utterance_ID ")
    path = tmp_path / "old.csv"
    path.write_bytes(text.encode("cp1252"))  # not UTF-8: "’" is the single byte 0x92
    (parsed,) = read_csv(path)
    assert parsed.utterance == "I\u2019m here"  # each non-UTF-8 byte read as cp1252


@pytest.mark.parametrize("change, message", [
    ({"emotion": "happy"}, "unknown emotion 'happy'"),
    ({"sentiment": "mixed"}, "unknown sentiment 'mixed'"),
    ({"dialogue": "x1"}, "Dialogue_ID 'x1' is not an integer"),
])
def test_bad_rows_name_file_and_line(tmp_path, change, message):
    rows = [row(0, 0, "ok"), {**row(0, 1, "bad"), **change}]
    path = write_csv(tmp_path / "train_sent_emo.csv", rows)
    with pytest.raises(MeldFormatError) as info:
        read_csv(path)
    assert message in str(info.value) and str(path) in str(info.value) and "line 3" in str(info.value)


def test_duplicate_ids_are_refused(tmp_path):
    path = write_csv(tmp_path / "a.csv", [row(5, 1, "one"), row(5, 2, "two"), row(5, 1, "again")])
    with pytest.raises(MeldFormatError, match=r"line 4: duplicate utterance dia5_utt1 .*first seen on line 2"):
        read_csv(path)


def test_missing_column_is_refused(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text(",".join(h for h in HEADER if h != "Emotion") + "\n1,hi,Joey,neutral,0,0,1,1,a,b\n")
    with pytest.raises(MeldFormatError, match=r"missing columns \['Emotion'\]"):
        read_csv(path)


def test_dialogue_context_uses_earlier_turns_of_the_same_dialogue(tmp_path):
    path = write_csv(tmp_path / "a.csv", [row(1, 2, "c", "C"), row(1, 0, "a", "A"), row(2, 0, "x", "X"),
                                          row(1, 1, "b", "B"), row(1, 3, "d", "D")])
    context = dialogue_context(read_csv(path), turns=2)
    assert context["dia1_utt0"] == ()
    assert context["dia1_utt2"] == (("A", "a"), ("B", "b"))  # by Utterance_ID, not file order
    assert context["dia1_utt3"] == (("B", "b"), ("C", "c"))
    assert context["dia2_utt0"] == ()
    assert dialogue_context(read_csv(path), turns=0)["dia1_utt3"] == ()


def test_finds_csvs_and_clip_folders_below_the_root(tmp_path):
    (tmp_path / "MELD.Raw" / "train" / "train_splits").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "dev_splits_complete").mkdir(parents=True)  # a macOS shadow copy
    (tmp_path / "MELD.Raw" / "dev_splits_complete").mkdir()
    write_csv(tmp_path / "MELD.Raw" / "train_sent_emo.csv", [row(0, 0, "hi")])
    assert meld.find_csv(tmp_path, "train") == tmp_path / "MELD.Raw" / "train_sent_emo.csv"
    assert meld.find_clip_dir(tmp_path, "train") == tmp_path / "MELD.Raw" / "train" / "train_splits"
    assert meld.find_clip_dir(tmp_path, "dev") == tmp_path / "MELD.Raw" / "dev_splits_complete"
    with pytest.raises(FileNotFoundError, match="--test-csv"):
        meld.find_csv(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="--test-clips"):
        meld.find_clip_dir(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="--csv-dir"):
        meld.find_csv(tmp_path, "train", csv_dir=tmp_path / "elsewhere")


def test_clip_files_lists_mp4_by_id(tmp_path):
    for name in ("dia0_utt0.mp4", "final_videos_test1.mp4", "notes.txt", "._dia0_utt0.mp4"):
        (tmp_path / name).write_bytes(b"x")
    assert sorted(meld.clip_files(tmp_path)) == ["dia0_utt0", "final_videos_test1"]

"""Messages where tracebacks were: a clip,text CSV with a field over the csv module's 128 KiB
limit, an empty train split (preprocessed as "0 ok", then training died), and a --config that is
not UTF-8 each end in one line naming the file. (An output_dir that cannot be written:
test_planted_links.py.)"""
from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import pytest

from pipeline import infer, preprocess, train
from pipeline.data.meld import CLIP_DIRS, CSV_NAMES


def test_a_transcript_field_over_the_csv_limit_is_one_line(trained_run, tiny_meld_cache, tmp_path, caplog):
    clips = Path(tiny_meld_cache["meld_root"]) / CLIP_DIRS["dev"]
    first = sorted(clips.glob("*.mp4"))[0]
    transcripts = tmp_path / "said.csv"
    transcripts.write_text(f'clip,text\n{first.name},hello\nother.mp4,"{"a" * 200_000}"\n', encoding="utf-8")
    with caplog.at_level(logging.ERROR):
        status = infer.main(["--checkpoint", str(trained_run["out"] / "best.pt"), "--clips", str(first),
                             "--transcripts", str(transcripts), "--out", str(tmp_path / "rows.jsonl"),
                             "--workers", "0", "--device", "cpu"])
    assert status == 1 and f"--transcripts {transcripts}, line 3: field larger than field limit" in caplog.text


def test_an_empty_train_split_is_refused_in_one_line(tiny_meld_cache, trained_run, tmp_path, capsys):
    root = tmp_path / "MELD.Raw"
    shutil.copytree(tiny_meld_cache["meld_root"], root)
    with open(root / CSV_NAMES["train"], encoding="utf-8", newline="") as file:
        header = next(csv.reader(file))
    (root / CSV_NAMES["train"]).write_text(",".join(header) + "\n", encoding="utf-8")
    shutil.rmtree(root / CLIP_DIRS["train"])
    (root / CLIP_DIRS["train"]).mkdir()
    cache = tmp_path / "cache"
    assert preprocess.main([str(root), str(cache), "--workers", "0", *tiny_meld_cache["preprocess_overrides"]]) == 0
    capsys.readouterr()  # what preprocessing said (to a handler an earlier test may have left)
    overrides = [o for o in trained_run["overrides"] if not o.startswith("data.cache_dir=")]
    with pytest.raises(SystemExit):
        train.main([*overrides, f"data.cache_dir={cache}", f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert f"the cache of split 'train' in {cache / 'train'} holds no usable sample (its CSV has no rows)" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_a_config_that_is_not_utf8_is_one_line(tmp_path, capsys):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("output_dir: runs/caf\xe9\n".encode("latin-1"))
    with pytest.raises(SystemExit):
        train.main(["--config", str(config)])
    err = capsys.readouterr().err
    assert f"config file {config} is not UTF-8 text" in err and "Traceback" not in err

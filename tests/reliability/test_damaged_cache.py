"""Damaged cache files stop a run with one error line that names them, never a traceback nor
a run on fewer samples: an entry whose array has the wrong rank, size or dtype (naming its
file and entry), a manifest cut in the middle of a line or at a line end (naming the split,
its rows and the ids the cache holds). Rerunning preprocessing repairs such a manifest: it is
written again from the status records, and an entry lost with it is made again."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from reliability_helpers import TRAIN, assert_same_cache, run_cli

from pipeline import preprocess

SPLIT = "train"


def copy_cache(tiny_meld_cache: dict, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_meld_cache["cache_dir"], tmp_path / "cache"))


def train(tiny_meld_cache: dict, cache: Path, out: Path):
    return run_cli(["-m", "pipeline.train", *tiny_meld_cache["overrides"], *TRAIN, f"data.cache_dir={cache}",
                    "train.epochs=1", "train.max_steps_per_epoch=1", f"output_dir={out}"])


def error_lines(result) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if " ERROR " in line]


def assert_refused(result, out: Path) -> str:
    """The run failed with one error line, no traceback, before it saved anything."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert len(error_lines(result)) == 1, output[-3000:]
    assert not (out / "last.pt").exists() and not (out / "best.pt").exists()
    return error_lines(result)[0]


def manifest_rows(split_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (split_dir / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("damage", ["input_ids_2d", "log_mel_n_mels", "frames_float"])
def test_an_entry_of_the_wrong_shape_or_dtype_is_named(tiny_meld_cache, tmp_path, damage):
    cache = copy_cache(tiny_meld_cache, tmp_path)
    id_ = [row["id"] for row in manifest_rows(cache / SPLIT) if row["status"] == "ok"][3]
    path = cache / SPLIT / "items" / f"{id_}.npz"
    with np.load(path) as data:
        arrays = dict(data)
    name = {"input_ids_2d": "input_ids", "log_mel_n_mels": "log_mel", "frames_float": "frames"}[damage]
    if damage == "input_ids_2d":
        arrays[name] = arrays[name][None]  # [1, L]
    elif damage == "log_mel_n_mels":
        arrays[name] = arrays[name][:, : arrays[name].shape[1] // 2]  # half the mel bands
    else:
        arrays[name] = arrays[name].astype(np.float32)
    with open(path, "wb") as file:
        np.savez(file, **arrays)

    line = assert_refused(train(tiny_meld_cache, cache, tmp_path / "run"), tmp_path / "run")
    assert f"{path}:" in line and id_ in line and name in line, line
    assert str(list(arrays[name].shape)) in line and str(arrays[name].dtype) in line, line


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["cut_in_a_line", "last_lines_lost", "last_lines_and_an_entry_lost"])
def test_preprocessing_repairs_a_manifest_cut_short(tiny_meld_cache, tmp_path, caplog, damage):
    cache = copy_cache(tiny_meld_cache, tmp_path)
    manifest = cache / SPLIT / "manifest.jsonl"
    lines = manifest.read_text(encoding="utf-8").splitlines(keepends=True)
    ids = json.loads((cache / SPLIT / "ids.json").read_text(encoding="utf-8"))
    assert len(lines) == len(ids) > 6
    samples = sum(row["status"] == "ok" for row in manifest_rows(cache / SPLIT))
    if damage == "cut_in_a_line":
        manifest.write_text("".join(lines[:5]) + lines[5][: len(lines[5]) // 2], encoding="utf-8")
    else:  # the last three rows lost (with the last one's status record and arrays too)
        manifest.write_text("".join(lines[:-3]), encoding="utf-8")
    if damage == "last_lines_and_an_entry_lost":
        (cache / SPLIT / "status" / f"{ids[-1]}.json").unlink()
        (cache / SPLIT / "items" / f"{ids[-1]}.npz").unlink(missing_ok=True)

    line = assert_refused(train(tiny_meld_cache, cache, tmp_path / "refused"), tmp_path / "refused")
    assert f"{manifest}:" in line and "preprocessing" in line, line
    if damage == "cut_in_a_line":
        assert "line 6 is cut short" in line, line
    else:
        assert f"split {SPLIT!r}" in line and f"{len(lines) - 3} rows" in line and f"{len(ids)} ids" in line, line

    caplog.set_level("INFO")
    status = preprocess.main([tiny_meld_cache["meld_root"], str(cache), "--splits", SPLIT, "--workers", "1",
                              *tiny_meld_cache["preprocess_overrides"]])
    assert status == 0
    assert f"{len(ids)} ids, {1 if damage == 'last_lines_and_an_entry_lost' else 0} to do" in caplog.text
    assert_same_cache(cache, Path(tiny_meld_cache["cache_dir"]))  # the manifest as it was, every entry

    result = train(tiny_meld_cache, cache, tmp_path / "run")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert f"training on {samples} samples" in result.stdout + result.stderr

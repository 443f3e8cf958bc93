"""The cache notices what changed under it: after a label and a text are corrected in the CSV,
a missing clip is added and a clip is replaced, a rerun makes exactly those entries again
(and no other: their files are not even rewritten), and a further rerun has nothing to do."""
from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
from reliability_helpers import read_manifest

from pipeline import preprocess
from pipeline.data.cache import CacheSplit
from pipeline.data.meld import CLIP_DIRS, CSV_NAMES
from pipeline.sample.clip import make_clip
from pipeline.sample.text import write_meld_csv

RELABELLED, RETEXTED, ADDED, REPLACED = "dia0_utt0", "dia0_utt1", "dia1_utt0", "dia1_utt1"


def edit_csv(path: Path, changes: dict[str, dict[str, str]]) -> None:
    """Rewrite a MELD CSV with ``changes[id]`` applied to the rows of those ids."""
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))
    for row in rows:
        row.update(changes.get(f"dia{row['Dialogue_ID']}_utt{row['Utterance_ID']}", {}))
    write_meld_csv(path, rows)


def run(root: Path, out: Path, tiny_meld_cache: dict, caplog) -> str:
    caplog.clear()
    status = preprocess.main([str(root), str(out), "--splits", "dev", "--workers", "1",
                              *tiny_meld_cache["preprocess_overrides"]])
    assert status == 0
    return caplog.text


def test_a_rerun_redoes_exactly_the_entries_whose_row_or_clip_changed(tiny_meld_cache, tmp_path, caplog):
    caplog.set_level("INFO")
    root = tmp_path / "meld"
    shutil.copytree(tiny_meld_cache["meld_root"], root)  # copy2: the clips keep their modification times
    clips = root / CLIP_DIRS["dev"]
    held_back = tmp_path / f"{ADDED}.mp4"
    shutil.move(clips / f"{ADDED}.mp4", held_back)
    out = tmp_path / "cache"
    run(root, out, tiny_meld_cache, caplog)
    before = read_manifest(out / "dev")
    assert before[ADDED]["reason"] == "missing file"
    arrays_before = CacheSplit(out / "dev").load(REPLACED)
    items = {path.name: path.stat().st_mtime_ns for path in (out / "dev" / "items").glob("*.npz")}

    old = before[RELABELLED]["emotion"]
    new_emotion = "fear" if old != "fear" else "joy"
    edit_csv(root / CSV_NAMES["dev"], {RELABELLED: {"Emotion": new_emotion}, RETEXTED: {"Utterance": "The train leaves at noon."}})
    shutil.move(held_back, clips / f"{ADDED}.mp4")
    make_clip(clips / f"{REPLACED}.mp4", "anger", 1234, 1.0, 64, 36)  # a repaired clip: other content

    log = run(root, out, tiny_meld_cache, caplog)
    assert "dev: 4 entries to make again: 4 whose CSV row or clip changed" in log
    assert "15 ids, 4 to do" in log
    after = read_manifest(out / "dev")
    assert after[RELABELLED]["emotion"] == new_emotion
    assert after[RETEXTED]["text"].endswith("The train leaves at noon.")
    assert after[ADDED]["status"] == "ok"
    assert not np.array_equal(CacheSplit(out / "dev").load(REPLACED)["frames"], arrays_before["frames"])
    changed = {RELABELLED, RETEXTED, ADDED, REPLACED}
    assert {id_: row for id_, row in after.items() if id_ not in changed} == {
        id_: row for id_, row in before.items() if id_ not in changed}
    untouched = {path.name: path.stat().st_mtime_ns for path in (out / "dev" / "items").glob("*.npz")
                 if path.stem not in changed}
    assert untouched == {name: mtime for name, mtime in items.items() if Path(name).stem not in changed}

    assert "15 ids, 0 to do" in run(root, out, tiny_meld_cache, caplog)

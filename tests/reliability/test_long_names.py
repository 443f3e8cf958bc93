"""One odd name never stops a split: a stray clip with a legal 249-character name and a row
with a 300-digit Dialogue_ID (its clip name too long for the file system) used to end
preprocessing with "File name too long" on every rerun. Entry file names are bounded whatever
the id, and each stays its own row."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

from pipeline import preprocess
from pipeline.data.cache import CacheSplit, entry_name, status_path
from pipeline.data.meld import CLIP_DIRS, CSV_NAMES
from reliability_helpers import read_manifest


def test_a_long_clip_name_and_a_huge_dialogue_id_stay_their_own_rows(tiny_meld_cache, tmp_path):
    root = tmp_path / "MELD.Raw"
    shutil.copytree(tiny_meld_cache["meld_root"], root)
    clips = root / CLIP_DIRS["dev"]
    long_stem = "x" * 245
    shutil.copy(sorted(clips.glob("*.mp4"))[0], clips / f"{long_stem}.mp4")  # 249 characters in all
    with open(root / CSV_NAMES["dev"], encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file))
    huge = dict(rows[0], Dialogue_ID="9" * 300, Utterance_ID="0")
    with open(root / CSV_NAMES["dev"], "w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([*rows, huge])
    out = tmp_path / "cache"
    args = [str(root), str(out), "--splits", "dev", "--workers", "0", *tiny_meld_cache["preprocess_overrides"]]
    for _ in range(2):  # and the rerun finds every entry done
        assert preprocess.main(args) == 0
    manifest = read_manifest(out / "dev")
    huge_id = f"dia{'9' * 300}_utt0"
    assert manifest[long_stem]["status"] == "skipped" and manifest[long_stem]["reason"] == "no label"
    assert manifest[huge_id]["status"] == "skipped"
    assert manifest[huge_id]["reason"] == "missing file (File name too long)"
    assert {f"dia{row['Dialogue_ID']}_utt{row['Utterance_ID']}" for row in rows} <= manifest.keys()
    assert all(len(path.name.encode()) < 200 for path in (out / "dev").rglob("*"))
    assert status_path(out / "dev", long_stem).is_file() and entry_name(long_stem) != long_stem
    assert len(CacheSplit(out / "dev").records) == len(rows)


def test_short_ids_keep_their_entry_names():
    """Caches made before the bound keep working: ordinary ids name their files as they are."""
    assert entry_name("dia12_utt3") == "dia12_utt3" and entry_name("final_scene") == "final_scene"
    assert entry_name("a" * 151) != entry_name("a" * 152) and len(entry_name("é" * 200).encode()) < 100
    assert Path(f"{entry_name('.hidden')}.npz").name[0] != "."

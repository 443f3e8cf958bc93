"""Writing the feature cache (:mod:`pipeline.data.cache` gives its layout): a split folder
prepared for its parameters and ids, one finished entry at a time (arrays, then status), the
manifest once every id has a status. Every file goes to a temporary name first and is
renamed into place, so a killed run leaves no half-written entry."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from pipeline.data.cache import (FORMAT, VERSION, check_meta, done_ids, entry_name, item_path, params_key, read_json,
                                 status_path)
from pipeline.writing import write_atomic

STALE_TMP_SECONDS = 3600.0  # a temporary file this old belongs to a run that was killed


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, lambda file: file.write(json.dumps(data, ensure_ascii=False, indent=1).encode("utf-8")))


def meta_for(split: str, preprocess: Mapping[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "split": split, "preprocess": dict(preprocess),
            "key": params_key(preprocess)}


def prepare_split(split_dir: str | Path, split: str, preprocess: Mapping[str, Any],
                  ids: Sequence[str]) -> Path:
    """Create (or reopen) a split folder for writing with these parameters and ids.

    Raises CacheMismatchError when the folder holds a cache made with other parameters.
    """
    split_dir = Path(split_dir)
    (split_dir / "items").mkdir(parents=True, exist_ok=True)
    (split_dir / "status").mkdir(exist_ok=True)
    meta_path = split_dir / "meta.json"
    if meta_path.exists():
        check_meta(read_json(meta_path), preprocess, split_dir)
    else:
        write_json(meta_path, meta_for(split, preprocess))
    ids_path = split_dir / "ids.json"
    if not ids_path.exists() or read_json(ids_path) != list(ids):
        write_json(ids_path, list(ids))
        (split_dir / "manifest.jsonl").unlink(missing_ok=True)  # it no longer lists every id
    return split_dir


def write_entry(split_dir: str | Path, row: Mapping[str, Any],
                arrays: Mapping[str, np.ndarray] | None = None) -> None:
    """Store one finished id: its arrays (when ok), then its status record."""
    split_dir = Path(split_dir)
    if arrays:
        write_atomic(item_path(split_dir, row["id"]), lambda file: np.savez(file, **arrays))
    write_json(status_path(split_dir, row["id"]), dict(row))


def read_records(split_dir: str | Path, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The status records of those ``ids`` that have one."""
    split_dir, done = Path(split_dir), done_ids(split_dir)
    return {id_: read_json(status_path(split_dir, id_)) for id_ in ids if entry_name(id_) in done}


def forget_entries(split_dir: str | Path, ids: Iterable[str]) -> None:
    """Remove the entries of ``ids`` (status record, then arrays) and the manifest, which no
    longer describes the split: they are about to be made again."""
    split_dir = Path(split_dir)
    (split_dir / "manifest.jsonl").unlink(missing_ok=True)
    for id_ in ids:
        status_path(split_dir, id_).unlink(missing_ok=True)
        item_path(split_dir, id_).unlink(missing_ok=True)


def merge_split(split_dir: str | Path) -> list[str]:
    """Write ``manifest.jsonl`` if every expected id has a status; return the ids still
    missing (empty when the manifest was written). Also removes temporary files left by
    killed runs."""
    split_dir = Path(split_dir)
    ids = read_json(split_dir / "ids.json")
    done = done_ids(split_dir)
    missing = [id_ for id_ in ids if entry_name(id_) not in done]
    if missing:
        return missing
    rows = (json.dumps(read_json(status_path(split_dir, id_)), ensure_ascii=False) + "\n"
            for id_ in ids)
    write_atomic(split_dir / "manifest.jsonl", lambda file: file.write("".join(rows).encode("utf-8")))
    remove_stale_tmp(split_dir)
    return []


def remove_stale_tmp(split_dir: Path) -> None:
    """Delete temporary files old enough to belong to killed runs, not running ones."""
    cutoff = time.time() - STALE_TMP_SECONDS
    for folder in (split_dir / "items", split_dir / "status"):
        for tmp in folder.glob(".*.tmp"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
            except FileNotFoundError:
                pass

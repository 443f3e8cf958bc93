from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from pipeline.config import PreprocessConfig, VideoFeatures, to_dict
from pipeline.data import cache, cache_writer
from pipeline.data.cache import CacheMismatchError, CacheSplit

PARAMS = to_dict(PreprocessConfig())


def entry(id_: str, status: str = "ok") -> dict:
    return {"id": id_, "split": "dev", "status": status, "reason": None if status == "ok" else "missing file",
            "modalities": ["audio", "text"] if status == "ok" else [], "emotion": "joy", "sentiment": "positive",
            "speaker": "Joey", "dialogue_id": 0, "utterance_id": int(id_[-1]), "text": "hi"}


def arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, 100, 7).astype(np.int32), "attention_mask": np.ones(7, np.int8),
            "log_mel": rng.standard_normal((50, 64)).astype(np.float32)}


def test_write_merge_and_read_back(tmp_path):
    split_dir = cache_writer.prepare_split(tmp_path / "dev", "dev", PARAMS, ["dia0_utt0", "dia0_utt1", "dia0_utt2"])
    meta = json.loads((split_dir / "meta.json").read_text())
    assert meta["preprocess"] == PARAMS and meta["key"] == cache.params_key(PARAMS) and meta["split"] == "dev"
    cache_writer.write_entry(split_dir, entry("dia0_utt2"), arrays(2))
    cache_writer.write_entry(split_dir, entry("dia0_utt0"), arrays(0))
    assert cache_writer.merge_split(split_dir) == ["dia0_utt1"]  # not everything is done: no manifest
    assert not (split_dir / "manifest.jsonl").exists()

    partial = CacheSplit(split_dir)  # the reader works from the status records meanwhile
    assert not partial.complete and [r["id"] for r in partial.records] == ["dia0_utt0", "dia0_utt2"]

    cache_writer.write_entry(split_dir, entry("dia0_utt1", "skipped"))
    assert cache_writer.merge_split(split_dir) == []
    lines = (split_dir / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["dia0_utt0", "dia0_utt1", "dia0_utt2"]  # ids.json order

    split = CacheSplit(split_dir)
    assert split.complete and len(split) == 2 and len(split.rows) == 3
    assert [r["id"] for r in split.records] == ["dia0_utt0", "dia0_utt2"]
    loaded = split.load("dia0_utt2")
    assert set(loaded) == {"input_ids", "attention_mask", "log_mel"}
    for name, value in arrays(2).items():
        assert loaded[name].dtype == value.dtype
        np.testing.assert_array_equal(loaded[name], value)
    assert not (split_dir / "items" / "dia0_utt1.npz").exists()  # skipped ids store no arrays


def test_other_parameters_are_refused_with_the_differences(tmp_path):
    cache_writer.prepare_split(tmp_path / "dev", "dev", PARAMS, ["a"])
    other = to_dict(PreprocessConfig(video=VideoFeatures(num_frames=4), modalities=["text"]))
    with pytest.raises(CacheMismatchError) as info:
        cache_writer.prepare_split(tmp_path / "dev", "dev", other, ["a"])
    message = str(info.value)
    assert "video.num_frames: cache has 8, wanted 4" in message
    assert "modalities: cache has ['audio', 'text', 'video'], wanted ['text']" in message
    assert "video.size" not in message  # only the keys that differ
    with pytest.raises(CacheMismatchError, match="video.num_frames"):
        CacheSplit(tmp_path / "dev").check_params(other)
    CacheSplit(tmp_path / "dev").check_params(PARAMS)  # same parameters: accepted


def test_not_a_cache(tmp_path):
    with pytest.raises(FileNotFoundError, match="no meta.json"):
        CacheSplit(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format": "something-else", "version": 1}))
    with pytest.raises(CacheMismatchError, match="something-else"):
        CacheSplit(tmp_path)


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    target = tmp_path / "x.npz"

    def explode(file):
        file.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cache_writer.write_atomic(target, explode)
    assert list(tmp_path.iterdir()) == []


def test_changed_ids_drop_the_manifest(tmp_path):
    split_dir = cache_writer.prepare_split(tmp_path / "dev", "dev", PARAMS, ["dia0_utt0"])
    cache_writer.write_entry(split_dir, entry("dia0_utt0"), arrays(0))
    assert cache_writer.merge_split(split_dir) == []
    cache_writer.prepare_split(split_dir, "dev", PARAMS, ["dia0_utt0", "dia0_utt1"])
    assert not (split_dir / "manifest.jsonl").exists()
    assert [r["id"] for r in CacheSplit(split_dir).rows] == ["dia0_utt0"]


def test_merge_removes_only_stale_temporary_files(tmp_path):
    split_dir = cache_writer.prepare_split(tmp_path / "dev", "dev", PARAMS, ["dia0_utt0"])
    cache_writer.write_entry(split_dir, entry("dia0_utt0"), arrays(0))
    stale, fresh = split_dir / "items" / ".dia0_utt9.npz.123.tmp", split_dir / "items" / ".dia0_utt8.npz.456.tmp"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    old = time.time() - 2 * cache_writer.STALE_TMP_SECONDS
    os.utime(stale, (old, old))
    assert cache_writer.merge_split(split_dir) == []
    assert not stale.exists() and fresh.exists()
    assert cache.done_ids(split_dir) == {"dia0_utt0"}

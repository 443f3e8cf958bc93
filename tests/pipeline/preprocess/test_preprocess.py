from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import preprocess
from pipeline.data.cache import CacheSplit
from pipeline.data.meld import CSV_NAMES
from pipeline.media.text import normalize_text
from pipeline.preprocess.run import in_shard
from tests.pipeline.meld_fixtures import FAULTS, make_meld_tree, save_tokenizer

REPO = Path(__file__).resolve().parents[3]
SPLITS = ("train", "dev")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("meld")
    info = make_meld_tree(root / "MELD.Raw")
    tokenizer = save_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    overrides = [f"preprocess.text.model={tokenizer}", "preprocess.video.size=16",
                 "preprocess.video.num_frames=4", "preprocess.audio.max_seconds=2",
                 "preprocess.text.context_turns=1"]
    return {"root": root, "tokenizer": tokenizer, "overrides": overrides, **info}


def run(tree, out: Path, *extra: str, workers: int = 1, root: Path | None = None) -> int:
    return preprocess.main([str(root or tree["root"]), str(out), "--splits", ",".join(SPLITS),
                            "--workers", str(workers), *tree["overrides"], *extra])


def snapshot(out: Path, splits=SPLITS) -> dict:
    """Everything a reader can see: manifest text and every stored array."""
    result = {}
    for split in splits:
        reader = CacheSplit(out / split)
        assert reader.complete
        result[split] = ((out / split / "manifest.jsonl").read_text(),
                         {row["id"]: reader.load(row["id"]) for row in reader.records})
    return result


def assert_same(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    for split in left:
        assert left[split][0] == right[split][0], split
        assert left[split][1].keys() == right[split][1].keys()
        for id_, arrays in left[split][1].items():
            assert arrays.keys() == right[split][1][id_].keys()
            for name in arrays:
                np.testing.assert_array_equal(arrays[name], right[split][1][id_][name], err_msg=f"{id_} {name}")


@pytest.fixture(scope="module")
def reference(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    assert run(tree, out) == 0
    return out


def manifest(out: Path, split: str) -> dict[str, dict]:
    lines = (out / split / "manifest.jsonl").read_text().splitlines()
    return {row["id"]: row for row in map(json.loads, lines)}


def test_every_fault_gets_the_right_row(reference):
    rows = manifest(reference, "dev")
    assert list(rows) == list(FAULTS.values()) + ["final_videos_test_extra"]
    by_fault = {fault: rows[id_] for fault, id_ in FAULTS.items()}
    assert by_fault["missing"]["reason"] == "missing file"
    assert by_fault["empty"]["reason"] == "empty file"
    for fault in ("truncated", "not_video"):
        assert by_fault[fault]["status"] == "skipped" and by_fault[fault]["reason"].startswith("unreadable: ")
    assert by_fault["no_audio"]["modalities"] == ["text", "video"]
    assert by_fault["no_video"]["modalities"] == ["audio", "text"]
    for fault in ("short", "long", "portrait", "mono_44k_30fps"):
        assert by_fault[fault]["status"] == "ok" and by_fault[fault]["modalities"] == ["audio", "text", "video"]
    for fault in ("missing", "empty", "truncated", "not_video"):
        assert by_fault[fault]["status"] == "skipped" and by_fault[fault]["modalities"] == []
        assert not (reference / "dev" / "items" / f"{FAULTS[fault]}.npz").exists()
    extra = rows["final_videos_test_extra"]
    assert extra["status"] == "skipped" and extra["reason"] == "no label"
    assert extra["emotion"] is None and extra["text"] is None
    assert not (reference / "dev" / "items" / "final_videos_test_extra.npz").exists()


def test_feature_shapes_and_dtypes(reference):
    for split in SPLITS:
        reader = CacheSplit(reference / split)
        assert reader.preprocess["video"]["num_frames"] == 4
        for row in reader.records:
            arrays = reader.load(row["id"])
            expected = {"text": {"input_ids", "attention_mask", "target_mask"}, "audio": {"log_mel"}, "video": {"frames"}}
            assert set(arrays) == set().union(*(expected[m] for m in row["modalities"])), row["id"]
            assert arrays["input_ids"].dtype == np.int32 and arrays["attention_mask"].dtype == np.int8
            assert arrays["input_ids"].shape == arrays["attention_mask"].shape
            assert arrays["target_mask"].dtype == np.int8 and arrays["target_mask"].shape == arrays["input_ids"].shape
            if "audio" in row["modalities"]:
                log_mel = arrays["log_mel"]
                assert log_mel.dtype == np.float32 and log_mel.shape[1] == 64
                assert 1 <= log_mel.shape[0] <= 198  # max_seconds=2 at a 10 ms hop
            if "video" in row["modalities"]:
                assert arrays["frames"].shape == (4, 16, 16, 3) and arrays["frames"].dtype == np.uint8


def test_labels_and_features_stay_aligned(tree, reference):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tree["tokenizer"])
    rows = manifest(reference, "train")
    reader = CacheSplit(reference / "train")
    for index, (csv_row, id_) in enumerate(zip(tree["train_rows"], tree["train_ids"])):
        row = rows[id_]
        assert (row["dialogue_id"], row["utterance_id"]) == (csv_row["dialogue"], csv_row["utterance_id"])
        assert (row["emotion"], row["sentiment"]) == (csv_row["emotion"], csv_row["sentiment"])
        assert row["text"] == normalize_text(csv_row["utterance"]) and row["speaker"] == csv_row["speaker"]
        arrays = reader.load(id_)
        # clip durations are 1.0, 1.5, 2.0, 2.5 s: the audio of each id is its own clip's
        assert arrays["log_mel"].shape[0] == pytest.approx(min(100 * (1.0 + 0.5 * index), 198), abs=6)
    assert rows["dia4_utt0"]["text"] == "How you doin’?"  # the \x92 of the CSV, repaired
    tokens = " ".join(tokenizer.convert_ids_to_tokens(reader.load("dia0_utt1")["input_ids"].tolist()))
    assert tokens == "[CLS] chandler : i am so happy . [SEP] monica : oh my god ! [SEP]"  # one turn of context

    long_clip = CacheSplit(reference / "dev").load(FAULTS["long"])
    assert long_clip["log_mel"].shape[0] == 198  # 30 s clip, only max_seconds read
    shown = long_clip["frames"].reshape(4, -1).mean(axis=1) / 8  # brightness = 8 * t
    np.testing.assert_allclose(shown, (np.arange(4) + 0.5) * 30 / 4, atol=0.3)


def test_running_again_when_complete_does_nothing(tree, reference):
    before = {path: path.stat().st_mtime_ns for path in reference.rglob("*")}
    assert run(tree, reference) == 0
    assert {path: path.stat().st_mtime_ns for path in reference.rglob("*")} == before


def test_resume_after_a_simulated_kill(tree, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    dev = out / "dev"
    (dev / "manifest.jsonl").unlink()
    for id_ in (FAULTS["long"], FAULTS["portrait"]):  # killed before these were started
        (dev / "items" / f"{id_}.npz").unlink()
        (dev / "status" / f"{id_}.json").unlink()
    (dev / "status" / f"{FAULTS['short']}.json").unlink()  # killed between arrays and status
    (dev / "status" / f"{FAULTS['missing']}.json").unlink()
    (dev / "items" / f".{FAULTS['long']}.npz.999.tmp").write_bytes(b"half an entry")
    assert sorted(r["id"] for r in CacheSplit(dev).rows) == sorted(  # readable meanwhile
        set(manifest(reference, "dev")) - {FAULTS["long"], FAULTS["portrait"], FAULTS["short"], FAULTS["missing"]})
    assert run(tree, out) == 0
    assert_same(snapshot(out), snapshot(reference))


def test_resume_after_killing_a_real_run(tree, reference, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pipeline.preprocess", str(tree["root"]), str(out), "--splits", "dev",
               "--workers", "1", *tree["overrides"]]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status = out / "dev" / "status"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if status.is_dir() and len(list(status.glob("*.json"))) >= 3:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "dev" / "manifest.jsonl").exists()  # it really was killed half-way
    assert run(tree, out, "--splits", "dev") == 0
    assert_same(snapshot(out, ["dev"]), snapshot(reference, ["dev"]))


def test_a_cache_with_other_parameters_is_refused(tree, reference, caplog):
    before = {path: path.stat().st_mtime_ns for path in reference.rglob("*")}
    with caplog.at_level(logging.ERROR):
        assert run(tree, reference, "preprocess.video.num_frames=6") == 1
    assert "video.num_frames: cache has 4, wanted 6" in caplog.text
    assert {path: path.stat().st_mtime_ns for path in reference.rglob("*")} == before


def test_two_shards_then_merge_equal_one_run(tree, reference, tmp_path):
    out = tmp_path / "out"
    ids = tree["dev_ids"] + ["final_videos_test_extra"]
    assert 0 < sum(in_shard(id_, 2, 0) for id_ in ids) < len(ids)  # both shards have work
    assert run(tree, out, "--num-shards", "2", "--shard-id", "0", workers=2) == 0  # a worker pool
    assert not (out / "dev" / "manifest.jsonl").exists()  # shard 1 has not run yet
    assert run(tree, out, "--num-shards", "2", "--shard-id", "1") == 0  # the last shard merges
    assert_same(snapshot(out), snapshot(reference))

    for split in SPLITS:
        (out / split / "manifest.jsonl").unlink()
    assert preprocess.main(["--merge", str(out)]) == 0
    assert_same(snapshot(out), snapshot(reference))


def test_merge_reports_unfinished_shards(tree, tmp_path, caplog):
    out = tmp_path / "out"
    assert run(tree, out, "--num-shards", "2", "--shard-id", "0", "preprocess.modalities=[text]") == 0
    with caplog.at_level(logging.ERROR):
        assert preprocess.main(["--merge", str(out), "--splits", "dev"]) == 1
    assert "run the remaining shards" in caplog.text


def test_text_only_cache_from_the_csvs_alone(tree, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a caller's threads survive an in-process run (a pool's workers use 1 each)
    csv_dir = tmp_path / "labels"
    csv_dir.mkdir()
    for split in SPLITS:
        shutil.copy(tree["root"] / "MELD.Raw" / CSV_NAMES[split], csv_dir)
    out = tmp_path / "out"
    try:
        assert run(tree, out, "--csv-dir", str(csv_dir), "preprocess.modalities=[text]", root=tmp_path / "nowhere",
                   workers=2) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    rows = manifest(out, "dev")
    assert list(rows) == tree["dev_ids"]  # no clip folder: no unlabelled rows either
    assert all(row["status"] == "ok" and row["modalities"] == ["text"] for row in rows.values())
    assert set(CacheSplit(out / "dev").load(FAULTS["missing"])) == {"input_ids", "attention_mask", "target_mask"}


def test_explicit_paths_and_missing_inputs(tree, tmp_path, caplog):
    labels = tmp_path / "my labels.csv"
    shutil.copy(tree["root"] / "MELD.Raw" / CSV_NAMES["dev"], labels)
    clips = tmp_path / "clips dir"
    shutil.copytree(tree["root"] / "MELD.Raw" / "dev_splits_complete", clips)
    out = tmp_path / "out"
    assert run(tree, out, "--splits", "dev", "--dev-csv", str(labels), "--dev-clips", str(clips),
               root=tmp_path / "nowhere") == 0
    assert len(CacheSplit(out / "dev").rows) == 11

    with caplog.at_level(logging.ERROR):
        assert run(tree, tmp_path / "o2", root=tmp_path / "nowhere") == 1
    assert "--train-csv" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert run(tree, tmp_path / "o3", "--splits", "dev", "--dev-csv", str(labels), root=tmp_path / "nowhere") == 1
    assert "--dev-clips" in caplog.text
    with pytest.raises(SystemExit):
        run(tree, tmp_path / "o4", "preprocess.video.frames=3")  # unknown key


def test_shell_wrapper_prints_usage():
    result = subprocess.run(["bash", str(REPO / "scripts" / "preprocess_meld.sh")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "MELD_ROOT OUT_DIR" in result.stderr and "--num-shards" in result.stderr


def test_manifest_rows_record_the_frames_with_a_face(tree, tmp_path, monkeypatch):
    from pipeline.media import decode as media

    frames_seen = iter(range(10_000))
    monkeypatch.setattr(media, "largest_face", lambda frame: (2, 2, 6, 6) if next(frames_seen) % 4 == 0 else None)
    out = tmp_path / "faces"
    assert run(tree, out, "--splits", "dev", "preprocess.video.face_crop=opencv",
               "preprocess.modalities=[video]") == 0
    rows = [row for row in manifest(out, "dev").values() if row["status"] == "ok"]
    assert rows and all(row["face_frames"] == 1 for row in rows)  # 1 of each clip's 4 frames

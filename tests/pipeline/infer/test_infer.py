"""Batch inference end to end: a tiny model trained by pipeline.train on the generated MELD
folder of ``tiny_meld_cache``, then ``pipeline.infer`` over its test clips (compared with
evaluating them through the training cache) and over a folder of broken clips, odd file
names and missing transcripts."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline import infer, train
from pipeline.data.cache import CacheSplit
from pipeline.data.dataset import MeldDataset, collate
from pipeline.data.meld import CLIP_DIRS, CSV_NAMES
from pipeline.infer import transcripts
from pipeline.infer.clips import list_clips
from pipeline.infer.decoding import Decoded, Job, batches
from pipeline.infer.transcripts import InputError
from pipeline.labels import EMOTIONS, SENTIMENTS
from pipeline.model import MultimodalModel

REPO = Path(__file__).resolve().parents[3]
NUM_EXPERTS = 4  # the MoE head's default: rows carry that many gates
ATOL = 1e-5  # inference against evaluation: only float rounding may differ (batch padding)


@pytest.fixture(scope="module")
def trained(tiny_meld_cache, tmp_path_factory) -> Iterator[dict]:
    """best.pt of a short pipeline.train run (MoE head, so rows have gates) on the tiny cache,
    the generated MELD folder, and the probabilities evaluation gives each cached test clip."""
    run_dir = tmp_path_factory.mktemp("run")
    train.main([f"output_dir={run_dir}", *tiny_meld_cache["overrides"], "model.head.type=moe",
                "train.epochs=1", "train.max_steps_per_epoch=1", "train.batch_size=8", "data.num_workers=0",
                "train.device=cpu"])
    cache_dir = Path(tiny_meld_cache["cache_dir"])
    checkpoint = run_dir / "best.pt"
    yield {"checkpoint": checkpoint, "last": run_dir / "last.pt", "meld": cache_dir.parent / "MELD.Raw",
           "test_cache": cache_dir / "test",
           "expected": evaluate_cache(checkpoint, cache_dir / "test")}
    shutil.rmtree(run_dir)  # its checkpoints take about 300 MB


def evaluate_cache(checkpoint: Path, split_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """Probabilities per cached clip the way training evaluates: MeldDataset + collate + model."""
    model = MultimodalModel.from_checkpoint(checkpoint)
    split = CacheSplit(split_dir)
    split.check_params(torch.load(checkpoint, weights_only=True)["preprocess"])  # the checkpoint's params
    loader = DataLoader(MeldDataset(split_dir, sorted(model.encoders)), batch_size=5, collate_fn=collate)
    expected = {}
    with torch.inference_mode():
        for batch in loader:
            outputs = model(batch)
            for row, id_ in enumerate(batch["ids"]):
                expected[id_] = {task: outputs[task][row].softmax(0).numpy() for task in ("emotion", "sentiment")}
                expected[id_]["regression"] = outputs["regression"][row].numpy()
    return expected


def run_infer(*args: str | Path) -> int:
    return infer.main([str(arg) for arg in args])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def probs(row: dict, task: str, names) -> np.ndarray:
    return np.array([row[f"{task}_probs"][name] for name in names])


def assert_ok_row(row: dict) -> None:
    assert row["status"] == "ok" and row["error"] is None, row
    for task, names in (("emotion", EMOTIONS), ("sentiment", SENTIMENTS)):
        assert list(row[f"{task}_probs"]) == list(names)
        assert sum(row[f"{task}_probs"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row[task] == max(row[f"{task}_probs"], key=row[f"{task}_probs"].get)
    assert set(row["regression"]) == {"polarity"}
    assert len(row["gates"]) == NUM_EXPERTS and sum(row["gates"]) == pytest.approx(1.0, abs=1e-5)


def test_predictions_equal_evaluation_through_the_training_cache(trained, tmp_path, capsys):
    clip_dir = trained["meld"] / CLIP_DIRS["test"]
    out = tmp_path / "out" / "predictions.jsonl"
    status = run_infer("--checkpoint", trained["checkpoint"], "--clips", clip_dir, "--transcripts",
                       trained["meld"] / CSV_NAMES["test"], "--out", out, "--batch-size", 4, "--workers", 2,
                       "--device", "cpu")
    assert status == 0
    assert not out.with_name(out.name + ".partial").exists()
    rows = read_jsonl(out)
    clips = sorted(clip_dir.glob("*.mp4"))
    assert [row["clip"] for row in rows] == [str(clip) for clip in clips]  # one row per clip, in order
    assert [row["id"] for row in rows] == [clip.stem for clip in clips]
    expected = trained["expected"]
    assert len(expected) >= 10 and set(expected) < {row["id"] for row in rows}
    spread = np.stack([e["emotion"] for e in expected.values()])
    gaps = np.abs(spread[:, None] - spread[None]).max(-1) + np.eye(len(spread))
    assert gaps.min() > 10 * ATOL  # so equal probabilities below mean the same clip and inputs
    for row in rows:
        assert_ok_row(row)
        if row["id"] in expected:
            assert row["modalities"] == ["audio", "text", "video"]
            for task, names in (("emotion", EMOTIONS), ("sentiment", SENTIMENTS)):
                np.testing.assert_allclose(probs(row, task, names), expected[row["id"]][task], atol=ATOL)
            np.testing.assert_allclose([row["regression"]["polarity"]], expected[row["id"]]["regression"], atol=ATOL)
        else:  # the unlabelled extra clip that no CSV row names: predicted without text
            assert row["modalities"] == ["audio", "video"]
    report = capsys.readouterr().out
    assert "emotion: accuracy" in report and "weighted F1" in report and f"(n={len(expected)})" in report


def test_best_pt_is_lean_and_predicts_like_the_full_checkpoint(trained, tmp_path):
    """best.pt keeps what scoring needs and no resume state; after one epoch it holds the same
    weights as last.pt (the full training state, as older best.pt files were), so inference
    from either gives the same rows, and the older, full format still loads."""
    best = torch.load(trained["checkpoint"], map_location="cpu", weights_only=True)
    last = torch.load(trained["last"], map_location="cpu", weights_only=True)
    assert {"optimizer", "scheduler", "scaler", "rng"} <= set(last)
    assert not {"optimizer", "scheduler", "scaler", "rng", "training_model"} & set(best)
    assert {"model", "config", "preprocess", "labels", "metrics", "epoch", "best_metric"} <= set(best)
    assert best["epoch"] == last["epoch"] == 1
    assert trained["checkpoint"].stat().st_size < 0.55 * trained["last"].stat().st_size
    clips = sorted((trained["meld"] / CLIP_DIRS["test"]).glob("*.mp4"))[:3]
    listing = tmp_path / "clips.txt"
    listing.write_text("".join(f"{clip}\n" for clip in clips), encoding="utf-8")
    rows = {}
    for name in ("checkpoint", "last"):
        out = tmp_path / f"{name}.jsonl"
        assert run_infer("--checkpoint", trained[name], "--clips", listing, "--transcripts",
                         trained["meld"] / CSV_NAMES["test"], "--out", out, "--workers", 0, "--device", "cpu") == 0
        rows[name] = read_jsonl(out)
    assert len(rows["checkpoint"]) == 3 and all(row["status"] == "ok" for row in rows["checkpoint"])
    assert rows["checkpoint"] == rows["last"]


@pytest.fixture(scope="module")
def odd_folder(trained, tmp_path_factory) -> dict:
    """Copies of cached test clips under odd names, with an .srt and a .txt sidecar, plus a
    zero-byte, a truncated and a text file named .mp4 and a hidden clip."""
    folder = tmp_path_factory.mktemp("odd") / "clips dir"
    folder.mkdir()
    ids = sorted(trained["expected"])[:3]
    source = {id_: trained["meld"] / CLIP_DIRS["test"] / f"{id_}.mp4" for id_ in ids}
    names = {"with space.mp4": ids[0], "quote's \"double\".mp4": ids[1], "$(touch pwned).mp4": ids[2],
             "naïve 日本.mp4": ids[0], ".hidden.mp4": ids[0]}
    for name, id_ in names.items():
        shutil.copy(source[id_], folder / name)
    (folder / "with space.srt").write_text(
        "1\r\n00:00:00,000 --> 00:00:00,800\r\n<i>i am so</i> happy\r\n\r\n"
        "2\r\n00:00:00,800 --> 00:00:01,000\r\nvery glad\r\n", encoding="utf-8")
    (folder / "quote's \"double\".txt").write_text("the train\nleaves at noon .\n", encoding="utf-8")
    (folder / "empty.mp4").write_bytes(b"")
    data = source[ids[1]].read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (folder / "notes.mp4").write_text("not a video\n", encoding="utf-8")
    text = {"with space.mp4": True, "quote's \"double\".mp4": True, "$(touch pwned).mp4": False,
            "naïve 日本.mp4": False}
    errors = {"empty.mp4": "empty file", "truncated.mp4": "unreadable", "notes.mp4": "unreadable"}
    return {"folder": folder, "order": sorted([*text, *errors]), "text": text, "errors": errors}


def check_odd_rows(rows: list[dict], odd: dict) -> None:
    assert [Path(row["clip"]).name for row in rows] == odd["order"]  # the hidden clip is left out
    for row in rows:
        name = Path(row["clip"]).name
        if name in odd["errors"]:
            assert row["status"] == "error" and row["error"].startswith(odd["errors"][name]), row
            assert row["emotion"] is None and row["modalities"] == []
        else:
            assert_ok_row(row)
            assert row["id"] == name[: -len(".mp4")]
            wanted = ["audio", "text", "video"] if odd["text"][name] else ["audio", "video"]
            assert row["modalities"] == wanted, name


def test_broken_clips_odd_names_and_sidecar_transcripts(trained, odd_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a shell would run "touch pwned"
    out = tmp_path / "predictions.jsonl"
    status = run_infer("--checkpoint", trained["checkpoint"], "--clips", odd_folder["folder"], "--out", out,
                       "--batch-size", 2, "--workers", 1, "--device", "cpu")
    assert status == 0  # broken clips are rows, not failures
    check_odd_rows(read_jsonl(out), odd_folder)
    assert not (tmp_path / "pwned").exists() and not (odd_folder["folder"] / "pwned").exists()


def test_csv_output_from_a_glob(trained, odd_folder, tmp_path):
    out = tmp_path / "predictions.csv"
    status = run_infer("--checkpoint", trained["checkpoint"], "--clips", odd_folder["folder"] / "*.mp4",
                       "--out", out, "--workers", 1, "--device", "cpu")
    assert status == 0
    with open(out, encoding="utf-8", newline="") as file:
        table = list(csv.DictReader(file))
    assert [Path(row["clip"]).name for row in table] == odd_folder["order"]
    for row in table:
        name = Path(row["clip"]).name
        if name in odd_folder["errors"]:
            assert row["status"] == "error" and row["error"].startswith(odd_folder["errors"][name])
            assert row["emotion"] == "" and row["emotion_prob_joy"] == ""
            continue
        assert row["status"] == "ok" and row["error"] == ""
        assert row["modalities"] == ("audio+text+video" if odd_folder["text"][name] else "audio+video")
        for task, names in (("emotion", EMOTIONS), ("sentiment", SENTIMENTS)):
            values = [float(row[f"{task}_prob_{label}"]) for label in names]
            assert sum(values) == pytest.approx(1.0, abs=1e-5)
            assert row[task] == names[int(np.argmax(values))]
        float(row["regression_polarity"])
        assert len(json.loads(row["gates"])) == NUM_EXPERTS


def test_list_file_and_clip_text_csv_match_the_cache(trained, tmp_path):
    """A clip,text,speaker CSV matched by file name, stem and path gives the clip the tokens
    its MELD row gave it in preprocessing, so the predictions equal the cache's."""
    records = {row["id"]: row for row in CacheSplit(trained["test_cache"]).records}
    ids = sorted(trained["expected"])[3:6]
    own = tmp_path / "own clips"
    own.mkdir()
    names = ["a b.mp4", "c'd é.mp4", "e $(f).mp4"]
    for name, id_ in zip(names, ids):
        shutil.copy(trained["meld"] / CLIP_DIRS["test"] / f"{id_}.mp4", own / name)
    keys = [names[0], Path(names[1]).stem, f"own clips{os.sep}{names[2]}"]  # name, stem, path from the CSV's folder
    with open(tmp_path / "transcripts.csv", "w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["clip", "speaker", "text"])
        for key, id_ in zip(keys, ids):
            writer.writerow([key, records[id_]["speaker"], records[id_]["text"]])
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "clips.txt").write_text(
        "# newest first\n\n" + f"../own clips/{names[2]}\n" + f"{own / names[1]}\n" + "missing.mp4\n"
        + f"../own clips/{names[0]}\n", encoding="utf-8")
    out = tmp_path / "predictions.jsonl"
    status = run_infer("--checkpoint", trained["checkpoint"], "--clips", lists / "clips.txt", "--transcripts",
                       tmp_path / "transcripts.csv", "--out", out, "--workers", 1, "--device", "cpu")
    assert status == 0
    rows = read_jsonl(out)
    assert [Path(row["clip"]).name for row in rows] == [names[2], names[1], "missing.mp4", names[0]]
    assert rows[2]["status"] == "error" and rows[2]["error"] == "missing file"
    for row, id_ in ((rows[0], ids[2]), (rows[1], ids[1]), (rows[3], ids[0])):
        assert_ok_row(row)
        assert row["modalities"] == ["audio", "text", "video"]
        for task, labels in (("emotion", EMOTIONS), ("sentiment", SENTIMENTS)):
            np.testing.assert_allclose(probs(row, task, labels), trained["expected"][id_][task], atol=ATOL)


def test_batches_ramp_up_then_stay_full():
    def decoded(name: str, error: str | None = None) -> Decoded:
        return Decoded(Job(name, name, None), None if error else {}, [], error)

    def groups(stream, batch_size):
        return [[item.job.id for item in group] for group in batches(stream, batch_size)]

    waiting = [(decoded(name), False) for name in "abcdefgh"]  # the next clip is never ready yet
    assert groups(waiting, 4) == [["a"], ["b", "c"], ["d", "e", "f", "g"], ["h"]]
    piled = [(decoded("a"), False), (decoded("b", "empty file"), True), (decoded("c"), True),
             (decoded("d"), False), (decoded("e"), True), (decoded("f"), True), (decoded("g"), False)]
    # errors ride along without counting; a full batch is handed over even if more are ready
    assert groups(piled, 2) == [["a"], ["b", "c", "d"], ["e", "f"], ["g"]]


def test_read_srt_keeps_only_the_spoken_text():
    srt = ("1\r\n00:00:01,000 --> 00:00:02,000\r\n<i>Hello</i> there,\r\nfriend.\r\n\r\n"
           "2\r\n00:00:02,500 --> 00:00:03,000\r\n{\\an8}42\r\n\r\n\r\n"
           "3\n00:00:03,000 --> 00:00:04,000\nBye!\n")
    assert transcripts.read_srt(srt) == "Hello there, friend. 42 Bye!"


def test_unknown_transcript_columns_and_missing_clips_are_clear_errors(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("file,words\na.mp4,hi\n", encoding="utf-8")
    with pytest.raises(InputError, match="clip,text"):
        transcripts.read_transcripts(path, 0)
    with pytest.raises(InputError, match="no such folder"):
        list_clips(str(tmp_path / "nowhere"))
    with pytest.raises(InputError, match="matches no media"):
        list_clips(str(tmp_path / "*.mp4"))


def test_non_checkpoint_file_fails_with_a_clear_message(tmp_path):
    bogus = tmp_path / "best.pt"
    bogus.write_text("not a checkpoint", encoding="utf-8")
    (tmp_path / "clips").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.infer", "--checkpoint", str(bogus), "--clips", str(tmp_path / "clips"),
         "--out", str(tmp_path / "p.jsonl")],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode != 0
    assert re.search(rf"ERROR .*{re.escape(str(bogus))} .*not a (torch checkpoint|meld-fusion-checkpoint) file",
                     result.stderr), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "p.jsonl").exists()


def without_tokenizer(ckpt: dict) -> dict:
    text = {**ckpt["preprocess"]["text"], "model": "/nowhere/tokenizer"}
    return {**ckpt, "preprocess": {**ckpt["preprocess"], "text": text}}


@pytest.mark.parametrize("change, message", [
    (lambda ckpt: {**ckpt, "version": 99}, "checkpoint version 99; this code reads version 1"),
    (lambda ckpt: {**ckpt, "format": "other"}, "is not a meld-fusion-checkpoint (format: 'other')"),
    (without_tokenizer, "text model folder /nowhere/tokenizer does not exist"),  # fails before any worker starts
])
def test_foreign_or_unusable_checkpoint_fails_with_a_clear_message(trained, odd_folder, tmp_path, caplog,
                                                                   change, message):
    torch.save(change(torch.load(trained["checkpoint"], weights_only=True)), tmp_path / "other.pt")
    status = run_infer("--checkpoint", tmp_path / "other.pt", "--clips", odd_folder["folder"],
                       "--out", tmp_path / "p.jsonl", "--workers", 1)
    assert status == 1
    assert message in caplog.text
    assert not (tmp_path / "p.jsonl").exists()

"""``pipeline.infer --checkpoint A B``: an ensemble of two tiny models that preprocess
differently (A reads text, audio and video; B reads text alone, with one turn of dialogue
context, through a dialogue GRU). Each clip's row holds the mean of the probabilities each
member gives it alone; members with other label vocabularies are refused; a clip one member
cannot use is an error row naming that member."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import infer, preprocess, train
from pipeline.data.meld import CLIP_DIRS, CSV_NAMES


# Two steps of training on the tiny MELD cache's train split, on the CPU (no test split).
QUICK_RUN = ["train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=4", "data.num_workers=0",
             "train.device=cpu", "data.test_split="]


@pytest.fixture(scope="module")
def members(tiny_meld_cache, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ensemble")
    common = QUICK_RUN
    train.main([*tiny_meld_cache["overrides"], *common, f"output_dir={root / 'a'}"])
    text = [*tiny_meld_cache["preprocess_overrides"], "preprocess.text.context_turns=1", "preprocess.modalities=[text]"]
    assert preprocess.main([tiny_meld_cache["meld_root"], str(root / "cache"), "--splits", "train,dev",
                            "--workers", "0", *text]) == 0
    train.main([f"data.cache_dir={root / 'cache'}", *text, "model.modalities=[text]", "model.fusion.type=concat",
                "model.context.type=gru", *common, "train.seed=5", f"output_dir={root / 'b'}"])
    meld = Path(tiny_meld_cache["meld_root"])
    return {"a": root / "a" / "best.pt", "b": root / "b" / "best.pt", "clips": meld / CLIP_DIRS["test"],
            "csv": meld / CSV_NAMES["test"]}


def predict(members: dict, out: Path, *checkpoints: Path, clips: Path | None = None) -> list[dict]:
    assert infer.main(["--checkpoint", *map(str, checkpoints), "--clips", str(clips or members["clips"]),
                       "--transcripts", str(members["csv"]), "--out", str(out), "--workers", "0",
                       "--device", "cpu"]) == 0
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def test_an_ensemble_row_holds_the_mean_of_its_members_probabilities(members, tmp_path, capsys):
    alone = [{row["clip"]: row for row in predict(members, tmp_path / f"{name}.jsonl", members[name])}
             for name in ("a", "b")]
    rows = predict(members, tmp_path / "both.jsonl", members["a"], members["b"])
    assert [row["clip"] for row in rows] == [row["clip"] for row in alone[0].values()]  # the first member's order
    assert sum(row["status"] == "ok" for row in rows) >= len(rows) - 1
    for row in rows:
        failed = [number for number, member in enumerate(alone, 1) if member[row["clip"]]["status"] != "ok"]
        if failed:  # the unlabelled clip has no transcript: the text-only member cannot predict it
            assert row["status"] == "error" and row["error"].startswith(f"checkpoint {failed[0]}: ")
            continue
        assert row["status"] == "ok" and set(row["modalities"]) == {"audio", "text", "video"}
        for task in ("emotion", "sentiment"):
            names = list(row[f"{task}_probs"])
            expected = np.mean([[member[row["clip"]][f"{task}_probs"][name] for name in names]
                                for member in alone], axis=0)
            np.testing.assert_allclose([row[f"{task}_probs"][name] for name in names], expected, atol=1e-6)
            assert row[task] == names[int(expected.argmax())]
    assert "metrics over the labelled ok clips" in capsys.readouterr().out  # scored like a single model


def test_members_with_other_labels_are_refused_before_any_clip(members, tmp_path, caplog):
    ckpt = torch.load(members["b"], weights_only=True)
    ckpt["labels"]["sentiment"] = list(reversed(ckpt["labels"]["sentiment"]))
    other = tmp_path / "other.pt"
    torch.save(ckpt, other)
    with caplog.at_level(logging.ERROR):
        status = infer.main(["--checkpoint", str(members["a"]), str(other), "--clips", str(members["clips"]),
                             "--out", str(tmp_path / "rows.jsonl"), "--workers", "0", "--device", "cpu"])
    assert status == 1 and f"--checkpoint {other}: its label vocabularies differ" in caplog.text
    assert "sentiment" in caplog.text and not (tmp_path / "rows.jsonl").exists()


def test_a_clip_one_member_cannot_use_is_an_error_row_naming_it(members, tmp_path):
    clips = tmp_path / "clips"
    shutil.copytree(members["clips"], clips)
    broken = sorted(clips.glob("*.mp4"))[0]
    broken.write_bytes(b"")  # the video member cannot decode it; the text member reads its transcript
    rows = {row["clip"]: row for row in predict(members, tmp_path / "rows.jsonl", members["b"], members["a"],
                                                clips=clips)}
    assert rows[str(broken)]["status"] == "error" and rows[str(broken)]["error"].startswith("checkpoint 2: empty")
    assert sum(row["status"] == "ok" for row in rows.values()) == len(rows) - 2  # and the clip without a transcript

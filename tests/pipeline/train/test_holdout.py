"""``data.holdout_dialogues``: a fixed share of the training dialogues, held out of training
and scored every epoch as a second validation split. The expected split is computed here
from the manifest with hashlib, independently of pipeline/data/holdout.py."""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from pipeline import train
from pipeline.config import ConfigError
from pipeline.data.cache import read_manifest
from pipeline.data.holdout import split_indices


def expected_out(dialogue_id, share: float) -> bool:
    digest = hashlib.sha256(f"dialogue:{dialogue_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < share * 2 ** 64


def test_whole_dialogues_are_held_out_the_same_way_in_any_order():
    records = [{"id": f"dia{d}_utt{u}", "dialogue_id": d} for d in range(1000) for u in range(3)]
    kept, gone = split_indices(records, 0.1)
    out = {records[i]["dialogue_id"] for i in gone}
    assert out == {d for d in range(1000) if expected_out(d, 0.1)}
    assert 70 <= len(out) <= 130  # about a tenth of the dialogues
    assert out.isdisjoint(records[i]["dialogue_id"] for i in kept)  # no dialogue on both sides
    shuffled = records[:]
    random.Random(0).shuffle(shuffled)
    _, gone_shuffled = split_indices(shuffled, 0.1)
    assert {shuffled[i]["id"] for i in gone_shuffled} == {records[i]["id"] for i in gone}


def test_a_run_scores_the_held_out_dialogues_every_epoch(tiny_meld_cache, tmp_path):
    common = ["train.epochs=2", "train.max_steps_per_epoch=2", "train.batch_size=4", "data.num_workers=0",
              "train.device=cpu", "data.test_split=", "model.modalities=[text]"]
    result = train.main([*tiny_meld_cache["overrides"], *common, "data.holdout_dialogues=0.6",
                         f"output_dir={tmp_path / 'run'}"])
    rows = [row for row in read_manifest(Path(tiny_meld_cache["cache_dir"]) / "train") if row["status"] == "ok"]
    held = sum(expected_out(row["dialogue_id"], 0.6) for row in rows)
    assert 0 < held < len(rows)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result))
    for epoch in metrics["epochs"]:
        assert sum(map(sum, epoch["holdout"]["emotion"]["confusion_matrix"])) == held
        assert sum(map(sum, epoch["val"]["emotion"]["confusion_matrix"])) != held or held == 0
    best = metrics["epochs"][metrics["best_epoch"] - 1]
    assert metrics["holdout"] == best["holdout"]
    assert metrics["best_holdout"] == best["holdout"]["emotion"]["weighted_f1"]


def test_a_share_that_leaves_nothing_to_train_on_is_refused(tiny_meld_cache, tmp_path):
    with pytest.raises(SystemExit):
        train.main([*tiny_meld_cache["overrides"], "data.holdout_dialogues=1.0", f"output_dir={tmp_path / 'a'}"])
    with pytest.raises(ConfigError, match="holdout_dialogues=1e-12 leaves"):
        from pipeline.config import load_config
        from pipeline.train.session import prepare
        import torch

        cfg = load_config(None, [*tiny_meld_cache["overrides"], "data.holdout_dialogues=1e-12",
                                 "model.modalities=[text]", "data.num_workers=0", f"output_dir={tmp_path / 'b'}"])
        prepare(cfg, torch.device("cpu"))

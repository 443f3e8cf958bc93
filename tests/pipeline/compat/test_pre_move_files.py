"""Files written by the code before the stage-folders move are read by the code after it.

``pre_move/`` was made by ``make_fixture.sh`` at the last commit of the flat ``pipeline/``
(b91b3a8): a feature cache (train and dev, audio and video), a ``best.pt`` trained on it, and
the predictions that code's ``pipeline.infer`` computed for the dev clips. The expected
probabilities below are that code's, not recomputed by the code under test.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import train
from pipeline.config import config_from_dict
from pipeline.data.cache import CacheSplit
from pipeline.data.dataset import MeldDataset, collate
from pipeline.infer.predict import Predictor
from pipeline.model import load_checkpoint

PRE_MOVE = Path(__file__).with_name("pre_move")
# The old predictions came from clips decoded at inference, these from the cache that the
# same features were stored in (float32): only the order of float sums may differ.
TOLERANCE = 1e-5


def expected_rows() -> dict[str, dict]:
    rows = [json.loads(line) for line in (PRE_MOVE / "predictions.jsonl").read_text().splitlines()]
    return {row["id"]: row for row in rows if row["status"] == "ok"}


@pytest.fixture
def old_cache(tmp_path) -> Path:
    """A copy of the old cache (training writes nothing into it, but a test never writes into the repo)."""
    return Path(shutil.copytree(PRE_MOVE / "cache", tmp_path / "cache"))


def test_old_checkpoint_and_cache_give_the_old_predictions(old_cache):
    ckpt = load_checkpoint(PRE_MOVE / "best.pt")
    cfg = config_from_dict(ckpt["config"])
    split = CacheSplit(old_cache / "dev")
    split.check_params(ckpt["preprocess"])  # the old cache's key is still the key of its parameters
    dataset = MeldDataset(split.split_dir, cfg.model.modalities)
    predictor = Predictor(ckpt, torch.device("cpu"))
    outputs = predictor.outputs(collate([dataset[i] for i in range(len(dataset))]))
    expected = expected_rows()
    ids = [record["id"] for record in dataset.records]
    assert len(ids) == 7 and set(ids) == set(expected) - {"dia1_utt4"}  # the unlabelled extra: predicted, not cached
    for task in ("emotion", "sentiment"):
        names = ckpt["labels"][task]
        wanted = np.array([[expected[id_][f"{task}_probs"][name] for name in names] for id_ in ids])
        np.testing.assert_allclose(outputs[f"{task}_probs"], wanted, atol=TOLERANCE)
    wanted = np.array([[expected[id_]["regression"]["polarity"]] for id_ in ids])
    np.testing.assert_allclose(outputs["regression"], wanted, atol=TOLERANCE)


def test_training_reads_the_old_cache_with_its_checkpoint_config(old_cache, tmp_path):
    """The config stored in the old best.pt, given back as overrides, trains on the old cache."""
    ckpt = load_checkpoint(PRE_MOVE / "best.pt")
    stored = ckpt["config"]
    overrides = [f"data.cache_dir={old_cache}", f"output_dir={tmp_path / 'run'}", "data.test_split=",
                 "train.device=cpu", "train.epochs=1", "train.batch_size=4",
                 f"preprocess={json.dumps(stored['preprocess'])}", f"model={json.dumps(stored['model'])}"]
    result = train.main(overrides)
    assert len(result["epochs"]) == 1 and (tmp_path / "run" / "best.pt").is_file()
    new = load_checkpoint(tmp_path / "run" / "best.pt")
    assert set(new) == set(ckpt) and new["preprocess"] == ckpt["preprocess"]
    assert {name: value.shape for name, value in new["model"].items()} == \
           {name: value.shape for name, value in ckpt["model"].items()}

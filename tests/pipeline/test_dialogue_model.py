"""A dialogue model (model.context) end to end: training reads whole dialogues and scores
every utterance once, and pipeline.infer groups clips into dialogues as the transcripts say,
giving each clip the prediction that evaluation through the cache gives it."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline import infer, train
from pipeline.data.cache import CacheSplit
from pipeline.data.dataset import MeldDataset, collate
from pipeline.data.dialogues import DialogueBatches
from pipeline.data.meld import CLIP_DIRS, CSV_NAMES, read_csv
from pipeline.labels import EMOTIONS
from pipeline.model import MultimodalModel

ATOL = 1e-5


@pytest.fixture(scope="module")
def dialogue_run(tiny_meld_cache, tmp_path_factory):
    """best.pt of a short run with a non-causal dialogue transformer over text + audio (not
    residual: its output is all context from the start, so context changes every prediction)."""
    out = tmp_path_factory.mktemp("dialogue_run")
    result = train.main([f"output_dir={out}", *tiny_meld_cache["overrides"], "model.modalities=[audio,text]",
                         "model.fusion.type=concat", "model.context.type=transformer", "model.context.causal=false",
                         "model.context.residual=false",
                         "train.epochs=1", "train.batch_size=8", "data.num_workers=0", "train.device=cpu"])
    yield {"out": out, "result": result, "checkpoint": out / "best.pt"}
    shutil.rmtree(out)


def evaluate_by_dialogue(checkpoint: Path, split_dir: Path, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Emotion probabilities per cached clip, each dialogue read whole (with ``batch_size`` 1:
    each utterance alone, as a dialogue of one)."""
    model = MultimodalModel.from_checkpoint(checkpoint)
    dataset = MeldDataset(split_dir, sorted(model.encoders))
    order = DialogueBatches(dataset.dialogues(), 16) if batch_size > 1 else [[i] for i in range(len(dataset))]
    loader = DataLoader(dataset, batch_sampler=order, collate_fn=collate)
    expected = {}
    with torch.inference_mode():
        for batch in loader:
            probs = model(batch)["emotion"].softmax(1).numpy()
            expected.update(zip(batch["ids"], probs))
    return expected


def test_training_scores_every_utterance_of_the_split_once(dialogue_run, tiny_meld_cache):
    dev = CacheSplit(Path(tiny_meld_cache["cache_dir"]) / "dev")
    val = dialogue_run["result"]["epochs"][0]["val"]["emotion"]
    assert val["count"] == len(dev.records)
    test = dialogue_run["result"]["test"]["emotion"]
    assert test["count"] == len(CacheSplit(Path(tiny_meld_cache["cache_dir"]) / "test").records)


def test_inference_groups_clips_into_dialogues_as_the_meld_csv_says(dialogue_run, tiny_meld_cache, tmp_path):
    meld = Path(tiny_meld_cache["meld_root"])
    clip_dir = meld / CLIP_DIRS["test"]
    out = tmp_path / "rows.jsonl"
    assert infer.main(["--checkpoint", str(dialogue_run["checkpoint"]), "--clips", str(clip_dir), "--transcripts",
                       str(meld / CSV_NAMES["test"]), "--out", str(out), "--batch-size", "5", "--workers", "0",
                       "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    csv_rows = {row.id: row for row in read_csv(meld / CSV_NAMES["test"])}
    # Rows come grouped by dialogue, in turn order; the clip no row names comes alone.
    placed = [(csv_rows[row["id"]].dialogue_id, csv_rows[row["id"]].utterance_id) if row["id"] in csv_rows
              else None for row in rows]
    dialogues = [place[0] for place in placed if place is not None]
    assert dialogues == sorted(dialogues, key=dialogues.index)  # each dialogue's clips together
    for dialogue in set(dialogues):
        turns = [place[1] for place in placed if place is not None and place[0] == dialogue]
        assert turns == sorted(turns)
    assert placed.count(None) == 1 and len(rows) == len(list(clip_dir.glob("*.mp4")))
    expected = evaluate_by_dialogue(dialogue_run["checkpoint"], Path(tiny_meld_cache["cache_dir"]) / "test")
    alone = evaluate_by_dialogue(dialogue_run["checkpoint"], Path(tiny_meld_cache["cache_dir"]) / "test", 1)
    assert set(expected) < {row["id"] for row in rows}
    assert min(np.abs(expected[id_] - alone[id_]).max() for id_ in expected) > 100 * ATOL  # context matters
    for row in rows:
        assert row["status"] == "ok"
        if row["id"] in expected:
            found = np.array([row["emotion_probs"][name] for name in EMOTIONS])
            np.testing.assert_allclose(found, expected[row["id"]], atol=ATOL)


def test_inference_reads_dialogue_and_turn_columns_of_a_plain_csv(dialogue_run, tiny_meld_cache, tmp_path):
    """Three clips placed in one dialogue in the reverse of their name order, and one alone."""
    clips = sorted((Path(tiny_meld_cache["meld_root"]) / CLIP_DIRS["dev"]).glob("*.mp4"))[:4]
    transcripts = tmp_path / "said.csv"
    with open(transcripts, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["clip", "text", "speaker", "dialogue", "turn"])
        for turn, clip in enumerate(reversed(clips[:3])):
            writer.writerow([clip.name, "i am so happy", "Ross" if turn % 2 else "Rachel", "scene-1", turn])
        writer.writerow([clips[3].name, "the train leaves at noon", "Joey", "", ""])
    listing = tmp_path / "clips.txt"
    listing.write_text("".join(f"{clip}\n" for clip in clips), encoding="utf-8")
    out = tmp_path / "rows.jsonl"
    assert infer.main(["--checkpoint", str(dialogue_run["checkpoint"]), "--clips", str(listing), "--transcripts",
                       str(transcripts), "--out", str(out), "--workers", "0", "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["id"] for row in rows] == [clips[2].stem, clips[1].stem, clips[0].stem, clips[3].stem]
    bad = tmp_path / "bad.csv"
    bad.write_text("clip,text,dialogue,turn\nx.mp4,hello,scene-1,first\n", encoding="utf-8")
    assert infer.main(["--checkpoint", str(dialogue_run["checkpoint"]), "--clips", str(listing), "--transcripts",
                       str(bad), "--out", str(tmp_path / "bad.jsonl"), "--workers", "0", "--device", "cpu"]) == 1

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.config import PreprocessConfig, VideoFeatures, to_dict
from pipeline.data import cache, cache_writer
from pipeline.data.dataset import MIN_AUDIO_FRAMES, MeldDataset, collate, make_item

PARAMS = to_dict(PreprocessConfig(video=VideoFeatures(num_frames=2, size=16)))


def sample(id_: str, modalities: list[str], tokens: int, frames_t: int, emotion: str | None, sentiment: str | None):
    row = {"id": id_, "split": "dev", "status": "ok", "reason": None, "modalities": modalities,
           "emotion": emotion, "sentiment": sentiment, "speaker": "Joey", "dialogue_id": 0,
           "utterance_id": 0, "text": "hi"}
    arrays = {}
    if "text" in modalities:
        arrays["input_ids"] = np.arange(1, tokens + 1, dtype=np.int32)
        arrays["attention_mask"] = np.ones(tokens, np.int8)
    if "audio" in modalities:
        arrays["log_mel"] = np.full((frames_t, 64), 2.0, np.float32)
    if "video" in modalities:
        arrays["frames"] = np.full((2, 16, 16, 3), 7, np.uint8)
    return row, arrays


@pytest.fixture()
def split_dir(tmp_path):
    samples = [sample("dia0_utt0", ["audio", "text", "video"], 5, 40, "fear", "negative"),
               sample("dia0_utt1", ["text", "video"], 9, 0, "joy", "positive"),  # clip without audio
               sample("dia0_utt2", ["audio", "text"], 3, 120, "neutral", "neutral"),  # without video
               sample("dia0_utt3", ["audio", "text", "video"], 4, 10, None, None)]  # labels unknown
    ids = [row["id"] for row, _ in samples] + ["dia0_utt4"]
    split_dir = cache_writer.prepare_split(tmp_path / "dev", "dev", PARAMS, ids)
    for row, arrays in samples:
        cache_writer.write_entry(split_dir, row, arrays)
    cache_writer.write_entry(split_dir, {**samples[0][0], "id": "dia0_utt4", "status": "skipped", "reason": "empty file",
                                  "modalities": []})
    cache_writer.merge_split(split_dir)
    return split_dir


def test_collate_builds_the_spec_batch(split_dir):
    dataset = MeldDataset(split_dir)
    assert len(dataset) == 4  # the skipped row is not a sample
    batch = collate([dataset[i] for i in range(4)])
    assert batch["ids"] == ["dia0_utt0", "dia0_utt1", "dia0_utt2", "dia0_utt3"]

    text = batch["text"]
    assert text["input_ids"].shape == (4, 9) and text["input_ids"].dtype == torch.long
    assert text["attention_mask"].dtype == torch.long
    assert text["attention_mask"].sum(1).tolist() == [5, 9, 3, 4]
    assert text["input_ids"][0].tolist() == [1, 2, 3, 4, 5, 0, 0, 0, 0]
    assert text["mask"].tolist() == [True, True, True, True]

    audio = batch["audio"]
    assert audio["log_mel"].shape == (4, 120, 64) and audio["log_mel"].dtype == torch.float32
    assert audio["lengths"].tolist() == [40, 0, 120, 10]
    assert audio["mask"].tolist() == [True, False, True, True]
    assert audio["log_mel"][0, :40].eq(2).all() and audio["log_mel"][0, 40:].eq(0).all()
    assert audio["log_mel"][1].eq(0).all()

    video = batch["video"]
    assert video["frames"].shape == (4, 2, 3, 16, 16) and video["frames"].dtype == torch.uint8
    assert video["mask"].tolist() == [True, True, False, True]
    assert video["frames"][2].eq(0).all() and video["frames"][0].eq(7).all()

    labels = batch["labels"]
    assert labels["emotion"].tolist() == [6, 1, 0, -100]
    assert labels["sentiment"].tolist() == [2, 1, 0, -100]
    assert labels["regression"].shape == (4, 1)
    assert labels["regression"][:3, 0].tolist() == [-1.0, 1.0, 0.0] and math.isnan(labels["regression"][3, 0])


def test_short_audio_is_padded_to_the_minimum_and_modalities_can_be_chosen(split_dir):
    dataset = MeldDataset(split_dir, modalities=["audio"])
    batch = collate([dataset[0], dataset[3]])
    assert set(batch) == {"ids", "labels", "dialogue", "audio"}
    assert batch["audio"]["log_mel"].shape == (2, MIN_AUDIO_FRAMES, 64)
    with pytest.raises(ValueError, match="not in the cache"):
        MeldDataset(split_dir, modalities=["text", "depth"])


def test_works_in_a_dataloader(split_dir):
    loader = DataLoader(MeldDataset(split_dir, ["text", "video"]), batch_size=3, collate_fn=collate)
    sizes = [len(batch["ids"]) for batch in loader]
    assert sizes == [3, 1]


def test_lengths_are_read_from_the_headers_of_the_costlier_modality(split_dir):
    # log-mel frames when audio is read (0 for the clip without audio), else tokens
    assert MeldDataset(split_dir).lengths().tolist() == [40, 0, 120, 10]
    assert MeldDataset(split_dir, ["text", "video"]).lengths().tolist() == [5, 9, 3, 4]
    assert MeldDataset(split_dir, ["video"]).lengths() is None  # fixed size: nothing to group
    shapes = MeldDataset(split_dir).cache.shapes("dia0_utt0")
    assert shapes == {"input_ids": (5,), "attention_mask": (5,), "log_mel": (40, 64), "frames": (2, 16, 16, 3)}


def test_shapes_of_a_damaged_entry_name_the_file(split_dir):
    (split_dir / "items" / "dia0_utt1.npz").write_bytes(b"not a zip")
    with pytest.raises(cache.DamagedEntryError, match="dia0_utt1.npz.*rerun preprocessing"):
        MeldDataset(split_dir).cache.shapes("dia0_utt1")


def test_a_waveform_cache_adds_the_waveform_beside_the_log_mel(tmp_path):
    from pipeline.config import AudioFeatures

    params = to_dict(PreprocessConfig(modalities=["audio"], audio=AudioFeatures(waveform=True)))
    rows = [sample("dia0_utt0", ["audio"], 0, 3, "joy", "positive"), sample("dia0_utt1", [], 0, 0, "joy", "positive"),
            sample("dia0_utt2", ["audio"], 0, 2, "joy", "positive")]
    rows[0][1]["waveform"] = np.array([32767, -32767, 16384, 0, 1], np.int16)
    rows[2][1]["waveform"] = np.array([-16384, 8], np.int16)
    rows[1][0]["status"], rows[1][0]["reason"] = "skipped", "empty file"
    split_dir = cache_writer.prepare_split(tmp_path / "dev", "dev", params, [row["id"] for row, _ in rows])
    for row, arrays in rows:
        cache_writer.write_entry(split_dir, row, arrays or None)
    cache_writer.merge_split(split_dir)
    dataset = MeldDataset(split_dir)
    audio = collate([dataset[0], dataset[1]])["audio"]
    assert audio["lengths"].tolist() == [3, 2]  # log-mel frames, as VGGish reads them
    assert audio["waveform_lengths"].tolist() == [5, 2]  # samples, as whisper / hf_audio read them
    assert audio["waveform"].dtype == torch.float32
    expected = torch.tensor([[32767, -32767, 16384, 0, 1], [-16384, 8, 0, 0, 0]]) / 32767
    torch.testing.assert_close(audio["waveform"], expected)
    assert audio["log_mel"].shape == (2, MIN_AUDIO_FRAMES, 64)
    # A sample without audio in a waveform cache gets an empty waveform, masked out.
    item = make_item("x", {}, [], ["audio"], params, {"emotion": 0, "sentiment": 0, "regression": torch.zeros(1)})
    first = dataset[0]
    del first["dialogue"]  # make_item's items (inference) have no dialogue position
    batch = collate([first, item])["audio"]
    assert batch["waveform_lengths"].tolist() == [5, 0] and batch["mask"].tolist() == [True, False]
    assert batch["waveform"][1].eq(0).all()

"""Samples of a cached split as tensors, and ``collate`` into the batch format of SPEC.

An item is cheap to read: one ``np.load`` of the sample's npz file. A modality the cache
has but a sample lacks (a clip without audio) is a zero placeholder with ``present`` False,
so that ``collate`` can build its mask without special cases.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.config import MODALITIES
from pipeline.data.cache import CacheSplit
from pipeline.data.dialogues import dialogue_of, positions
from pipeline.labels import EMOTIONS, POLARITY, REGRESSION, SENTIMENTS
from pipeline.media.features import WAVEFORM_SCALE

MIN_AUDIO_FRAMES = 96  # the padded log-mel length of a batch is at least 0.96 s (one VGGish patch)
IGNORE_INDEX = -100  # class label of a sample whose label is unknown


class MeldDataset(Dataset):
    """The ok samples of one cached split.

    ``modalities``: the subset of the cache's modalities to read (default: all of them).
    Item: ``{"id": str, "labels": {"emotion": int, "sentiment": int, "regression":
    Float[K]}, <modality>: {..., "present": bool}}`` with ``text`` {input_ids Long[L],
    attention_mask Long[L]}, ``audio`` {log_mel Float[T, n_mels], and waveform Float[S] in
    [-1, 1] when the cache stores it}, ``video`` {frames Uint8[N, 3, H, W]}.
    """

    def __init__(self, split_dir: str | Path, modalities: Sequence[str] | None = None) -> None:
        self.cache = CacheSplit(split_dir)
        cached = self.cache.preprocess["modalities"]
        self.modalities = sorted(modalities if modalities is not None else cached)
        unknown = sorted(set(self.modalities) - set(cached))
        if unknown:
            raise ValueError(f"modalities {unknown} are not in the cache {split_dir} "
                             f"(it holds {sorted(cached)})")
        self.records = self.cache.records
        # Every entry checked from its arrays' headers now (4.7 s for MELD's 9,989 training
        # utterances), so that a damaged one stops a run before it trains, naming its file.
        self.shapes = [self.cache.check_entry(record, self.modalities) for record in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        item = make_item(record["id"], self.cache.load(record["id"]), record["modalities"], self.modalities,
                         self.cache.preprocess, labels_of(record))
        item["dialogue"] = dialogue_of(record)
        return item

    def dialogues(self) -> list[dict[str, Any]]:
        """Each sample's ``dialogue`` entry (see pipeline.data.dialogues), from the manifest."""
        return [dialogue_of(record) for record in self.records]

    def lengths(self) -> np.ndarray | None:
        """Each sample's padded length, the dimension that ``collate`` pads and the encoders'
        cost grows with: log-mel frames when the dataset reads audio (the costlier encoder),
        else text tokens; 0 for a sample without that modality. None for video only (no
        padding). Read from the arrays' headers when the dataset was opened."""
        array = "log_mel" if "audio" in self.modalities else "input_ids" if "text" in self.modalities else None
        if array is None:
            return None
        return np.array([shapes.get(array, (0,))[0] for shapes in self.shapes])


def make_item(id_: str, arrays: Mapping[str, np.ndarray], present: Collection[str], modalities: Sequence[str],
              preprocess: Mapping[str, Any], labels: dict[str, Any]) -> dict[str, Any]:
    """The dataset item of one sample from its feature arrays (as the cache stores them and
    ``features.extract_features`` returns them); shared by MeldDataset and inference, so
    both feed the model identical tensors.

    ``present``: the sample's modalities; ``modalities``: those to put in the item (a
    wanted modality the sample lacks becomes a zero placeholder with ``present`` False);
    ``preprocess``: the cache's parameters (placeholder shapes); ``labels``: see labels_of.
    """
    item: dict[str, Any] = {"id": id_, "labels": labels}
    if "text" in modalities:
        if "text" in present:
            item["text"] = {"input_ids": torch.from_numpy(arrays["input_ids"].astype(np.int64)),
                            "attention_mask": torch.from_numpy(arrays["attention_mask"].astype(np.int64)),
                            "present": True}
            if "target_mask" in arrays:  # absent in caches made before target masks
                item["text"]["target_mask"] = torch.from_numpy(arrays["target_mask"].astype(np.int64))
        else:
            item["text"] = {"input_ids": torch.zeros(0, dtype=torch.long),
                            "attention_mask": torch.zeros(0, dtype=torch.long), "present": False}
    if "audio" in modalities:
        log_mel = (torch.from_numpy(arrays["log_mel"]).float() if "audio" in present
                   else torch.zeros(0, preprocess["audio"]["n_mels"]))
        item["audio"] = {"log_mel": log_mel, "present": "audio" in present}
        if preprocess["audio"].get("waveform"):  # absent in caches made before the option
            item["audio"]["waveform"] = (torch.from_numpy(arrays["waveform"]).float() / WAVEFORM_SCALE
                                         if "audio" in present else torch.zeros(0))
    if "video" in modalities:
        video = preprocess["video"]
        frames = (torch.from_numpy(arrays["frames"]).permute(0, 3, 1, 2) if "video" in present
                  else torch.zeros(video["num_frames"], 3, video["size"], video["size"], dtype=torch.uint8))
        item["video"] = {"frames": frames, "present": "video" in present}
    return item


def labels_of(record: dict[str, Any]) -> dict[str, Any]:
    """Class indices (IGNORE_INDEX when unknown) and the regression targets (nan when unknown):
    the record's ``polarity`` (the CSV's optional Polarity column) when it has one, else the
    sentiment's -1 / 0 / 1."""
    emotion, sentiment = record.get("emotion"), record.get("sentiment")
    polarity = record.get("polarity")
    targets = {"polarity": float(polarity) if isinstance(polarity, (int, float)) and not isinstance(polarity, bool)
               else POLARITY.get(sentiment, float("nan"))}
    return {"emotion": EMOTIONS.index(emotion) if emotion in EMOTIONS else IGNORE_INDEX,
            "sentiment": SENTIMENTS.index(sentiment) if sentiment in SENTIMENTS else IGNORE_INDEX,
            "regression": torch.tensor([targets[name] for name in REGRESSION], dtype=torch.float32)}


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack items into the SPEC batch: token ids and log-mels padded with zeros to the
    longest in the batch (log-mel to at least MIN_AUDIO_FRAMES), masks True where present.

    text  {input_ids Long[B,L], attention_mask Long[B,L], mask Bool[B]} and target_mask
          Long[B,L] when every present sample has one
    audio {log_mel Float[B,T,n_mels], lengths Long[B] (frames), mask Bool[B]; and where the
           cache stores it waveform Float[B,S] (16 kHz), waveform_lengths Long[B] (samples)}
    video {frames Uint8[B,N,3,H,W], mask Bool[B]}
    labels {emotion Long[B], sentiment Long[B], regression Float[B,K]; with a teacher's
           probabilities also teacher_emotion Float[B,7], teacher_sentiment Float[B,3]}
    dialogue {index Long[B], turn Long[B], speaker Long[B]}  (when the items carry ``dialogue``)
    <modality> {embedding Float[B,D], mask Bool[B]}  (items of pipeline.data.embeddings.EmbeddedDataset)
    """
    batch: dict[str, Any] = {
        "ids": [item["id"] for item in items],
        "labels": {
            "emotion": torch.tensor([item["labels"]["emotion"] for item in items], dtype=torch.long),
            "sentiment": torch.tensor([item["labels"]["sentiment"] for item in items], dtype=torch.long),
            "regression": torch.stack([item["labels"]["regression"] for item in items]),
        },
    }
    for key in ("teacher_emotion", "teacher_sentiment"):  # a distilled run's soft targets
        if key in items[0]["labels"]:
            batch["labels"][key] = torch.stack([item["labels"][key] for item in items])
    if "dialogue" in items[0]:
        batch["dialogue"] = positions([item["dialogue"] for item in items])
    embedded = {m for m in MODALITIES if m in items[0] and "embedding" in items[0][m]}  # vectors of pipeline.embed
    for modality in sorted(embedded):
        entries = [item[modality] for item in items]
        batch[modality] = {"embedding": torch.stack([entry["embedding"] for entry in entries]),
                           "mask": torch.tensor([entry["present"] for entry in entries], dtype=torch.bool)}
    if "text" in items[0] and "text" not in embedded:
        texts = [item["text"] for item in items]
        length = max(1, max(len(text["input_ids"]) for text in texts))
        batch["text"] = {"input_ids": pad_stack([t["input_ids"] for t in texts], length),
                         "attention_mask": pad_stack([t["attention_mask"] for t in texts], length),
                         "mask": torch.tensor([t["present"] for t in texts], dtype=torch.bool)}
        if all("target_mask" in t or not t["present"] for t in texts) and any("target_mask" in t for t in texts):
            batch["text"]["target_mask"] = pad_stack([t.get("target_mask", t["attention_mask"]) for t in texts], length)
    if "audio" in items[0] and "audio" not in embedded:
        audios = [item["audio"] for item in items]
        lengths = torch.tensor([len(audio["log_mel"]) for audio in audios], dtype=torch.long)
        length = max(MIN_AUDIO_FRAMES, int(lengths.max()))
        batch["audio"] = {"log_mel": pad_stack([audio["log_mel"] for audio in audios], length),
                          "lengths": lengths,
                          "mask": torch.tensor([audio["present"] for audio in audios], dtype=torch.bool)}
        if "waveform" in audios[0]:
            samples = torch.tensor([len(audio["waveform"]) for audio in audios], dtype=torch.long)
            batch["audio"]["waveform"] = pad_stack([audio["waveform"] for audio in audios], max(1, int(samples.max())))
            batch["audio"]["waveform_lengths"] = samples
    if "video" in items[0] and "video" not in embedded:
        videos = [item["video"] for item in items]
        batch["video"] = {"frames": torch.stack([video["frames"] for video in videos]),
                          "mask": torch.tensor([video["present"] for video in videos], dtype=torch.bool)}
    return batch


def pad_stack(tensors: Sequence[torch.Tensor], length: int) -> torch.Tensor:
    """Stack tensors [L_i, ...] into [B, length, ...], zero-padded at the end of dim 0."""
    out = tensors[0].new_zeros((len(tensors), length, *tensors[0].shape[1:]))
    for i, tensor in enumerate(tensors):
        out[i, : len(tensor)] = tensor
    return out

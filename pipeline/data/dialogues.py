"""Dialogues: which utterances belong together, in which order, and batches of whole dialogues.

A dialogue model (``model.context``) reads the fused vectors of one dialogue's utterances in
turn order, so its batches hold whole dialogues. Each item carries ``dialogue`` =
``{"key": str, "turn": int, "speaker": str | None}``; ``positions`` turns a batch's list of
them into the index tensors the model scatters utterances with. An utterance without a
dialogue (a clip no transcript places) is a dialogue of one, keyed by its own id.
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch.utils.data import Sampler


def dialogue_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """The ``dialogue`` entry of a cache manifest record (MELD's Dialogue_ID/Utterance_ID)."""
    if record.get("dialogue_id") is None or record.get("utterance_id") is None:
        return {"key": f"clip:{record['id']}", "turn": 0, "speaker": record.get("speaker")}
    return {"key": f"dialogue:{record['dialogue_id']}", "turn": int(record["utterance_id"]),
            "speaker": record.get("speaker")}


def positions(dialogues: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Where each utterance of a batch sits: ``index`` Long[N] (its dialogue, numbered in order
    of first appearance), ``turn`` Long[N] (its rank by turn inside that dialogue, in this
    batch) and ``speaker`` Long[N] (the speaker numbered by first appearance in turn order
    inside the dialogue; an unknown speaker gets a number of its own)."""
    index: dict[str, int] = {}
    members: dict[str, list[int]] = {}
    for row, entry in enumerate(dialogues):
        index.setdefault(entry["key"], len(index))
        members.setdefault(entry["key"], []).append(row)
    turn = [0] * len(dialogues)
    speaker = [0] * len(dialogues)
    for rows in members.values():
        speakers: dict[Any, int] = {}
        for rank, row in enumerate(sorted(rows, key=lambda r: dialogues[r]["turn"])):
            turn[row] = rank
            name = dialogues[row]["speaker"]
            speaker[row] = speakers.setdefault(name if name is not None else ("unknown", row), len(speakers))
    return {"index": torch.tensor([index[entry["key"]] for entry in dialogues], dtype=torch.long),
            "turn": torch.tensor(turn, dtype=torch.long), "speaker": torch.tensor(speaker, dtype=torch.long)}


def group_dialogues(dialogues: Sequence[Mapping[str, Any]]) -> list[list[int]]:
    """Indices of each dialogue, in turn order; dialogues in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for index, entry in enumerate(dialogues):
        groups.setdefault(entry["key"], []).append(index)
    return [sorted(rows, key=lambda i: dialogues[i]["turn"]) for rows in groups.values()]


def pack(groups: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Consecutive whole groups per batch, at most ``batch_size`` indices each (a longer group
    is a batch of its own)."""
    batches: list[list[int]] = []
    current: list[int] = []
    for group in groups:
        if current and len(current) + len(group) > batch_size:
            batches.append(current)
            current = []
        current = current + list(group)
    if current:
        batches.append(current)
    return batches


class DialogueBatches(Sampler[list[int]]):
    """Batches of whole dialogues, at most ``batch_size`` utterances each (``train.batch_size``,
    so memory stays that of utterance batches), every utterance once per epoch.

    With ``shuffle`` the dialogue order is drawn from ``(seed, epoch)``. Under DDP the batches
    are dealt round-robin to the ranks; in training (``shuffle``) a rank short of batches
    repeats its first ones, so every rank takes the same number of steps (as
    DistributedSampler pads); evaluation drops nothing and pads nothing (it gathers by id).
    """

    def __init__(self, dialogues: Sequence[Mapping[str, Any]], batch_size: int, num_replicas: int = 1,
                 rank: int = 0, shuffle: bool = False, seed: int = 0) -> None:
        self.groups = group_dialogues(dialogues)
        self.batch_size, self.num_replicas, self.rank = batch_size, num_replicas, rank
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all_batches(self) -> list[list[int]]:
        groups = self.groups
        if self.shuffle:
            order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(self.seed + self.epoch))
            groups = [groups[i] for i in order.tolist()]
        return pack(groups, self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._all_batches()
        mine = batches[self.rank::self.num_replicas]
        if self.shuffle:
            wanted = math.ceil(len(batches) / self.num_replicas)
            mine = (mine + batches[:wanted])[:wanted] if mine else batches[:wanted]
        return iter(mine)

    def __len__(self) -> int:
        total = len(self._all_batches())
        if self.shuffle:
            return math.ceil(total / self.num_replicas)
        return len(range(self.rank, total, self.num_replicas))

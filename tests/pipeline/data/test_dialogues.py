"""Dialogue positions and batches of whole dialogues (pipeline.data.dialogues)."""
from __future__ import annotations

import pytest

from pipeline.data.dialogues import DialogueBatches, dialogue_of, pack, positions


def entry(key: str, turn: int, speaker: str | None) -> dict:
    return {"key": key, "turn": turn, "speaker": speaker}


def test_positions_number_dialogues_turns_and_speakers_by_hand():
    # Dialogue a arrives out of order (turns 2, 0, 1); b has one unknown speaker.
    batch = [entry("a", 2, "Ross"), entry("a", 0, "Rachel"), entry("b", 0, None), entry("a", 1, "Ross"),
             entry("b", 1, "Joey")]
    found = positions(batch)
    assert found["index"].tolist() == [0, 0, 1, 0, 1]
    assert found["turn"].tolist() == [2, 0, 0, 1, 1]
    # a in turn order: Rachel (0), Ross (1), Ross; b: unknown (0), Joey (1)
    assert found["speaker"].tolist() == [1, 0, 0, 1, 1]


def test_dialogue_of_a_record_and_of_a_clip_without_one():
    assert dialogue_of({"id": "dia3_utt2", "dialogue_id": 3, "utterance_id": 2, "speaker": "Monica"}) == \
        entry("dialogue:3", 2, "Monica")
    assert dialogue_of({"id": "extra", "dialogue_id": None, "utterance_id": None, "speaker": None}) == \
        entry("clip:extra", 0, None)


def test_pack_keeps_dialogues_whole_under_the_batch_size():
    assert pack([[0, 1], [2, 3, 4], [5], [6, 7, 8, 9, 10], [11]], 4) == [[0, 1], [2, 3, 4, 5], [6, 7, 8, 9, 10],
                                                                        [11]]


def meld_like(lengths: list[int]) -> list[dict]:
    """Entries of dialogues with these lengths, each dialogue's turns listed in reverse."""
    entries = []
    for number, length in enumerate(lengths):
        entries += [entry(f"d{number}", turn, f"s{turn % 2}") for turn in reversed(range(length))]
    return entries


@pytest.mark.parametrize("world", [1, 2, 3])
def test_evaluation_batches_cover_every_utterance_once_over_the_ranks(world):
    entries = meld_like([3, 5, 1, 4, 6, 2, 2])
    seen = []
    for rank in range(world):
        batches = list(DialogueBatches(entries, 6, world, rank, shuffle=False))
        assert len(batches) == len(DialogueBatches(entries, 6, world, rank, shuffle=False))
        for batch in batches:
            keys = [entries[i]["key"] for i in batch]
            for key in set(keys):  # whole dialogues, in turn order
                turns = [entries[i]["turn"] for i in batch if entries[i]["key"] == key]
                assert turns == list(range(sum(e["key"] == key for e in entries)))
            seen += batch
    assert sorted(seen) == list(range(len(entries)))


def test_training_batches_follow_seed_and_epoch_and_ranks_take_equal_steps():
    entries = meld_like([3, 5, 1, 4, 6, 2, 2, 3, 3])
    order = DialogueBatches(entries, 6, shuffle=True, seed=1)
    first = list(order)
    order.set_epoch(1)
    assert list(order) != first
    order.set_epoch(0)
    assert list(order) == first
    assert sorted(i for batch in first for i in batch) == list(range(len(entries)))
    shares = [DialogueBatches(entries, 6, 2, rank, shuffle=True, seed=1) for rank in range(2)]
    assert len(list(shares[0])) == len(list(shares[1])) == len(shares[0])
    covered = {i for share in shares for batch in share for i in batch}
    assert covered == set(range(len(entries)))

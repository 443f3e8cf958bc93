"""The text of one utterance as token ids, shared by preprocessing and inference.

``text_arrays(utterance, text_cfg, tokenizer)`` returns what the cache stores of it:

    input_ids       int32[L]   the target "Speaker: utterance", with dialogue turns around it
    attention_mask  int8[L]
    target_mask     int8[L]    1 on the target's own tokens (``pooling: target`` averages them)

Two layouts, ``preprocess.text.target_marking``:

    segment  [CLS] target [SEP] before [SEP] after [SEP]     the target is the first segment;
             the context, the second, holds the earlier turns (oldest first) and the later
             ones (nearest first), split by a separator where the target stood. Without
             following turns, the earlier ones come newest first, each after a separator
             (the layout of caches made before ``context_after`` existed).
    markers  [CLS] before [SEP] target [SEP] after [SEP]      the dialogue in its order, the
             target between two separator tokens (tokens every model has already learnt).

Turns inside ``before`` and ``after`` are "Speaker: text" joined by spaces. Truncation
never cuts the target (unless it is longer than ``max_length`` by itself: then it is cut
and the context dropped): turns are taken nearest first, alternating earlier and later
ones, whole while they fit, and the first that does not fit is cut to the room left (an
earlier turn keeps its end, a later one its start).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from pipeline.config import TextFeatures

# MELD's older CSVs hold cp1252 bytes decoded as Latin-1: U+0092 where "’" was meant.
# These code points (C1 controls) never occur in real text, so each is mapped to the
# cp1252 character of the same byte; everything else is left alone.
CP1252_UNASSIGNED = (0x81, 0x8D, 0x8F, 0x90, 0x9D)
CP1252_REPAIR = {code: bytes([code]).decode("cp1252")
                 for code in range(0x80, 0xA0) if code not in CP1252_UNASSIGNED}


@dataclass(frozen=True)
class Utterance:
    """The text of one sample: what was said, by whom, between which turns."""

    text: str
    speaker: str = ""
    context: tuple[tuple[str, str], ...] = ()  # (speaker, text) of earlier turns, oldest first
    following: tuple[tuple[str, str], ...] = ()  # (speaker, text) of later turns, nearest first


def normalize_text(text: str) -> str:
    """Repair MELD's cp1252 mojibake (``\\x92`` -> ``’``, ``\\x85`` -> ``…``) and collapse
    whitespace (including no-break spaces and newlines) to single spaces."""
    return " ".join(text.translate(CP1252_REPAIR).split())


def speaker_turn(speaker: str, text: str) -> str:
    """ "Speaker: text" (just the text when the speaker is unknown), normalised."""
    speaker, text = normalize_text(speaker), normalize_text(text)
    return f"{speaker}: {text}".rstrip() if speaker else text


def build_text(utterance: str, speaker: str, context: Sequence[tuple[str, str]],
               text_cfg: TextFeatures) -> tuple[str, list[str]]:
    """The target text and the earlier turns to tokenise.

    Returns ("Speaker: utterance" (or just the utterance when ``text_cfg.speaker`` is off),
    the last ``context_turns`` turns of ``context`` as "Speaker: text", newest first, so
    that truncating the context from its end drops the oldest turns).
    """
    target = speaker_turn(speaker if text_cfg.speaker else "", utterance)
    recent = list(context)[-text_cfg.context_turns:] if text_cfg.context_turns else []
    return target, [speaker_turn(who, said) for who, said in reversed(recent)]


def tokenize(target: str, context: Sequence[str], tokenizer: Any,
             max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids int32[L] and attention mask int8[L], L <= ``max_length``, of the target
    with earlier turns only (the ``segment`` layout without following turns).

    The context turns, joined by the tokenizer's separator, are the second segment and
    are truncated first (``only_second``), so the target utterance is never cut unless it
    is longer than ``max_length`` by itself (then the context is dropped).
    """
    second = None
    if context:
        separator = tokenizer.sep_token or tokenizer.eos_token or "|"
        target_tokens = len(tokenizer(target, add_special_tokens=False)["input_ids"])
        if target_tokens + tokenizer.num_special_tokens_to_add(pair=True) < max_length:
            second = f" {separator} ".join(context)
    encoded = tokenizer(target, second, truncation="only_second" if second else True,
                        max_length=max_length)
    return (np.asarray(encoded["input_ids"], dtype=np.int32),
            np.asarray(encoded["attention_mask"], dtype=np.int8))


def pick_turns(before: Sequence[list[int]], after: Sequence[list[int]],
               room: int) -> tuple[list[list[int]], list[list[int]]]:
    """The token ids of the turns that fit in ``room`` tokens, nearest first, alternating an
    earlier and a later turn; each turn costs its tokens plus one (a joining space is free
    in ids, but the separator between the two sides or the next turn's start needs room).

    ``before`` is oldest first, ``after`` nearest first; returns them in the same orders.
    The first turn that does not fit whole is cut to the room left (an earlier turn keeps
    its last tokens, a later one its first) and ends the selection."""
    kept_before: list[list[int]] = []
    kept_after: list[list[int]] = []
    order = []
    for distance in range(max(len(before), len(after))):
        if distance < len(before):
            order.append(("before", before[-1 - distance]))
        if distance < len(after):
            order.append(("after", after[distance]))
    for side, ids in order:
        if room <= 0:
            break
        part = ids if len(ids) <= room else (ids[len(ids) - room:] if side == "before" else ids[:room])
        (kept_before if side == "before" else kept_after).append(part)
        room -= len(part)
        if len(part) < len(ids):
            break
    return kept_before[::-1], kept_after


def tokenize_dialogue(target: str, before: Sequence[str], after: Sequence[str], tokenizer: Any,
                      max_length: int, marking: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids int32[L], attention_mask int8[L], target_mask int8[L]) of the target with
    earlier turns ``before`` (oldest first) and later turns ``after`` (nearest first) in
    the ``marking`` layout of the module docstring, L <= ``max_length``."""
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id

    def ids_of(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    target_ids = ids_of(target)
    specials = tokenizer.num_special_tokens_to_add(pair=marking == "segment")
    inner = 2 if marking == "markers" else 1  # separators between the parts, besides the specials
    room = max_length - specials - inner - len(target_ids)
    if room < 0:  # the target alone fills the sequence: cut it, no context
        target_ids, room = target_ids[:max_length - specials - inner], 0
    # Each turn is "Speaker: text"; turns on one side are joined by a space, which the
    # tokenizer does not turn into a token, so a side costs the sum of its turns' tokens.
    kept_before, kept_after = pick_turns([ids_of(turn) for turn in before], [ids_of(turn) for turn in after], room)
    before_ids = [token for turn in kept_before for token in turn]
    after_ids = [token for turn in kept_after for token in turn]
    if marking == "segment":
        prefix, middle, suffix = special_tokens(tokenizer, pair=True)
        ids = prefix + target_ids + middle + before_ids + [sep] + after_ids + suffix
        start = len(prefix)
    else:
        prefix, _, suffix = special_tokens(tokenizer, pair=False)
        ids = prefix + before_ids + [sep] + target_ids + [sep] + after_ids + suffix
        start = len(prefix) + len(before_ids) + 1
    target_mask = np.zeros(len(ids), dtype=np.int8)
    target_mask[start:start + len(target_ids)] = 1
    return (np.asarray(ids, dtype=np.int32), np.ones(len(ids), dtype=np.int8), target_mask)


@functools.lru_cache(maxsize=8)  # per tokenizer and layout, not per utterance
def special_tokens(tokenizer: Any, pair: bool) -> tuple[list[int], list[int], list[int]]:
    """The special token ids the tokenizer puts before the first segment, between the two
    (pair only) and after the last: ``[CLS]``, ``[SEP]``, ``[SEP]`` for BERT, ``<s>``,
    ``</s></s>``, ``</s>`` for RoBERTa and MPNet. Read off the encoding of two one-token
    words, as transformers 5 tokenizers no longer build inputs from ids."""
    first, second = (tokenizer("a", add_special_tokens=False)["input_ids"],
                     tokenizer("b", add_special_tokens=False)["input_ids"])
    ids = tokenizer("a", "b" if pair else None)["input_ids"]
    at_first = ids.index(first[0])
    if not pair:
        return ids[:at_first], [], ids[at_first + len(first):]
    at_second = ids.index(second[0], at_first + len(first))
    return ids[:at_first], ids[at_first + len(first):at_second], ids[at_second + len(second):]


def text_arrays(utterance: Utterance, text_cfg: TextFeatures, tokenizer: Any) -> dict[str, np.ndarray]:
    """The arrays of the module docstring for one utterance."""
    target = speaker_turn(utterance.speaker if text_cfg.speaker else "", utterance.text)
    if text_cfg.context_after == 0 and text_cfg.target_marking == "segment":
        _, context = build_text(utterance.text, utterance.speaker, utterance.context, text_cfg)
        ids, mask = tokenize(target, context, tokenizer, text_cfg.max_length)
        target_tokens = len(tokenizer(target, add_special_tokens=False)["input_ids"])
        start = len(special_tokens(tokenizer, pair=False)[0])
        # the target fits whole beside the context, or is cut to the room of one sequence
        room = text_cfg.max_length - tokenizer.num_special_tokens_to_add(pair=False)
        target_mask = np.zeros(len(ids), dtype=np.int8)
        target_mask[start:start + min(target_tokens, room)] = 1
        return {"input_ids": ids, "attention_mask": mask, "target_mask": target_mask}
    earlier = list(utterance.context)[-text_cfg.context_turns:] if text_cfg.context_turns else []
    later = list(utterance.following)[:text_cfg.context_after]
    ids, mask, target_mask = tokenize_dialogue(
        target, [speaker_turn(who, said) for who, said in earlier],
        [speaker_turn(who, said) for who, said in later], tokenizer, text_cfg.max_length,
        text_cfg.target_marking)
    return {"input_ids": ids, "attention_mask": mask, "target_mask": target_mask}

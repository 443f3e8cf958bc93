"""Synonym replacement, a text augmentation of training batches beside token masking.

In ``sample_share`` of a batch's samples, ``word_share`` of the target utterance's words (at
least one) become a WordNet synonym in the same part of speech (pipeline.train.augment.wordnet):
"so happy at noon" -> "so glad at noon". Then the sample is tokenised again with the code that
made the cache (``pipeline.media.text.text_arrays``, the training config's
``preprocess.text``), so the speaker's name, the target markers or segments and the dialogue
turns around the target are those of the cache: only the target's words change. Truncation
follows the cache's rule (the context is shortened, never the target), so a longer target can
leave less room for the context.

A word is a run of letters not joined to an apostrophe or hyphen (the parts of "must've" and
"KL-5" are never replaced); a stop word (scikit-learn's English list) is never replaced; a
synonym takes the word's capitalisation (first letter, or all capitals). Inflection is not
carried over: "running" may become "scat" (its synonyms are those of its base form).

The utterances come from the training split's manifest (text, speaker, dialogue and turn
ids), and their dialogue turns are put together as preprocessing did from the CSV
(pipeline.data.meld). The choices are drawn from torch's random state, which ``train.seed``
sets, so a run is repeatable.
"""
from __future__ import annotations

import dataclasses
import random
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from pipeline.config import ConfigError, TextFeatures
from pipeline.data import meld
from pipeline.data.dataset import pad_stack
from pipeline.media.text import Utterance, text_arrays
from pipeline.train.augment.wordnet import WordNet

WORD = re.compile(r"(?<![\w'’-])[A-Za-z]+(?![\w'’-])")
ARRAYS = ("input_ids", "attention_mask", "target_mask")


def manifest_utterances(rows: Iterable[Mapping[str, Any]], text_cfg: TextFeatures) -> dict[str, Utterance]:
    """The :class:`Utterance` of every manifest row that has text, with the dialogue turns
    ``text_cfg`` asks for, put together as preprocessing did from the CSV rows."""
    rows = [meld.MeldRow(row["id"], row["dialogue_id"], row["utterance_id"], row.get("speaker") or "", row["text"],
                         row.get("emotion") or "", row.get("sentiment") or "", 0)
            for row in rows if row.get("text") is not None and row.get("dialogue_id") is not None]
    context = meld.dialogue_context(rows, text_cfg.context_turns)
    following = meld.dialogue_following(rows, text_cfg.context_after)
    return {row.id: Utterance(row.utterance, row.speaker, context[row.id], following[row.id]) for row in rows}


def matched_case(synonym: str, word: str) -> str:
    """``synonym`` with ``word``'s capitalisation: all capitals, a capital first letter, or as is."""
    if len(word) > 1 and word.isupper():
        return synonym.upper()
    if word[0].isupper():
        return synonym[0].upper() + synonym[1:]
    return synonym


class SynonymReplacer:
    """Replace words of the target utterance with synonyms in ``sample_share`` of the samples.

    ``rows``: the training split's manifest rows; ``tokenizer``: the cache's tokenizer.
    ``replaced``: the samples and words changed since the last :meth:`take_counts`.
    """

    def __init__(self, wordnet: WordNet, tokenizer: Any, text_cfg: TextFeatures, rows: Iterable[Mapping[str, Any]],
                 word_share: float, sample_share: float) -> None:
        self.wordnet, self.tokenizer, self.text_cfg = wordnet, tokenizer, text_cfg
        self.word_share, self.sample_share = word_share, sample_share
        self.utterances = manifest_utterances(rows, text_cfg)
        self.replaced = {"samples": 0, "words": 0}

    def check_cache(self, cached: Mapping[str, np.ndarray], id_: str) -> None:
        """ConfigError when sample ``id_``, tokenised again unchanged, differs from its
        ``cached`` arrays (the cache was not made with this config's ``preprocess.text``)."""
        if id_ not in self.utterances:
            raise ConfigError(f"train.synonym_replace_samples: the manifest has no text for {id_}; rebuild the "
                              "cache with pipeline.preprocess")
        again = text_arrays(self.utterances[id_], self.text_cfg, self.tokenizer)
        if not np.array_equal(again["input_ids"], cached["input_ids"]):
            raise ConfigError(f"train.synonym_replace_samples: {id_} tokenised again with this config's "
                              "preprocess.text differs from its cache entry; train with the preprocess settings "
                              "the cache was made with")

    def replace_words(self, text: str, rng: random.Random) -> tuple[str, int]:
        """``text`` with ``word_share`` of its words (at least one) replaced where WordNet has
        synonyms for them; and how many were replaced."""
        words = list(WORD.finditer(text))
        candidates = [match for match in words
                      if match.group().lower() not in ENGLISH_STOP_WORDS and self.wordnet.synonyms(match.group())]
        if not candidates:
            return text, 0
        count = min(len(candidates), max(1, round(self.word_share * len(words))))
        pieces, end = [], 0
        for match in sorted(rng.sample(candidates, count), key=lambda match: match.start()):
            pieces += [text[end:match.start()], matched_case(rng.choice(self.wordnet.synonyms(match.group())),
                                                             match.group())]
            end = match.end()
        return "".join(pieces) + text[end:], count

    def __call__(self, text: Mapping[str, torch.Tensor], ids: Sequence[str]) -> dict[str, torch.Tensor]:
        """A collated text batch (pipeline.data.dataset.collate) and its sample ids -> the
        batch with the chosen samples tokenised again from their changed words."""
        chosen = (torch.rand(len(ids)) < self.sample_share) & text["mask"]
        if not bool(chosen.any()):
            return dict(text)
        rng = random.Random(int(torch.randint(0, 2 ** 62, ()).item()))
        remade: dict[int, dict[str, np.ndarray]] = {}
        for index in chosen.nonzero().flatten().tolist():
            utterance = self.utterances.get(ids[index])
            if utterance is None:
                continue
            changed, count = self.replace_words(utterance.text, rng)
            if count:
                remade[index] = text_arrays(dataclasses.replace(utterance, text=changed), self.text_cfg,
                                            self.tokenizer)
                self.replaced["samples"] += 1
                self.replaced["words"] += count
        return repadded(text, remade) if remade else dict(text)

    def take_counts(self) -> dict[str, int]:
        counts, self.replaced = self.replaced, {"samples": 0, "words": 0}
        return counts


def repadded(text: Mapping[str, torch.Tensor], remade: Mapping[int, Mapping[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """``text`` with the rows ``remade`` (index -> arrays) put in, padded with zeros to the
    longest row (the cache's attention masks are ones over a sample's tokens)."""
    lengths = text["attention_mask"].sum(dim=1).tolist()
    keys = [key for key in ARRAYS if key in text]
    rows = {key: [torch.from_numpy(remade[i][key].astype(np.int64)) if i in remade else text[key][i, :lengths[i]]
                  for i in range(len(lengths))] for key in keys}
    width = max(len(row) for row in rows["input_ids"])
    return {**text, **{key: pad_stack(rows[key], width) for key in keys}}

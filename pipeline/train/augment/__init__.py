"""The text augmentations of training batches, in this order: synonym replacement (words of
the target utterance become WordNet synonyms, ``train.synonym_replace_*``; synonyms.py), then
token masking (``train.token_mask_*``; masking.py). Neither applies to vectors
(``data.embeddings_dir``): they have no words or tokens left to change."""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import torch

from pipeline.config import Config, ConfigError
from pipeline.data.cache import CacheSplit
from pipeline.train.augment.masking import TokenMasker
from pipeline.train.augment.synonyms import SynonymReplacer

__all__ = ["TextAugmentation", "TokenMasker", "SynonymReplacer", "build_augmentation"]

log = logging.getLogger(__name__)


class TextAugmentation:
    """Synonyms, then masking (either may be None), on a collated text batch."""

    def __init__(self, synonyms: SynonymReplacer | None, masker: TokenMasker | None) -> None:
        self.synonyms, self.masker = synonyms, masker

    def __call__(self, text: Mapping[str, torch.Tensor], ids: Sequence[str]) -> dict[str, torch.Tensor]:
        out = dict(text)
        if self.synonyms is not None:
            out = self.synonyms(out, ids)
        if self.masker is not None:
            out = self.masker(out)
        return out

    def take_counts(self) -> dict[str, int] | None:
        """The samples and words synonym replacement changed since the last call (None: off)."""
        return self.synonyms.take_counts() if self.synonyms is not None else None


def build_augmentation(cfg: Config, train: CacheSplit) -> TextAugmentation | None:
    """The augmentations ``cfg.train`` asks for on the training split ``train`` (None: none)."""
    tcfg = cfg.train
    on_tokens = "text" in cfg.model.modalities and not cfg.data.embeddings_dir
    if tcfg.synonym_replace_samples > 0 and not on_tokens:
        raise ConfigError("train.synonym_replace_samples: this run has no words to replace ("
                          + ("it trains on vectors, data.embeddings_dir" if cfg.data.embeddings_dir
                             else "text is not in model.modalities") + "); set it to 0")
    masking = on_tokens and tcfg.token_mask_samples > 0 and tcfg.token_mask_prob > 0
    if not masking and tcfg.synonym_replace_samples == 0:
        return None
    from encoders.text import load_tokenizer
    from pipeline.train.augment.wordnet import load_wordnet

    tokenizer = load_tokenizer(cfg.preprocess.text.model)
    synonyms = None
    if tcfg.synonym_replace_samples > 0:
        synonyms = SynonymReplacer(load_wordnet(tcfg.wordnet_dir), tokenizer, cfg.preprocess.text, train.rows,
                                   tcfg.synonym_replace_prob, tcfg.synonym_replace_samples)
        first = next((row["id"] for row in train.records if "text" in row["modalities"]), None)
        if first is not None:
            synonyms.check_cache(train.load(first), first)
        log.info("synonym replacement: in %.0f%% of the training samples, %.0f%% of the target's words "
                 "(WordNet from %s)", 100 * tcfg.synonym_replace_samples, 100 * tcfg.synonym_replace_prob,
                 tcfg.wordnet_dir)
    masker = TokenMasker(tokenizer, tcfg.token_mask_prob, tcfg.token_mask_samples) if masking else None
    return TextAugmentation(synonyms, masker)

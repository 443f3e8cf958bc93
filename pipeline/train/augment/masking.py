"""Token masking, a text augmentation of training batches: some real tokens become the
tokenizer's mask token."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from pipeline.config import ConfigError


class TokenMasker:
    """Text augmentation: in ``sample_share`` of the samples, replace ``token_share`` of the
    real (non-special, non-padding) tokens with the tokenizer's mask token."""

    def __init__(self, tokenizer: Any, token_share: float, sample_share: float) -> None:
        if tokenizer.mask_token_id is None:
            raise ConfigError(f"train.token_mask_samples: the tokenizer {type(tokenizer).__name__} has no "
                              "mask token; set train.token_mask_samples=0")
        self.mask_id = tokenizer.mask_token_id
        self.special_ids = torch.tensor(sorted(tokenizer.all_special_ids))
        self.token_share, self.sample_share = token_share, sample_share

    def __call__(self, text: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"input_ids": Long[B,L], "attention_mask": [B,L], ...}`` -> the same with masked ids."""
        input_ids = text["input_ids"]
        batch, length = input_ids.shape
        chosen = torch.rand(batch) < self.sample_share
        candidates = (text["attention_mask"].bool() & ~torch.isin(input_ids, self.special_ids)
                      & chosen[:, None])
        masked = candidates & (torch.rand(batch, length) < self.token_share)
        return {**text, "input_ids": input_ids.masked_fill(masked, self.mask_id)}

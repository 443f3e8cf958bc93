"""Modality dropout: hide whole modalities of some samples in training, so the model learns
to predict from any subset (a clip without audio or video still gets a prediction)."""
from __future__ import annotations

import torch


def drop_modalities(masks: dict[str, torch.Tensor], p: float) -> dict[str, torch.Tensor]:
    """Drop each present modality of each sample with probability ``p``, keeping at least one.

    ``masks``: modality -> Bool[B] (True = present). Returns new masks of the same shapes. A
    sample whose every present modality was drawn for dropping keeps one of them, chosen
    uniformly; a sample with no modality present stays as it is.
    """
    if p <= 0 or not masks:
        return masks
    names = list(masks)
    present = torch.stack([masks[m] for m in names], dim=1)  # [B,M]
    draws = torch.rand(present.shape, device=present.device)
    kept = present & (draws >= p)
    emptied = present.any(1) & ~kept.any(1)
    # Reuse the draws to pick the survivor: uniform among the sample's present modalities.
    survivor = torch.where(present, draws, -1.0).argmax(1)
    rescue = torch.zeros_like(kept).scatter_(1, survivor.unsqueeze(1), True) & emptied.unsqueeze(1)
    kept = kept | rescue
    return {m: kept[:, i] for i, m in enumerate(names)}

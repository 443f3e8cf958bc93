"""Every ``train.*`` key and every field of the model's component sections reaches what it
governs. A key whose value never arrives (a field read from the wrong section, a default used
instead of the setting) passes every test that only runs the default; here each key is set to
another value and what it governs must change, through the entry points a user calls
(``python -m pipeline.train``'s ``main``, and the model a config builds).

A key missing from these tables fails the first test of each kind: a new key gets its row."""
from __future__ import annotations

import dataclasses
from functools import lru_cache
from pathlib import Path

import pytest
import torch

import encoders
import fusion
from pipeline import train
from pipeline.config import TrainConfig, config_from_dict, to_dict
from pipeline.model import build_model
from tests.pipeline.test_model import make_batch, tiny_config

REPO = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------- train.*: the weights after 2 steps
# key -> (the setting under test, what the reference run shares with it)
TRAIN_EFFECTS: dict[str, tuple[list[str], list[str]]] = {
    "batch_size": (["train.batch_size=3"], []),
    "max_steps_per_epoch": (["train.max_steps_per_epoch=3"], []),
    "lr": (["train.lr=0.05"], []),
    "encoder_lr": (["train.encoder_lr=0.01"], []),
    "layer_lr_decay": (["train.layer_lr_decay=0.3"], ["train.encoder_lr=0.01"]),
    "weight_decay": (["train.weight_decay=0.9"], ["train.lr=0.05"]),
    "warmup_ratio": (["train.warmup_ratio=0.6"], []),
    "grad_clip": (["train.grad_clip=1e-6"], []),
    "accumulate": (["train.accumulate=2"], []),
    "class_weighting": (["train.class_weighting=none"], []),
    "effective_number_beta": (["train.effective_number_beta=0.5"], ["train.class_weighting=effective_number"]),
    "loss": (["train.loss=focal"], []),
    "focal_gamma": (["train.focal_gamma=5.0"], ["train.loss=focal"]),
    "label_smoothing": (["train.label_smoothing=0.5"], []),
    "regression_loss": (["train.regression_loss=mse"], []),
    "huber_delta": (["train.huber_delta=0.01"], []),
    "density_alpha": (["train.density_alpha=2.0"], []),
    "task_weights": (["train.task_weights={emotion: 1.0, sentiment: 0.0, regression: 0.0}"], []),
    "token_mask_samples": (["train.token_mask_samples=1.0"], ["train.token_mask_prob=0.9"]),
    "token_mask_prob": (["train.token_mask_prob=0.9"], ["train.token_mask_samples=1.0"]),
    "ema_decay": (["train.ema_decay=0.5"], []),  # best.pt holds the moving average
    "seed": (["train.seed=4"], []),
}
# Keys whose effect is not on two steps' weights, with the test that shows it.
TRAIN_COVERED_ELSEWHERE = {
    "loss_probe_epochs": "tests/pipeline/train/test_loss_probe.py::"
                         "test_the_probe_keeps_the_loss_with_the_lower_validation_rmse",
    "epochs": "tests/pipeline/train/test_train.py::test_early_stopping_and_validation_without_test_split",
    "early_stopping_patience": "tests/pipeline/train/test_train.py::"
                               "test_early_stopping_and_validation_without_test_split",
    "unfreeze_after_epochs": "tests/pipeline/train/test_train.py::"
                             "test_progressive_unfreezing_trains_the_frozen_layers_from_the_set_epoch",
    "gradient_checkpointing": "tests/pipeline/test_model.py::test_gradient_checkpointing_reaches_the_text_encoder",
    "amp": "tests/pipeline/train/test_train.py::test_amp_selection",
    "resume": "tests/pipeline/train/test_train.py::test_resume_after_kill_matches_uninterrupted_run",
    "overwrite": "tests/reliability/test_planted_links.py::test_training_never_trains_over_another_runs_results",
    "device": "tests/pipeline/train/test_train.py::test_fp16_on_the_cpu_is_one_line_before_any_cache_or_model",
    "dist_timeout_minutes": "tests/reliability/test_rank_failure.py",
    "log_every": "tests/pipeline/train/test_loops.py",
    "synonym_replace_samples": "tests/pipeline/train/test_synonyms.py::test_the_share_of_words_and_samples_and_the_seed",
    "synonym_replace_prob": "tests/pipeline/train/test_synonyms.py::test_the_share_of_words_and_samples_and_the_seed",
    "wordnet_dir": "tests/pipeline/train/test_synonyms.py::test_training_replaces_words_and_says_how_many",
    "distill_from": "tests/pipeline/train/test_distill.py::"
                    "test_a_student_learns_from_the_teachers_averaged_probabilities_computed_once",
    "distill_temperature": "tests/pipeline/train/test_distill.py::"
                           "test_the_loss_mixes_the_labels_loss_with_t_squared_times_the_kl_to_the_teacher",
    "distill_alpha": "tests/pipeline/train/test_distill.py::"
                     "test_the_loss_mixes_the_labels_loss_with_t_squared_times_the_kl_to_the_teacher",
}
STEPS = ["train.epochs=1", "train.max_steps_per_epoch=2", "train.early_stopping_patience=0", "data.test_split="]


def test_every_train_key_has_a_row():
    keys = {field.name for field in dataclasses.fields(TrainConfig)}
    assert keys == set(TRAIN_EFFECTS) | set(TRAIN_COVERED_ELSEWHERE)
    for where in TRAIN_COVERED_ELSEWHERE.values():
        path, _, name = where.partition("::")
        assert (REPO / path).is_file() and (not name or f"def {name}(" in (REPO / path).read_text()), where


@pytest.fixture(scope="module")
def trained_weights(trained_run, tmp_path_factory):
    """The best.pt weights of a 2-step run with ``overrides`` (cached: reference runs repeat)."""
    @lru_cache(maxsize=None)
    def run(*overrides: str) -> dict[str, torch.Tensor]:
        out = tmp_path_factory.mktemp("keys") / "run"
        train.main([*trained_run["overrides"], *STEPS, *overrides, f"output_dir={out}"])
        return torch.load(out / "best.pt", weights_only=True)["model"]
    return run


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(TRAIN_EFFECTS))
def test_each_train_key_changes_what_training_makes(trained_weights, key):
    setting, shared = TRAIN_EFFECTS[key]
    reference, changed = trained_weights(*shared), trained_weights(*shared, *setting)
    assert reference.keys() == changed.keys()
    assert any(not torch.equal(reference[name], changed[name]) for name in reference), \
        f"train.{key}: {setting} trained the same weights as the reference run"


# ---------------------------------------------------------------- model.*: what the config builds
# (section, type) -> field -> another value; the base is tests/pipeline/test_model.py's tiny model.
MODEL_VARIANTS: dict[tuple[str, str], dict[str, object]] = {
    ("encoders.text", "hf_text"): {"model": "DISTILBERT", "pooling": "cls", "freeze_layers": 1, "dropout": 0.5,
                                   "pretrained": False},
    ("encoders.audio", "vggish"): {"channels": [4, 8, 8, 8, 16, 32], "fc_dims": [32], "n_mels": 64,
                                   "patch_frames": 64, "hop_frames": 16},
    ("encoders.video", "resnet"): {"arch": "resnet34", "temporal_pooling": "attention"},
    ("fusion", "attention"): {"dim": 32, "heads": 4, "layers": 2, "ff_mult": 2, "dropout": 0.5, "tokens": "pooled",
                              "max_tokens_per_modality": 2, "modality_dropout": 0.9},
    ("fusion", "concat"): {"proj_dim": 16, "normalize": False, "dropout": 0.5, "modality_dropout": 0.9},
    ("head", "classification"): {"hidden": 16, "dropout": 0.6},
    ("head", "regression"): {"dropout": 0.6},
    ("head", "gated"): {"hidden": 16, "dropout": 0.6},
    ("head", "moe"): {"num_experts": 2, "hidden": 16, "dropout": 0.6, "balance_coef": 0.5},
    ("context", "gru"): {"causal": True, "layers": 1, "width": 32, "dropout": 0.5, "max_speakers": 3,
                         "residual": False},
    ("context", "transformer"): {"causal": True, "layers": 1, "width": 32, "dropout": 0.5, "max_speakers": 3,
                                 "residual": False, "heads": 2},
}
# Fields that change nothing a tiny model shows, with the test that shows what they do.
MODEL_COVERED_ELSEWHERE = {
    ("encoders.audio", "vggish", "weights"): "tests/encoders/test_encoders.py",
    ("encoders.video", "resnet", "weights"): "tests/encoders/test_video_encoder.py",
    ("encoders.video", "resnet", "frame_chunk"): "tests/encoders/test_video_encoder.py",  # same output, less memory
}
# Encoders of the waveform: their fields are exercised by their own tests.
WAVEFORM_ENCODERS = {"whisper": "tests/encoders/test_whisper.py", "hf_audio": "tests/encoders/test_hf_audio.py"}


def test_every_component_field_has_a_row():
    registries = {"encoders": encoders.ENCODERS, "fusion": fusion.FUSIONS, "head": fusion.HEADS,
                  "context": fusion.CONTEXTS}
    for kind, registry in registries.items():
        for name, cls in registry.items():
            if name in WAVEFORM_ENCODERS or name == "none":
                continue
            rows = {field: None for (section, type_), fields in MODEL_VARIANTS.items()
                    if section.split(".")[0] == kind and type_ == name for field in fields}
            rows.update({field: None for (section, type_, field) in MODEL_COVERED_ELSEWHERE
                         if section.split(".")[0] == kind and type_ == name})
            assert set(rows) == {field.name for field in dataclasses.fields(cls.Config)}, (kind, name)
    for path in {*MODEL_COVERED_ELSEWHERE.values(), *WAVEFORM_ENCODERS.values()}:
        assert (REPO / path).is_file(), path


def model_variant(text_model: str, section: str, type_: str, changes: dict) -> dict:
    """The tiny model's config as a dict, with component ``section`` of type ``type_`` holding ``changes``."""
    # concat fusion reads the encoders' pooled vectors (attention fusion reads their sequences)
    fusion_type = type_ if section == "fusion" else "concat" if section.startswith("encoders") else "attention"
    head_type = type_ if section == "head" else "classification"
    raw = to_dict(tiny_config(text_model, fusion_type, head_type))
    if section == "context":
        raw["model"]["context"] = {"type": type_, "width": 16, "layers": 2, "max_speakers": 4}
    if "n_mels" in changes:  # the encoder reads the cache's mel bands
        raw["preprocess"]["audio"]["n_mels"] = changes["n_mels"]
    node = raw["model"]
    for part in section.split("."):
        node = node[part]
    node.update(changes)
    return raw


def fingerprint(raw: dict) -> tuple:
    """What a config builds: parameter shapes, the trainable parameters, and (in training mode,
    seeded) its outputs on a fixed batch that holds two dialogues, its weights moved a little
    from where they start."""
    torch.manual_seed(0)
    model = build_model(config_from_dict(raw)).train()
    with torch.no_grad():  # past the start: a residual branch that starts at zero would hide its settings
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    trainable = sorted(name for name, parameter in model.named_parameters() if parameter.requires_grad)
    batch = make_batch()
    batch["dialogue"] = {"index": torch.tensor([0, 0, 1]), "turn": torch.tensor([0, 1, 0]),
                         "speaker": torch.tensor([0, 1, 0])}
    if raw["model"]["encoders"]["audio"].get("n_mels", 32) == 64:
        batch["audio"]["log_mel"] = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(1)
    with torch.no_grad():
        outputs = {name: value for name, value in model(batch).items() if torch.is_tensor(value)}
    return shapes, trainable, outputs


def same(left: tuple, right: tuple) -> bool:
    return (left[0] == right[0] and left[1] == right[1] and left[2].keys() == right[2].keys()
            and all(torch.equal(left[2][name], right[2][name]) for name in left[2]))


@pytest.mark.parametrize("section, type_, field", [(section, type_, field) for (section, type_), fields
                                                    in MODEL_VARIANTS.items() for field in fields])
def test_each_component_field_changes_what_the_config_builds(tiny_text_model, tiny_distilbert_model,
                                                             section, type_, field):
    torch.set_num_threads(1)
    value = MODEL_VARIANTS[(section, type_)][field]
    value = tiny_distilbert_model if value == "DISTILBERT" else value
    reference = fingerprint(model_variant(tiny_text_model, section, type_, {}))
    changed = fingerprint(model_variant(tiny_text_model, section, type_, {field: value}))
    assert not same(reference, changed), f"model.{section}.{field}={value!r} builds the same model as the default"

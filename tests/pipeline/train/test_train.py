"""Training: its parts (samplers, masking, schedule, param groups, random state), end-to-end runs
on the tiny generated cache (every output file, every config, early stopping), DDP under
torchrun matching one process, and resume after a SIGKILL matching an uninterrupted run."""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline import preprocess
from pipeline.config import ConfigError, config_from_dict, load_config, to_dict
from pipeline.data.cache import CacheSplit, params_key
from pipeline.data.dataset import MeldDataset, collate
from pipeline.execution import amp_dtype
from pipeline.media.faces import MTCNN, detector
from pipeline.model import MultimodalModel, build_model, load_checkpoint
from pipeline.train.checkpoint import rng_state, set_rng_state
from pipeline.train.cli import main
from pipeline.train.augment import TokenMasker
from pipeline.train.loops import evaluate
from pipeline.train.losses import build_loss
from pipeline.train.optim import param_groups, warmup_cosine
from pipeline.train.session import prepare, split_labels
from tests.conftest import TINY_MODEL
from tests.pipeline.run_helpers import HARNESS, run, without_timings

REPO = Path(__file__).resolve().parents[3]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
# Every config runs offline once its models are swapped for tiny ones, except meld_bert_base,
# whose test checks that it names the downloads it needs.
OFFLINE_CONFIGS = [path for path in CONFIGS if path.stem != "meld_bert_base"]
FUSION_HEAD = [f"{fusion}_{head}" for fusion in ("concat", "attention")
               for head in ("classification", "regression", "gated", "moe")]
# Small and quick: one step per epoch at most where the test does not need more.
QUICK = ["data.num_workers=0", "train.batch_size=4", "model.encoders.text.freeze_layers=0"]


def metrics_of(out_dir: Path) -> dict:
    return json.loads((out_dir / "metrics.json").read_text())


# --------------------------------------------------------------------------- parts
def test_token_masker_masks_only_real_tokens_of_chosen_samples():
    class Tokenizer:
        mask_token_id = 4
        all_special_ids = [0, 2, 3, 4]

    input_ids = torch.tensor([[2, 10, 11, 12, 3, 0], [2, 13, 14, 3, 0, 0]])
    attention_mask = (input_ids != 0).long()
    text = {"input_ids": input_ids, "attention_mask": attention_mask, "mask": torch.ones(2, dtype=torch.bool)}
    everything = TokenMasker(Tokenizer(), token_share=1.0, sample_share=1.0)(text)
    assert everything["input_ids"].tolist() == [[2, 4, 4, 4, 3, 0], [2, 4, 4, 3, 0, 0]]
    assert torch.equal(everything["attention_mask"], attention_mask)
    assert torch.equal(TokenMasker(Tokenizer(), 1.0, 0.0)(text)["input_ids"], input_ids)
    torch.manual_seed(0)
    ids = torch.randint(5, 100, (400, 50))
    some = TokenMasker(Tokenizer(), 0.15, 0.5)({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    changed = some["input_ids"] == 4
    assert 0.4 < changed.any(dim=1).float().mean() < 0.6  # samples touched
    assert 0.06 < changed.float().mean() < 0.09  # 15% of the tokens of half of the samples


def test_token_masker_needs_a_mask_token():
    class Tokenizer:
        mask_token_id = None
        all_special_ids = [0]

    with pytest.raises(ConfigError, match="token_mask_samples"):
        TokenMasker(Tokenizer(), 0.15, 0.1)


def test_warmup_then_cosine():
    factor = warmup_cosine(warmup_steps=4, total_steps=14)
    assert [factor(s) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert factor(4) == pytest.approx(1.0)
    assert factor(9) == pytest.approx(0.5)
    assert factor(13) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))
    assert all(factor(s) >= factor(s + 1) for s in range(4, 20))


def test_amp_selection():
    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) is None and amp_dtype("off", cpu) is None
    assert amp_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(ConfigError, match="fp16 needs a CUDA"):
        amp_dtype("fp16", cpu)


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    torch.save({"rng": [rng_state()]}, tmp_path / "state.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    set_rng_state(torch.load(tmp_path / "state.pt", weights_only=True)["rng"][0])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_param_groups_lr_and_no_decay(tiny_meld_cache):
    cfg = load_config(None, [*tiny_meld_cache["overrides"], "train.lr=0.01", "train.encoder_lr=0.0001"])
    model = build_model(cfg)
    groups = param_groups(model, cfg.train)
    text = {id(p) for p in model.encoders["text"].parameters()}
    assert model.encoders["text"].pretrained and not model.encoders["video"].pretrained
    for group in groups:
        in_text = {id(p) in text for p in group["params"]}
        assert len(in_text) == 1  # a group is either all text encoder or none of it
        assert group["lr"] == (0.0001 if in_text == {True} else 0.01)
        assert all((p.ndim > 1) == (group["weight_decay"] > 0) for p in group["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize("name", FUSION_HEAD)
def test_every_trainable_parameter_gets_a_gradient(tiny_meld_cache, name):
    """DDP is built without find_unused_parameters: every trainable parameter of every
    fusion x head must take part in the loss of every step."""
    cfg = load_config(REPO / "configs" / f"{name}.yaml", [*tiny_meld_cache["overrides"], *QUICK])
    torch.manual_seed(0)
    run = prepare(cfg, torch.device("cpu"))
    batch = collate([run.datasets["train"][i] for i in range(3)])
    loss, _ = run.loss_fn(run.model.train()(batch), batch["labels"])
    loss.backward()
    missing = [n for n, p in run.model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def test_split_labels_from_the_manifest(tiny_meld_cache):
    dataset = MeldDataset(Path(tiny_meld_cache["cache_dir"]) / "train")
    emotion, sentiment, regression = split_labels(dataset)
    assert emotion.shape == sentiment.shape == (14,) and regression.shape == (14, 1)
    assert np.bincount(emotion).tolist() == [2] * 7  # 2 generated clips per emotion
    item = dataset[5]["labels"]
    assert (emotion[5], sentiment[5], regression[5, 0]) == (item["emotion"], item["sentiment"],
                                                             item["regression"][0].item())


def uneven_train_cache(cache_dir: str, folder: Path, drop: dict[str, int]) -> Path:
    """The tiny cache with ``drop[emotion]`` training clips of each named emotion left out, so
    that the training split's class counts differ from those of dev and test (2 per emotion)."""
    shutil.copytree(cache_dir, folder)
    manifest = folder / "train" / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    left = dict(drop)
    for row in rows:
        if row["status"] == "ok" and left.get(row["emotion"], 0) > 0:
            left[row["emotion"]] -= 1
            row.update(status="skipped", reason="left out by the test")
    assert not any(left.values())
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def manifest_counts(split_dir: Path, task: str, names) -> np.ndarray:
    rows = [json.loads(line) for line in (split_dir / "manifest.jsonl").read_text().splitlines()]
    return np.array([sum(row["status"] == "ok" and row[task] == name for row in rows) for name in names])


def test_class_weights_come_from_the_training_split(tiny_meld_cache, tmp_path):
    from pipeline.labels import EMOTIONS, SENTIMENTS

    cache = uneven_train_cache(tiny_meld_cache["cache_dir"], tmp_path / "cache", {"neutral": 1, "joy": 1, "fear": 1})
    counts = np.array([1, 1, 2, 2, 2, 2, 1])  # neutral joy surprise anger sadness disgust fear
    assert manifest_counts(cache / "train", "emotion", EMOTIONS).tolist() == counts.tolist()
    for split in ("dev", "test"):  # so weights from any other split are told apart
        assert manifest_counts(cache / split, "emotion", EMOTIONS).tolist() == [2] * 7
    cfg = load_config(None, [*tiny_meld_cache["overrides"], *QUICK, f"data.cache_dir={cache}",
                             "model.modalities=[text]", "train.class_weighting=sqrt_inverse"])
    run = prepare(cfg, torch.device("cpu"))
    # sqrt_inverse by hand: w_c proportional to 1 / sqrt(n_c), scaled so that sum(w_c n_c) = n
    # (11 samples): 11 / (3 + 4 * sqrt(2)) = 1.2707 for the classes of one clip, 0.8985 for two.
    assert run.loss_fn.emotion_weight.numpy() == pytest.approx([1.2707, 1.2707, 0.8985, 0.8985, 0.8985, 0.8985,
                                                                1.2707], abs=1e-4)
    sentiment = manifest_counts(cache / "train", "sentiment", SENTIMENTS)
    raw = 1 / np.sqrt(sentiment)
    assert run.loss_fn.sentiment_weight.numpy() == pytest.approx(raw * sentiment.sum() / (raw * sentiment).sum(),
                                                                 rel=1e-5)


def test_balanced_sampler_with_class_weights_warns_of_the_double_correction(tiny_meld_cache, caplog):
    import logging

    base = [*tiny_meld_cache["overrides"], *QUICK, "model.modalities=[text]", "data.balanced_sampler=true"]
    with caplog.at_level(logging.WARNING, logger="pipeline.train"):
        prepare(load_config(None, base), torch.device("cpu"))  # the default weighting, sqrt_inverse
        assert "correcting the imbalance twice" in caplog.text and "class_weighting=sqrt_inverse" in caplog.text
        caplog.clear()
        prepare(load_config(None, [*base, "train.class_weighting=none"]), torch.device("cpu"))
        prepare(load_config(None, [*base, "data.balanced_sampler=false"]), torch.device("cpu"))
    assert "twice" not in caplog.text


def test_fp16_on_the_cpu_is_one_line_before_any_cache_or_model(tiny_meld_cache, tmp_path, capsys, monkeypatch):
    import pipeline.train.session as training

    def not_yet(*args, **kwargs):
        raise AssertionError("caches or model built before the settings were checked")

    monkeypatch.setattr(training, "open_split", not_yet)
    monkeypatch.setattr(training, "build_model", not_yet)
    with pytest.raises(SystemExit) as exit_info:
        main([*tiny_meld_cache["overrides"], *QUICK, f"output_dir={tmp_path / 'run'}", "train.amp=fp16",
              "train.device=cpu"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "train.amp: fp16 needs a CUDA device" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- end to end, in process
@pytest.mark.slow
def test_single_process_writes_every_output(tiny_meld_cache, tmp_path, capsys):
    out = tmp_path / "run"
    overrides = [*tiny_meld_cache["overrides"], *QUICK, f"output_dir={out}", "train.epochs=2",
                 "train.token_mask_samples=0.5", "train.accumulate=2", "train.device=auto"]
    result = main(overrides)
    for name in ("config.yaml", "last.pt", "best.pt", "metrics.json", "report.txt", "classification_report.json",
                 "confusion_matrix.png", "confusion_matrix_sentiment.png", "curves.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert list(out.glob("events.out.tfevents.*"))
    assert not list(out.glob("*.tmp"))

    metrics = metrics_of(out)
    assert metrics == json.loads(json.dumps(result))
    assert [row["epoch"] for row in metrics["epochs"]] == [1, 2]
    assert all(math.isfinite(row["train_loss"]) for row in metrics["epochs"])
    val = metrics["epochs"][0]["val"]
    assert val["emotion"]["count"] == 14 and len(val["emotion"]["confusion_matrix"]) == 7
    assert {"rmse", "mae", "pearson"} <= set(val["polarity"])
    assert metrics["test"]["emotion"]["count"] == 14
    best_epoch = metrics["best_epoch"]
    assert metrics["best_val"] == metrics["epochs"][best_epoch - 1]["val"]["emotion"]["weighted_f1"]
    report = json.loads((out / "classification_report.json").read_text())
    assert report["split"] == "test" and set(report["emotion"]["per_class"]) >= {"neutral", "fear"}
    assert "disgust" in (out / "report.txt").read_text()

    last = load_checkpoint(out / "last.pt")  # weights_only=True inside
    assert last["epoch"] == 2 and last["sampler_epoch"] == 2 and last["scaler"] is None
    assert len(last["rng"]) == 1 and len(last["metrics"]) == 2
    assert last["preprocess"] == json.loads((Path(tiny_meld_cache["cache_dir"]) / "train" / "meta.json")
                                            .read_text())["preprocess"]
    assert last["labels"]["emotion"][0] == "neutral"
    cfg = config_from_dict(last["config"])
    assert cfg.train.epochs == 2 and cfg.output_dir == str(out)
    assert load_config(out / "config.yaml").train.accumulate == 2
    best = load_checkpoint(out / "best.pt")
    assert best["epoch"] == best_epoch
    model = MultimodalModel.from_checkpoint(out / "best.pt")
    assert not model.training

    with pytest.raises(SystemExit) as exit_info:
        main(overrides)
    assert exit_info.value.code == 1
    assert "train.resume=true" in capsys.readouterr().err


@pytest.mark.slow
def test_early_stopping_and_validation_without_test_split(tiny_meld_cache, tmp_path):
    # A learning rate too small to change any prediction, and a text-only model (no
    # BatchNorm, whose running statistics would move whatever the learning rate): the
    # validation F1 never improves after epoch 1, so patience 1 stops the run after epoch 2 of 4.
    out = tmp_path / "run"
    still = [*tiny_meld_cache["overrides"], *QUICK, "model.modalities=[text]", f"output_dir={out}",
             "train.epochs=4", "train.max_steps_per_epoch=1", "train.early_stopping_patience=1",
             "train.lr=1.0e-12", "train.encoder_lr=1.0e-12", "data.test_split="]
    result = main(still)
    assert [row["epoch"] for row in result["epochs"]] == [1, 2]
    assert result["best_epoch"] == 1 and result["test"] is None
    assert json.loads((out / "classification_report.json").read_text())["split"] == "dev"
    # Resuming a run that stopped early trains no further.
    again = main([*still, "train.resume=true"])
    assert len(again["epochs"]) == 2


def dev_metrics_of_best(out: Path) -> dict:
    """The dev metrics of ``out``/best.pt, evaluated afresh in this process."""
    cfg = load_config(out / "config.yaml")
    model = MultimodalModel.from_checkpoint(out / "best.pt")
    train_set, dev = (MeldDataset(Path(cfg.data.cache_dir) / split, cfg.model.modalities) for split in ("train", "dev"))
    loss_fn = build_loss(cfg.train, *split_labels(train_set))
    metrics, _ = evaluate(model, DataLoader(dev, batch_size=4, collate_fn=collate), loss_fn, torch.device("cpu"))
    return metrics


@pytest.mark.slow
def test_ema_scores_and_saves_the_average_without_changing_training(tiny_meld_cache, tmp_path):
    """train.ema_decay: validation, best.pt and so inference use the moving average, while the
    weights training goes on from are exactly those of the same run without it."""
    common = [*tiny_meld_cache["overrides"], *QUICK, "train.epochs=2", "train.max_steps_per_epoch=3",
              "data.test_split="]
    plain = main([*common, f"output_dir={tmp_path / 'plain'}"])
    averaged = main([*common, f"output_dir={tmp_path / 'ema'}", "train.ema_decay=0.5"])
    assert [row["train_loss"] for row in averaged["epochs"]] == [row["train_loss"] for row in plain["epochs"]]
    last_plain, last_ema = (load_checkpoint(tmp_path / name / "last.pt") for name in ("plain", "ema"))
    assert "training_model" not in last_plain and last_ema["average_updates"] == 6
    for name, value in last_plain["model"].items():
        assert torch.equal(last_ema["training_model"][name], value), name
    assert any(not torch.equal(last_ema["model"][name], value)
               for name, value in last_plain["model"].items() if value.is_floating_point())
    val = averaged["epochs"][averaged["best_epoch"] - 1]["val"]
    metrics = dev_metrics_of_best(tmp_path / "ema")
    assert val["emotion"]["confusion_matrix"] == metrics["emotion"]["confusion_matrix"]
    assert val["loss"] == pytest.approx(metrics["loss"], rel=1e-5)


@pytest.mark.slow
def test_progressive_unfreezing_trains_the_frozen_layers_from_the_set_epoch(tiny_meld_cache, tmp_path):
    """freeze_layers=1, unfreeze_after_epochs=1: the embeddings and the bottom layer keep their
    pretrained weights through epoch 1, and train in epoch 2."""
    common = [*tiny_meld_cache["overrides"], *QUICK, "model.modalities=[text]", "model.encoders.text.freeze_layers=1",
              "train.unfreeze_after_epochs=1", "train.max_steps_per_epoch=1", "train.token_mask_samples=0",
              "data.test_split="]
    model = build_model(load_config(None, common))  # the pretrained weights, frozen as configured
    initial = model.state_dict()
    named = {f"encoders.text.{name}": p for name, p in model.encoders["text"].named_parameters()}
    frozen = {name for name, p in named.items() if not p.requires_grad}
    assert any(".embeddings." in name for name in frozen) and any(".layer.0." in name for name in frozen)
    # every weight matrix moves once it trains (a gradient and weight decay); biases may not
    frozen_matrices = {name for name in frozen if named[name].ndim > 1}
    changed = {}
    for epochs in (1, 2):
        main([*common, f"train.epochs={epochs}", f"output_dir={tmp_path / str(epochs)}"])
        weights = load_checkpoint(tmp_path / str(epochs) / "last.pt")["model"]
        changed[epochs] = {name for name in named if not torch.equal(weights[name], initial[name])}
    assert changed[1] and not changed[1] & frozen  # epoch 1 trained the top layer only
    assert frozen_matrices <= changed[2]


def test_bad_config_exits_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([f"output_dir={tmp_path / 'run'}", "train.lr=-1"])
    assert exit_info.value.code == 2
    assert "train.lr: must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_cache_with_other_preprocessing_is_refused(tiny_meld_cache, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*tiny_meld_cache["overrides"], *QUICK, f"output_dir={tmp_path / 'run'}", "preprocess.video.size=48"])
    assert exit_info.value.code == 1
    assert "video.size: cache has 32, wanted 48" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


def tiny_audio_encoder(config: Path, tiny_wav2vec2_model: str) -> list[str]:
    """Overrides that make the audio encoder of ``config`` tiny and offline: VGGish with few
    channels (as TINY_MODEL), or a random tiny Whisper, or the tiny wav2vec2 for hf_audio."""
    kind = load_config(config).model.encoders["audio"]["type"]
    if kind == "whisper":
        return [f"model.encoders.audio.{key}" for key in (
            "pretrained=false", "d_model=16", "encoder_layers=2", "encoder_attention_heads=2",
            "encoder_ffn_dim=32", "freeze_layers=1")]
    if kind == "hf_audio":
        return [f"model.encoders.audio.model={tiny_wav2vec2_model}", "model.encoders.audio.freeze_layers=1"]
    return [item for item in TINY_MODEL if item.startswith("model.encoders.audio.")]


def install_random_mtcnn(home: Path) -> None:
    """MTCNN state dicts of random weights, installed in the models home ``home`` as
    pipeline.fetch would (a manifest of sizes), so face_crop: mtcnn runs without the real ones."""
    import hashlib

    from encoders.models_home import MANIFEST

    folder = home / "mtcnn"
    folder.mkdir(parents=True)
    files = {}
    for name, network in MTCNN().named_children():
        torch.save(network.state_dict(), folder / f"{name}.pt")
        data = (folder / f"{name}.pt").read_bytes()
        files[f"{name}.pt"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / MANIFEST).write_text(json.dumps({"name": "mtcnn", "files": files}))


@pytest.mark.slow
@pytest.mark.parametrize("config", OFFLINE_CONFIGS, ids=[path.stem for path in OFFLINE_CONFIGS])
def test_every_config_runs_one_step(tiny_meld_cache, tiny_wav2vec2_model, tmp_path, config, monkeypatch):
    tiny_model = [item for item in TINY_MODEL if not item.startswith("model.encoders.audio.")]
    overrides = [*tiny_meld_cache["overrides"][:-len(TINY_MODEL)], *tiny_model,
                 *tiny_audio_encoder(config, tiny_wav2vec2_model), *QUICK, f"output_dir={tmp_path / 'run'}",
                 "train.epochs=1", "train.max_steps_per_epoch=1", "train.batch_size=2"]
    pcfg = to_dict(load_config(config, overrides).preprocess)
    if params_key(pcfg) != params_key(CacheSplit(Path(tiny_meld_cache["cache_dir"]) / "train").preprocess):
        # e.g. a text-only config, or one with the waveform or face crops: its own cache of the
        # tiny MELD folder, made with its preprocessing (MTCNN with random weights)
        if pcfg["video"]["face_crop"] == "mtcnn":
            install_random_mtcnn(tmp_path / "models")
            monkeypatch.setenv("MELD_FUSION_MODELS", str(tmp_path / "models"))
        cache_dir = tmp_path / "cache"
        detector.cache_clear()
        try:
            status = preprocess.main([tiny_meld_cache["meld_root"], str(cache_dir), "--workers", "1",
                                      "--config", str(config), *tiny_meld_cache["preprocess_overrides"]])
        finally:
            detector.cache_clear()  # the random weights must not serve a later test
        assert status == 0
        overrides.append(f"data.cache_dir={cache_dir}")
    result = main(["--config", str(config), *overrides])
    assert len(result["epochs"]) == 1 and math.isfinite(result["epochs"][0]["train_loss"])
    # best.pt reloads to the model that validation scored, batch for batch in the same order
    cfg = load_config(tmp_path / "run" / "config.yaml")
    val, reloaded = result["epochs"][0]["val"], reloaded_metrics(tmp_path / "run" / "best.pt", cfg)
    assert reloaded["emotion"]["confusion_matrix"] == val["emotion"]["confusion_matrix"]
    assert reloaded["loss"] == pytest.approx(val["loss"], rel=1e-5)
    # every task has its output size, and a few steps on one batch lower that batch's loss
    outputs, losses = fixed_batch_losses(cfg, steps=5)
    size = outputs["emotion"].shape[0]
    assert [tuple(outputs[task].shape) for task in ("emotion", "sentiment", "regression")] == [
        (size, 7), (size, 3), (size, 1)]
    assert losses[-1] < losses[0], losses


def reloaded_metrics(checkpoint: Path, cfg) -> dict:
    """The validation metrics of ``checkpoint`` loaded afresh, evaluated on batches made as
    training makes them (whole dialogues for a dialogue model)."""
    from pipeline.execution import amp_dtype
    from pipeline.train.loading import evaluation_order, make_loader

    cpu = torch.device("cpu")
    model = MultimodalModel.from_checkpoint(checkpoint)
    train_set, val_set = (MeldDataset(Path(cfg.data.cache_dir) / split, cfg.model.modalities)
                          for split in (cfg.data.train_split, cfg.data.val_split))
    loader = make_loader(val_set, evaluation_order(val_set, cfg, model), cfg, cpu)
    metrics, _ = evaluate(model, loader, build_loss(cfg.train, *split_labels(train_set)), cpu,
                          amp_dtype(cfg.train.amp, cpu))
    return metrics


def fixed_batch_losses(cfg, steps: int) -> tuple[dict, list[float]]:
    """A fresh run of ``cfg``: ``steps`` optimizer steps on its first training batch, with
    dropout off; the last outputs and the loss before each step."""
    torch.manual_seed(0)
    run = prepare(cfg, torch.device("cpu"))
    batch = next(iter(run.loaders["train"]))
    model = run.model.eval()
    losses = []
    for _ in range(steps):
        outputs = model(batch)
        loss, _ = run.loss_fn(outputs, batch["labels"])
        run.optimizer.zero_grad()
        loss.backward()
        run.optimizer.step()
        losses.append(loss.item())
    return outputs, losses


def test_meld_bert_base_says_how_to_provide_its_weights(tiny_meld_cache, tmp_path, monkeypatch):
    import huggingface_hub.constants

    # Empty caches, so the test holds on a machine that does have the weights.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = REPO / "configs" / "meld_bert_base.yaml"
    cfg = load_config(path)
    assert cfg.preprocess.text.model == "bert-base-uncased"
    with pytest.raises(FileNotFoundError, match="huggingface-cli download bert-base-uncased"):
        build_model(cfg)
    cfg = load_config(path, [f"preprocess.text.model={tiny_meld_cache['text_model']}",
                             "model.encoders.text.freeze_layers=0"])
    with pytest.raises(FileNotFoundError, match="ImageNet weights for resnet18"):
        build_model(cfg)


# --------------------------------------------------------------------------- subprocess runs
def fixed_text_model(folder: Path) -> Path:
    """A tiny BERT like the session's (same tokenizer), but with the same weights in every
    session (the session's are drawn from an unseeded generator) and without dropout, so that
    the runs compared are deterministic."""
    from tests.conftest import save_tiny_text_model

    with torch.random.fork_rng():
        torch.manual_seed(0)
        save_tiny_text_model(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def odd_dev_cache(cache_dir: str, folder: Path) -> Path:
    """The tiny cache with 13 dev samples, so that DistributedSampler pads the dev split."""
    shutil.copytree(cache_dir, folder)
    manifest = folder / "dev" / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    ok = [i for i, row in enumerate(rows) if row["status"] == "ok"]
    rows[ok[-1]] = {**rows[ok[-1]], "status": "skipped", "reason": "left out by the test"}
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


@torch.inference_mode()
def outputs_of(checkpoint: Path, split_dir: Path) -> dict[str, torch.Tensor]:
    """Emotion, sentiment and regression outputs of ``checkpoint``'s model for every sample of a split."""
    model = MultimodalModel.from_checkpoint(checkpoint)
    dataset = MeldDataset(split_dir, sorted(model.encoders))
    outputs = model(collate([dataset[i] for i in range(len(dataset))]))
    return {task: outputs[task] for task in ("emotion", "sentiment", "regression")}


def read_ids(ids_dir: Path, rank: int) -> dict[tuple[int, int], list[str]]:
    lines = (ids_dir / f"rank{rank}.jsonl").read_text().splitlines()
    return {(row["epoch"], row["step"]): row["ids"] for row in map(json.loads, lines)}


@pytest.mark.slow
def test_ddp_two_ranks_match_one_process(tiny_meld_cache, tmp_path):
    """torchrun with 2 CPU ranks (gloo) at batch B equals one process at batch 2B: the ranks
    see disjoint halves of each global batch, the trained models compute the same outputs, and
    the validation metrics of the padded 13-sample dev split are those of one process, exactly."""
    cache = odd_dev_cache(tiny_meld_cache["cache_dir"], tmp_path / "cache")
    text_model = fixed_text_model(tmp_path / "bert")
    common = [*tiny_meld_cache["overrides"], f"data.cache_dir={cache}", "data.num_workers=0",
              "model.modalities=[audio,text]",  # ResNet's BatchNorm statistics depend on the batch split
              f"model.encoders.text.model={text_model}", "model.encoders.text.dropout=0",
              "model.fusion.dropout=0", "model.head.dropout=0", "train.token_mask_samples=0",
              "train.epochs=2", "data.test_split=",
              # progressive unfreezing rebuilds the DDP wrapper after epoch 1
              "model.encoders.text.freeze_layers=1", "train.unfreeze_after_epochs=1"]
    single = run([sys.executable, str(HARNESS), "--ids", str(tmp_path / "ids1"), "--",
                  *common, f"output_dir={tmp_path / 'one'}", "train.batch_size=4"])
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(HARNESS), "--ids", str(tmp_path / "ids2"), "--",
               *common, f"output_dir={tmp_path / 'two'}", "train.batch_size=2"])
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    one, ranks = read_ids(tmp_path / "ids1", 0), [read_ids(tmp_path / "ids2", r) for r in (0, 1)]
    assert set(one) == set(ranks[0]) == set(ranks[1]) and len(one) == 2 * 4  # 2 epochs of 4 steps
    for key, ids in one.items():
        first, second = ranks[0][key], ranks[1][key]
        assert not set(first) & set(second)
        assert sorted(first + second) == sorted(ids)
    for epoch in (0, 1):
        seen = [i for (e, _), ids in one.items() if e == epoch for i in ids]
        assert len(seen) == len(set(seen)) == 14

    # The models, compared by what they compute. Not weight by weight: the attention key biases
    # get no gradient (softmax ignores a shift shared by all keys), so theirs is rounding noise
    # that Adam scales up to steps of up to lr, different for batches of 4 and of 2 + 2 (up to
    # 7e-5 apart after 8 steps, against 4e-7 for the outputs).
    weights_one = load_checkpoint(tmp_path / "one" / "last.pt")["model"]
    weights_two = load_checkpoint(tmp_path / "two" / "last.pt")["model"]
    assert weights_one.keys() == weights_two.keys()
    for split in ("train", "dev"):
        outputs_one, outputs_two = (outputs_of(tmp_path / name / "last.pt", cache / split) for name in ("one", "two"))
        for task, values in outputs_one.items():
            torch.testing.assert_close(outputs_two[task], values, rtol=1e-4, atol=1e-5, msg=f"{split} {task}")
    metrics_one, metrics_two = metrics_of(tmp_path / "one"), metrics_of(tmp_path / "two")
    for row_one, row_two in zip(metrics_one["epochs"], metrics_two["epochs"]):
        assert row_two["val"]["emotion"]["count"] == 13
        assert row_two["val"]["emotion"]["confusion_matrix"] == row_one["val"]["emotion"]["confusion_matrix"]
        assert row_two["val"]["loss"] == pytest.approx(row_one["val"]["loss"], rel=1e-4)
        assert row_two["train_loss"] == pytest.approx(row_one["train_loss"], rel=1e-4)
    assert len(load_checkpoint(tmp_path / "two" / "last.pt")["rng"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("ema_decay", [0.0, 0.5], ids=["own weights", "moving average"])
def test_ddp_validation_metrics_are_those_of_the_saved_model(tiny_meld_cache, tmp_path, ema_decay):
    """With BatchNorm (ResNet) each rank's running statistics drift apart; the validation
    metrics of a DDP run must still be those of best.pt evaluated by one process, with or
    without a moving average of the weights."""
    out = tmp_path / "run"
    ddp = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "pipeline.train", *tiny_meld_cache["overrides"], *QUICK, f"output_dir={out}",
               "train.batch_size=2", "train.epochs=1", "train.max_steps_per_epoch=3", "data.test_split=",
               f"train.ema_decay={ema_decay}"])
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    metrics = dev_metrics_of_best(out)
    val = metrics_of(out)["epochs"][0]["val"]
    assert val["emotion"]["confusion_matrix"] == metrics["emotion"]["confusion_matrix"]
    assert val["loss"] == pytest.approx(metrics["loss"], rel=1e-5)


@pytest.mark.slow
def test_ddp_needs_no_shared_filesystem(tiny_meld_cache, tmp_path):
    """Rank 1 writes into an output_dir of its own (train_harness --node-local-output), as a
    second node that does not see rank 0's disk. Killed in epoch 2, the job resumes on both
    ranks from rank 0's last.pt, evaluates best.pt on both, and ends as an uninterrupted job."""
    common = [*tiny_meld_cache["overrides"], *QUICK, "model.modalities=[text]", "train.batch_size=2",
              "train.max_steps_per_epoch=2", "train.epochs=2", "train.dist_timeout_minutes=2"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(HARNESS),
                "--node-local-output"]
    out = tmp_path / "run"
    killed = run([*torchrun, "--kill-at", "1:0", "--", *common, f"output_dir={out}"])
    assert killed.returncode != 0
    assert load_checkpoint(out / "last.pt")["epoch"] == 1 and not (tmp_path / "run-rank1").exists()
    resumed = run([*torchrun, "--", *common, f"output_dir={out}", "train.resume=true"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    whole = run([*torchrun, "--", *common, f"output_dir={tmp_path / 'whole'}"])
    assert whole.returncode == 0, whole.stderr[-3000:]
    expected, got = without_timings(metrics_of(tmp_path / "whole")), without_timings(metrics_of(out))
    assert got == expected and got["test"]["emotion"]["count"] == 14
    assert not (tmp_path / "run-rank1").exists()  # rank 1 never wrote, nor needed to read


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(tiny_meld_cache, tmp_path):
    """SIGKILL in the middle of epoch 2 of 3, then train.resume=true: the same metrics and
    weights as a run never interrupted (dropout, token masking, workers, length-grouped
    batches and the moving average of the weights included)."""
    common = [*tiny_meld_cache["overrides"], "data.num_workers=1", "data.group_by_length=true", "train.batch_size=4",
              "train.epochs=3", "train.token_mask_samples=0.5", "model.encoders.text.freeze_layers=1",
              "train.unfreeze_after_epochs=2", "train.ema_decay=0.8"]
    whole = run([sys.executable, "-m", "pipeline.train", *common, f"output_dir={tmp_path / 'whole'}"])
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = run([sys.executable, str(HARNESS), "--kill-at", "1:2", "--", *common,
                  f"output_dir={tmp_path / 'resumed'}"])
    assert killed.returncode == -9
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 1
    resumed = run([sys.executable, "-m", "pipeline.train", *common, f"output_dir={tmp_path / 'resumed'}",
                   "train.resume=true"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr

    expected, got = without_timings(metrics_of(tmp_path / "whole")), without_timings(metrics_of(tmp_path / "resumed"))
    assert got == expected
    last_whole, last_resumed = (load_checkpoint(tmp_path / name / "last.pt") for name in ("whole", "resumed"))
    for key in ("model", "training_model"):  # the average, and the weights it averages
        assert all(torch.equal(last_resumed[key][name], tensor) for name, tensor in last_whole[key].items()), key

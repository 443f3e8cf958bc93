"""The embedding pass (pipeline.embed) and training on its vectors (data.embeddings_dir), on
the generated tiny MELD cache with a tiny BERT."""
from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline import embed, infer, train
from pipeline.config import load_config
from pipeline.data.dataset import MeldDataset, collate
from pipeline.data.dialogues import DialogueBatches
from pipeline.data.embeddings import EmbeddingSplit
from pipeline.data.meld import CLIP_DIRS, CSV_NAMES
from pipeline.embed import encode
from pipeline.model import MultimodalModel, build_model
from tests.conftest import save_tiny_text_model

REPO = Path(__file__).resolve().parents[3]
CONFIG = str(REPO / "configs" / "default.yaml")


@pytest.fixture(scope="module")
def quiet_text_model(tmp_path_factory) -> str:
    """A tiny BERT without dropout inside (hidden and attention), so that a frozen copy gives
    the same vectors in training mode as in the embedding pass."""
    from transformers import AutoConfig, BertModel

    folder = save_tiny_text_model(tmp_path_factory.mktemp("quiet_bert"))
    config = AutoConfig.from_pretrained(folder)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    torch.manual_seed(3)
    BertModel(config).save_pretrained(folder)
    return str(folder)


def text_overrides(tiny_meld_cache, text_model: str, *extra: str) -> list[str]:
    """A text-only concat model with a frozen text encoder, on the tiny cache."""
    return [*tiny_meld_cache["overrides"], "model.modalities=[text]", "model.fusion.type=concat",
            f"model.encoders.text.model={text_model}", "model.encoders.text.freeze_layers=-1",
            "model.encoders.text.dropout=0.0", *extra]


def test_embedding_pass_equals_the_encoders_own_outputs(tiny_meld_cache, quiet_text_model, tmp_path):
    overrides = text_overrides(tiny_meld_cache, quiet_text_model)
    out = tmp_path / "emb"
    cache = Path(tiny_meld_cache["cache_dir"])
    assert embed.main(["--config", CONFIG, "--cache", str(cache), "--out", str(out), "--batch-size", "3",
                       "--device", "cpu", *overrides]) == 0
    cfg = load_config(CONFIG, overrides)
    model = build_model(cfg).eval()
    for split in ("train", "dev", "test"):
        stored = EmbeddingSplit(out / split)
        dataset = MeldDataset(cache / split, ["text"])
        assert stored.ids == [record["id"] for record in dataset.records]
        assert stored.vectors["text"].dtype == np.float16 and stored.meta["dims"] == {"text": 32}
        with torch.inference_mode():
            expected = np.concatenate([model.encoders["text"](batch["text"])["pooled"].numpy()
                                       for batch in DataLoader(dataset, batch_size=5, collate_fn=collate)])
        assert np.abs(expected).max() > 0.1
        np.testing.assert_allclose(stored.vectors["text"], expected, rtol=2e-3, atol=2e-3)  # float16 rounding
        assert stored.masks["text"].all()
    assert not list(out.rglob("*.partial")) and not list(out.rglob("progress.json"))


def test_a_second_pass_is_up_to_date_and_other_encoders_are_refused(tiny_meld_cache, quiet_text_model,
                                                                      tmp_path, caplog):
    caplog.set_level(logging.INFO)
    overrides = text_overrides(tiny_meld_cache, quiet_text_model)
    out = tmp_path / "emb"
    common = ["--cache", tiny_meld_cache["cache_dir"], "--out", str(out), "--splits", "dev", "--device", "cpu"]
    assert embed.main(["--config", CONFIG, *common, *overrides]) == 0
    written = (out / "dev" / "text.npy").stat().st_mtime_ns
    caplog.clear()
    assert embed.main(["--config", CONFIG, *common, *overrides]) == 0
    assert "up to date" in caplog.text and (out / "dev" / "text.npy").stat().st_mtime_ns == written
    caplog.clear()
    assert embed.main(["--config", CONFIG, *common, *overrides, "model.encoders.text.pooling=cls"]) == 1
    assert "encoders.text.pooling: 'mean' -> 'cls'" in caplog.text
    caplog.clear()
    assert embed.main(["--config", CONFIG, *common, *text_overrides(tiny_meld_cache,
                                                                   tiny_meld_cache["text_model"])]) == 1
    assert "weights:" in caplog.text  # same architecture, other weights


def test_an_interrupted_pass_resumes_and_gives_the_same_vectors(tiny_meld_cache, quiet_text_model, tmp_path,
                                                                monkeypatch):
    overrides = text_overrides(tiny_meld_cache, quiet_text_model)
    common = ["--cache", tiny_meld_cache["cache_dir"], "--splits", "train", "--batch-size", "4", "--device", "cpu"]
    assert embed.main(["--config", CONFIG, *common, "--out", str(tmp_path / "whole"), *overrides]) == 0

    written = []
    real_write = encode.write_json

    def killed_after_two_batches(path, data):
        real_write(path, data)
        if path.name == "progress.json" and data["done"] > 0:
            written.append(data["done"])
            if len(written) == 2:
                raise KeyboardInterrupt  # as a kill between two batches leaves the folder

    monkeypatch.setattr(encode, "write_json", killed_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        embed.main(["--config", CONFIG, *common, "--out", str(tmp_path / "cut"), *overrides])
    monkeypatch.setattr(encode, "write_json", real_write)
    progress = json.loads((tmp_path / "cut" / "train" / "progress.json").read_text())
    assert progress["done"] == 8 and not (tmp_path / "cut" / "train" / "meta.json").exists()
    with pytest.raises(FileNotFoundError, match="interrupted"):
        EmbeddingSplit(tmp_path / "cut" / "train")
    assert embed.main(["--config", CONFIG, *common, "--out", str(tmp_path / "cut"), *overrides]) == 0
    whole, cut = EmbeddingSplit(tmp_path / "whole" / "train"), EmbeddingSplit(tmp_path / "cut" / "train")
    np.testing.assert_array_equal(cut.vectors["text"], whole.vectors["text"])
    np.testing.assert_array_equal(cut.masks["text"], whole.masks["text"])


def dev_outputs(checkpoint: Path, cache_dir: Path) -> np.ndarray:
    model = MultimodalModel.from_checkpoint(checkpoint)
    dataset = MeldDataset(cache_dir / "dev", ["text"])
    loader = DataLoader(dataset, batch_sampler=DialogueBatches(dataset.dialogues(), 4), collate_fn=collate)
    with torch.inference_mode():
        return np.concatenate([model(batch)["emotion"].numpy() for batch in loader])


@pytest.mark.slow
@pytest.mark.parametrize("context", ["none", "gru"])
def test_training_on_vectors_equals_end_to_end_training_with_the_same_frozen_encoders(
        tiny_meld_cache, quiet_text_model, tmp_path, context):
    common = text_overrides(tiny_meld_cache, quiet_text_model, "train.epochs=2", "train.batch_size=4",
                            "train.token_mask_samples=0", "data.num_workers=0", "train.device=cpu",
                            "train.early_stopping_patience=0", f"model.context.type={context}")
    cache = Path(tiny_meld_cache["cache_dir"])
    assert embed.main(["--config", CONFIG, "--cache", str(cache), "--out", str(tmp_path / "emb"),
                       "--dtype", "float32", "--device", "cpu", *common]) == 0
    end_to_end = train.main(["--config", CONFIG, *common, f"output_dir={tmp_path / 'e2e'}"])
    vectors = train.main(["--config", CONFIG, *common, f"output_dir={tmp_path / 'vec'}",
                          f"data.embeddings_dir={tmp_path / 'emb'}"])
    for ours, theirs in zip(vectors["epochs"], end_to_end["epochs"]):
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-4)
        assert ours["val"]["emotion"]["weighted_f1"] == pytest.approx(theirs["val"]["emotion"]["weighted_f1"])
    np.testing.assert_allclose(dev_outputs(tmp_path / "vec" / "best.pt", cache),
                               dev_outputs(tmp_path / "e2e" / "best.pt", cache), atol=1e-4)
    for name in ("metrics.json", "report.txt", "confusion_matrix.png", "curves.png"):
        assert (tmp_path / "vec" / name).is_file()
    # The checkpoint holds the encoders that made the vectors: inference runs on raw clips.
    meld = cache.parent / "MELD.Raw"
    out = tmp_path / "rows.jsonl"
    assert infer.main(["--checkpoint", str(tmp_path / "vec" / "best.pt"), "--clips", str(meld / CLIP_DIRS["dev"]),
                       "--transcripts", str(meld / CSV_NAMES["dev"]), "--out", str(out), "--workers", "0",
                       "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(row["status"] == "ok" for row in rows)
    shutil.rmtree(tmp_path / "e2e")
    shutil.rmtree(tmp_path / "vec")


def test_training_refuses_vectors_of_other_encoders(tiny_meld_cache, quiet_text_model, tmp_path, capsys):
    common = text_overrides(tiny_meld_cache, quiet_text_model, "train.epochs=1", "train.max_steps_per_epoch=1",
                            "data.num_workers=0", "train.device=cpu")
    assert embed.main(["--config", CONFIG, "--cache", tiny_meld_cache["cache_dir"], "--out", str(tmp_path / "emb"),
                       "--device", "cpu", *common]) == 0
    with pytest.raises(SystemExit):
        train.main(["--config", CONFIG, *common, "model.encoders.text.pooling=cls",
                    f"output_dir={tmp_path / 'run'}", f"data.embeddings_dir={tmp_path / 'emb'}"])
    message = capsys.readouterr().err  # pipeline.train logs to stderr
    assert "encoders.text.pooling: 'mean' -> 'cls'" in message and not (tmp_path / "run").exists()


def test_the_two_stage_recipe_trains_a_frozen_config_on_a_fine_tuned_checkpoints_vectors(
        tiny_meld_cache, quiet_text_model, tmp_path, capsys):
    """The commands of docs/embeddings.md: fine-tune (encoder dropout 0.1, every layer trained), embed with
    the checkpoint, train a config that freezes the encoder without dropout on the vectors.
    Those two fields act in training only, so the vectors serve it; pooling still counts."""
    common = [*tiny_meld_cache["overrides"], "model.modalities=[text]", "model.fusion.type=concat",
              f"model.encoders.text.model={quiet_text_model}", "train.epochs=1", "train.batch_size=4",
              "data.num_workers=0", "train.device=cpu"]
    train.main(["--config", CONFIG, *common, "model.encoders.text.freeze_layers=0",
                "model.encoders.text.dropout=0.1", f"output_dir={tmp_path / 'ft'}"])
    assert embed.main(["--checkpoint", str(tmp_path / "ft" / "best.pt"), "--cache", tiny_meld_cache["cache_dir"],
                       "--out", str(tmp_path / "emb"), "--device", "cpu"]) == 0
    frozen = [*common, "model.encoders.text.freeze_layers=-1", "model.encoders.text.dropout=0.0",
              f"data.embeddings_dir={tmp_path / 'emb'}", "model.context.type=gru"]
    result = train.main(["--config", CONFIG, *frozen, f"output_dir={tmp_path / 'two_stage'}"])
    assert result["best_epoch"] == 1 and (tmp_path / "two_stage" / "best.pt").is_file()
    # its best.pt holds the fine-tuned encoder, not the pretrained one the config names
    tuned = torch.load(tmp_path / "ft" / "best.pt", weights_only=True)["model"]
    staged = torch.load(tmp_path / "two_stage" / "best.pt", weights_only=True)["model"]
    for key in (k for k in tuned if k.startswith("encoders.text.")):
        torch.testing.assert_close(staged[key], tuned[key], rtol=0, atol=0)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        train.main(["--config", CONFIG, *frozen, "model.encoders.text.pooling=cls", f"output_dir={tmp_path / 'cls'}"])
    refusal = capsys.readouterr().err.split("holds embeddings made by other encoders")[-1]
    assert "encoders.text.pooling: 'mean' -> 'cls'" in refusal and "dropout" not in refusal


def test_vectors_written_with_training_only_fields_in_their_key_stay_up_to_date(
        tiny_meld_cache, quiet_text_model, tmp_path, caplog):
    """Folders written before the key left out dropout and freeze_layers still match."""
    common = text_overrides(tiny_meld_cache, quiet_text_model)
    args = ["--config", CONFIG, "--cache", tiny_meld_cache["cache_dir"], "--out", str(tmp_path / "emb"),
            "--device", "cpu", *common]
    assert embed.main(args) == 0
    meta_path = tmp_path / "emb" / "dev" / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert "dropout" not in meta["key"]["encoders"]["text"] and "pooling" in meta["key"]["encoders"]["text"]
    meta["key"]["encoders"]["text"].update({"dropout": 0.3, "freeze_layers": 2})
    meta_path.write_text(json.dumps(meta))
    with caplog.at_level(logging.INFO, logger="pipeline.embed"):
        assert embed.main(args) == 0
    assert "dev: up to date" in caplog.text


def test_a_run_on_vectors_resumes_after_a_kill_and_keeps_the_encoders_out_of_last_pt(
        tiny_meld_cache, quiet_text_model, tmp_path):
    """last.pt of a run on vectors leaves out the frozen encoder (rebuilt and checked on every
    start); best.pt keeps it. A SIGKILL in epoch 2 of 3, then resume: the uninterrupted run's
    metrics and weights."""
    from tests.pipeline.run_helpers import HARNESS, run, without_timings

    common = ["--config", CONFIG, *text_overrides(tiny_meld_cache, quiet_text_model, "train.epochs=3",
                                                  "train.batch_size=4", "data.num_workers=0",
                                                  "model.context.type=gru", "train.early_stopping_patience=0",
                                                  "train.ema_decay=0.8")]
    assert embed.main(["--cache", tiny_meld_cache["cache_dir"], "--out", str(tmp_path / "emb"), "--device", "cpu",
                       *common]) == 0
    common.append(f"data.embeddings_dir={tmp_path / 'emb'}")
    whole = run([sys.executable, "-m", "pipeline.train", *common, f"output_dir={tmp_path / 'whole'}"])
    assert whole.returncode == 0, whole.stderr[-3000:]
    last = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "whole" / "best.pt", weights_only=True)
    assert not any(key.startswith("encoders.") for key in (*last["model"], *last["training_model"]))
    assert any(key.startswith("encoders.text.") for key in best["model"])
    killed = run([sys.executable, str(HARNESS), "--kill-at", "1:2", "--", *common,
                  f"output_dir={tmp_path / 'resumed'}"])
    assert killed.returncode == -9
    resumed = run([sys.executable, "-m", "pipeline.train", *common, f"output_dir={tmp_path / 'resumed'}",
                   "train.resume=true"])
    assert resumed.returncode == 0 and "resumed from" in resumed.stderr, resumed.stderr[-3000:]
    metrics = [without_timings(json.loads((tmp_path / name / "metrics.json").read_text()))
               for name in ("whole", "resumed")]
    assert metrics[0] == metrics[1]
    states = [torch.load(tmp_path / name / "best.pt", weights_only=True)["model"] for name in ("whole", "resumed")]
    for key, value in states[0].items():
        torch.testing.assert_close(states[1][key], value, rtol=0, atol=0)


def test_the_pass_computes_in_bf16_where_the_cpu_does_and_resumes_only_alike(tiny_meld_cache, quiet_text_model,
                                                                             tmp_path, monkeypatch, caplog):
    overrides = text_overrides(tiny_meld_cache, quiet_text_model)
    common = ["--cache", tiny_meld_cache["cache_dir"], "--splits", "dev", "--device", "cpu", "--dtype", "float32"]
    monkeypatch.setenv("MELD_FUSION_CPU_BF16", "1")  # as on a CPU with AMX
    assert embed.main(["--config", CONFIG, *common, "--out", str(tmp_path / "bf16"), *overrides]) == 0
    assert embed.main(["--config", CONFIG, *common, "--out", str(tmp_path / "off"), "--amp", "off", *overrides]) == 0
    bf16, off = EmbeddingSplit(tmp_path / "bf16" / "dev"), EmbeddingSplit(tmp_path / "off" / "dev")
    assert bf16.meta["computed"] == "bfloat16" and off.meta["computed"] == "float32"
    difference = np.abs(bf16.vectors["text"] - off.vectors["text"]).max()
    assert 0 < difference < 0.1 * np.abs(off.vectors["text"]).max()  # bf16 rounding, not other vectors
    monkeypatch.setenv("MELD_FUSION_CPU_BF16", "0")  # a CPU without: auto stays float32
    assert embed.main(["--config", CONFIG, *common, "--out", str(tmp_path / "plain"), *overrides]) == 0
    np.testing.assert_array_equal(EmbeddingSplit(tmp_path / "plain" / "dev").vectors["text"], off.vectors["text"])
    # an interrupted bf16 pass is not finished in float32
    progress = json.loads((tmp_path / "bf16" / "dev" / "meta.json").read_text())
    partial = tmp_path / "cut" / "dev"
    partial.mkdir(parents=True)
    for name in ("text", "text_mask"):
        shutil.copy(tmp_path / "bf16" / "dev" / f"{name}.npy", partial / f"{name}.npy.partial")
    (partial / "progress.json").write_text(json.dumps(
        {"format": progress["format"], "version": progress["version"], "key": progress["key"], "dtype": "float32",
         "computed": "bfloat16", "done": 2}))
    assert embed.main(["--config", CONFIG, *common, "--out", str(tmp_path / "cut"), *overrides]) == 1
    assert "computed its vectors in bfloat16, this one computes in float32" in caplog.text

"""train.distill_from: a student trained on the labels and on teachers' softened probabilities,
which are computed once per training sample (each teacher on the features it was trained on)."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import preprocess
from pipeline import train as training
from pipeline.config import TrainConfig
from pipeline.data.cache import CacheSplit
from pipeline.data.dataset import MeldDataset, collate
from pipeline.labels import EMOTIONS
from pipeline.model import MultimodalModel, load_checkpoint
from pipeline.train.losses import MultitaskLoss
from pipeline.train.losses import teacher as teacher_module

LINES = ("i am so happy .", "the train leaves at noon .", "i am very glad .", "noon .", "so glad .", "the train .",
         "very happy .")


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def test_the_loss_mixes_the_labels_loss_with_t_squared_times_the_kl_to_the_teacher():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 7)).astype(np.float32)
    teacher = np.exp(log_softmax(rng.normal(size=(4, 7)))).astype(np.float32)
    teacher[2] = np.nan  # no teacher for this sample: it only has the labels' loss
    labels = np.array([0, 3, 6, 2])
    alpha, temperature = 0.3, 2.0
    cfg = TrainConfig(distill_alpha=alpha, distill_temperature=temperature, label_smoothing=0.0,
                      task_weights={"emotion": 1.0, "sentiment": 0.0, "regression": 0.0})
    loss, parts = MultitaskLoss(cfg)({"emotion": torch.from_numpy(logits)},
                                     {"emotion": torch.from_numpy(labels), "teacher_emotion": torch.from_numpy(teacher)})
    known = [0, 1, 3]
    kl = (teacher[known] * (np.log(teacher[known]) - log_softmax(logits[known] / temperature))).sum(axis=1).mean()
    cross_entropy = -log_softmax(logits)[np.arange(4), labels].mean()
    assert float(parts["distill_emotion"]) == pytest.approx(temperature ** 2 * kl, rel=1e-5)
    assert float(loss) == pytest.approx((1 - alpha) * cross_entropy + alpha * temperature ** 2 * kl, rel=1e-5)


def write_cache(folder: Path, text_model: str, max_length: int) -> Path:
    """A text-only cache of train (5 dialogues of 7 turns) and dev (1 dialogue)."""
    for split, dialogues in (("train", 5), ("dev", 1)):
        path = folder / "meld" / f"{split}_sent_emo.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID"])
            for d in range(dialogues):
                for u, emotion in enumerate(EMOTIONS):
                    writer.writerow([7 * d + u + 1, LINES[(u + d) % 7], ("Ross", "Monica")[u % 2], emotion, "neutral",
                                     d, u])
    status = preprocess.main([str(folder / "meld"), str(folder / "cache"), "--splits", "train,dev", "--workers", "0",
                              *text_overrides(text_model, max_length)])
    assert status == 0
    return folder / "cache"


def text_overrides(text_model: str, max_length: int) -> list[str]:
    return ["preprocess.modalities=[text]", f"preprocess.text.model={text_model}",
            f"preprocess.text.max_length={max_length}"]


def run(cache: Path, out: Path, text_model: str, max_length: int, *extra: str) -> dict:
    return training.main([f"data.cache_dir={cache}", f"output_dir={out}", "data.num_workers=0", "data.test_split=",
                          "model.modalities=[text]", *text_overrides(text_model, max_length), "train.batch_size=8",
                          "train.epochs=1", "train.lr=0.01", *extra])


def teacher_probabilities(checkpoint: Path, cache: Path, temperature: float) -> dict[str, np.ndarray]:
    """The teacher's emotion probabilities at ``temperature`` on every training sample, by hand."""
    model = MultimodalModel.from_checkpoint(load_checkpoint(checkpoint)).eval()
    dataset = MeldDataset(CacheSplit(cache / "train").split_dir, ["text"])
    batch = collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        logits = model(batch)["emotion"].numpy()
    return dict(zip(batch["ids"], np.exp(log_softmax(logits / temperature))))


@pytest.mark.slow
def test_a_student_learns_from_the_teachers_averaged_probabilities_computed_once(tmp_path, tiny_text_model,
                                                                                 monkeypatch):
    short = write_cache(tmp_path / "short", tiny_text_model, 16)  # the teachers' features
    long = write_cache(tmp_path / "long", tiny_text_model, 24)  # the student's: other preprocess settings
    teachers = []
    for seed in (0, 1):
        run(short, tmp_path / f"teacher{seed}", tiny_text_model, 16, "train.epochs=2", f"train.seed={seed}")
        teachers.append(tmp_path / f"teacher{seed}" / "best.pt")

    stored = {}
    for name, chosen in (("first", teachers[:1]), ("second", teachers[1:]), ("both", teachers)):
        result = run(long, tmp_path / name, tiny_text_model, 24, f"train.distill_from=[{', '.join(map(str, chosen))}]",
                     "train.distill_temperature=3.0", "train.distill_alpha=0.5")
        assert "distill_emotion" in result["epochs"][0]["train_parts"]
        with np.load(tmp_path / name / "teacher_targets.npz") as saved:
            stored[name] = {key: saved[key] for key in ("ids", "emotion", "sentiment")}
            assert len(saved["ids"]) == 35
    # each teacher read its own (short) cache: its probabilities are those of that cache's samples
    by_hand = teacher_probabilities(teachers[0], short, 3.0)
    for id_, row in zip(stored["first"]["ids"], stored["first"]["emotion"]):
        np.testing.assert_allclose(row, by_hand[str(id_)], rtol=1e-4, atol=1e-6)
    assert not np.allclose(stored["first"]["emotion"], stored["second"]["emotion"])
    for task in ("emotion", "sentiment"):  # two teachers: the mean of their probabilities
        np.testing.assert_allclose(stored["both"][task], (stored["first"][task] + stored["second"][task]) / 2,
                                   rtol=1e-5, atol=1e-7)

    # a resumed run reads the stored probabilities: no teacher runs again
    def no_teacher(*args, **kwargs):
        raise AssertionError("a teacher ran again")

    monkeypatch.setattr(teacher_module, "one_teacher", no_teacher)
    again = run(long, tmp_path / "first", tiny_text_model, 24, f"train.distill_from={teachers[0]}",
                "train.distill_temperature=3.0", "train.epochs=2", "train.resume=true")
    assert len(again["epochs"]) == 2
    monkeypatch.undo()

    # without a cache of the teacher's features the run stops in one line, before training
    shutil.move(short, tmp_path / "moved")
    with pytest.raises(SystemExit) as stopped:
        run(long, tmp_path / "nocache", tiny_text_model, 24, f"train.distill_from={teachers[0]}")
    assert stopped.value.code == 1
    assert not (tmp_path / "nocache" / "best.pt").exists()


def test_the_run_records_the_teachers_in_its_config(tmp_path, tiny_text_model):
    cache = write_cache(tmp_path, tiny_text_model, 16)
    run(cache, tmp_path / "teacher", tiny_text_model, 16)
    run(cache, tmp_path / "student", tiny_text_model, 16, f"train.distill_from={tmp_path / 'teacher' / 'best.pt'}")
    import yaml

    saved = yaml.safe_load((tmp_path / "student" / "config.yaml").read_text())
    assert saved["train"]["distill_from"] == [str(tmp_path / "teacher" / "best.pt")]
    metrics = json.loads((tmp_path / "student" / "metrics.json").read_text())
    assert metrics["epochs"][0]["train_parts"]["distill_emotion"] > 0

"""bench/meld_text.py end to end on tiny MELD-format CSVs with a tiny text model."""
from __future__ import annotations

import numpy as np
import pytest
from bench_loader import emotion_predictions, load_bench
from sklearn.metrics import accuracy_score, f1_score

from pipeline.data.cache import CacheSplit
from pipeline.labels import EMOTIONS
from pipeline.sample.text import write_meld_csv

LINES = ("I am so happy.", "The train leaves at noon.", "I am very glad.", "Noon.", "I am so glad.",
         "The train.", "Very happy.")


def write_csvs(folder, test: bool = True) -> None:
    """train: 4 dialogues of 7 turns (every emotion once each); dev: 1 such dialogue; test
    (unless ``test`` is False): 2 dialogues of 5 turns, joy twice as often as any other."""
    splits = [("train_sent_emo.csv", 4, list(EMOTIONS)), ("dev_sent_emo.csv", 1, list(EMOTIONS))]
    if test:
        splits.append(("test_sent_emo.csv", 2, ["joy", "joy", "anger", "fear", "neutral"]))
    for name, dialogues, emotions in splits:
        rows = [{"Sr No.": 7 * d + u + 1, "Utterance": LINES[(u + d) % 7], "Speaker": ("Ross", "Monica")[u % 2],
                 "Emotion": emotion, "Sentiment": "neutral", "Dialogue_ID": d, "Utterance_ID": u}
                for d in range(dialogues) for u, emotion in enumerate(emotions)]
        write_meld_csv(folder / name, rows)


def sklearn_figures(labels, predictions) -> dict:
    per_class = f1_score(labels, predictions, labels=range(7), average=None, zero_division=0)
    return {"accuracy": accuracy_score(labels, predictions),
            "weighted_f1": f1_score(labels, predictions, labels=range(7), average="weighted", zero_division=0),
            "macro_f1": per_class.mean(), "per_class": dict(zip(EMOTIONS, per_class))}


@pytest.mark.slow
def test_meld_text_bench_trains_and_reports_every_run(tmp_path, tiny_text_model, capsys):
    write_csvs(tmp_path / "meld")
    bench = load_bench("meld_text")
    rows = bench.main(["--meld-csv-dir", str(tmp_path / "meld"), "--work-dir", str(tmp_path / "work"),
                       "--quick", "--max-train", "8", "--workers", "1", "--context-turns", "2", "--context-epochs", "2",
                       "--max-length", "16", "--context-max-length", "32",
                       f"preprocess.text.model={tiny_text_model}", "train.batch_size=4"])

    assert [row["run"].name for row in rows] == [
        "no context", "2 context turns", "weighting none", "weighting inverse", "weighting sqrt_inverse",
        "weighting effective_number"]
    assert [row["run"].weighting for row in rows[2:]] == list(bench.WEIGHTINGS)
    for row in rows:
        assert row["samples"] == 8 and 1 <= row["best_epoch"] <= row["run"].epochs
        assert all(0.0 <= row[key] <= 1.0 for key in ("accuracy", "weighted_f1", "macro_f1", "fear", "disgust"))
    # Each row's figures are those of its best.pt on dev and on test, recomputed by sklearn.
    for row in rows:
        (cache,) = (tmp_path / "work").glob(f"cache-context{row['run'].context_turns}-*")
        best = tmp_path / "work" / "runs" / row["run"].name.replace(" ", "_") / "best.pt"
        for split, size in (("dev", 7), ("test", 10)):
            labels, predictions = emotion_predictions(best, cache / split)
            assert len(labels) == size
            expected = sklearn_figures(labels, predictions)
            got = row[split]
            assert {key: got[key] for key in ("accuracy", "weighted_f1", "macro_f1")} == pytest.approx(
                {key: expected[key] for key in ("accuracy", "weighted_f1", "macro_f1")}, abs=1e-9), row["run"].name
            assert got["per_class"] == pytest.approx(expected["per_class"], abs=1e-9)
        assert row["fear"] == row["dev"]["per_class"]["fear"] and row["weighted_f1"] == row["dev"]["weighted_f1"]
    out = capsys.readouterr().out
    assert out.count("\n| ") == 1 + len(rows)  # header row, then one row per run
    assert "Test evaluations made by this command: 6 (each run's dev-chosen best.pt, once)." in out
    assert out.count("\n- ") == len(rows) and "Per-class F1 (dev/test)" in out
    assert [row["run"].epochs for row in rows] == [1, 2, 1, 1, 1, 1]
    assert "| 2 context turns | 2 | sqrt_inverse | 2 | 8 |" in out
    assert f"Overrides: preprocess.text.model={tiny_text_model} train.batch_size=4." in out  # the table says what ran

    # The context cache holds the same utterances, longer by the previous turns.
    caches = {path.name.split("-")[1]: CacheSplit(path / "dev") for path in (tmp_path / "work").glob("cache-*")}
    assert sorted(caches) == ["context0", "context2"]
    assert caches["context2"].preprocess["text"]["context_turns"] == 2
    lengths = {name: np.array([len(cache.load(r["id"])["input_ids"]) for r in cache.records])
               for name, cache in caches.items()}
    assert (lengths["context2"][2:] > lengths["context0"][2:]).all()


def test_choosing_settings_holds_out_train_dialogues_and_never_reads_test(tmp_path, tiny_text_model, capsys):
    import json

    write_csvs(tmp_path / "meld")  # test_sent_emo.csv is there, and must stay unread
    bench = load_bench("meld_text")
    (row,) = bench.main(["--meld-csv-dir", str(tmp_path / "meld"), "--work-dir", str(tmp_path / "work"),
                         "--quick", "--runs", "plain", "--workers", "1", "--max-length", "16",
                         "--holdout", "0.6", "--no-test", f"preprocess.text.model={tiny_text_model}",
                         "train.batch_size=4"])
    (cache,) = (tmp_path / "work").glob("cache-context0-*")
    assert sorted(path.name for path in cache.iterdir() if path.is_dir()) == ["dev", "train"]
    assert row["test"] is None and row["holdout"] is not None
    metrics = json.loads((tmp_path / "work" / "runs" / "no_context" / "metrics.json").read_text())
    # 0.6 holds out dialogue 1 alone of the 4 (the SHA-256 fractions of dialogues 0-3 are
    # 0.93, 0.52, 0.79, 0.84): its 7 utterances.
    assert sum(map(sum, metrics["holdout"]["emotion"]["confusion_matrix"])) == 7
    assert row["holdout"]["weighted_f1"] == metrics["best_holdout"]
    out = capsys.readouterr().out
    assert "held-out weighted F1" in out and "Test evaluations made by this command: 0" in out


def test_seeds_repeat_each_run_and_the_table_gives_their_mean_and_spread(tmp_path, tiny_text_model, capsys):
    import yaml

    write_csvs(tmp_path / "meld", test=False)
    bench = load_bench("meld_text")
    rows = bench.main(["--meld-csv-dir", str(tmp_path / "meld"), "--work-dir", str(tmp_path / "work"), "--quick",
                       "--runs", "plain", "--max-train", "8", "--workers", "1", "--max-length", "16",
                       "--seeds", "3,4", f"preprocess.text.model={tiny_text_model}", "train.batch_size=4"])
    assert [(row["run"].name, row["run"].seed) for row in rows] == [("no context", 3), ("no context", 4)]
    for seed in (3, 4):
        saved = yaml.safe_load((tmp_path / "work" / "runs" / f"no_context_seed{seed}" / "config.yaml").read_text())
        assert saved["train"]["seed"] == seed
    scores = np.array([row["weighted_f1"] for row in rows])
    out = capsys.readouterr().out
    assert "| no context, seed 3 |" in out and "| no context, seed 4 |" in out
    assert (f"no context, seeds 3, 4: weighted F1 mean ± standard deviation: dev {scores.mean():.4f} ± "
            f"{scores.std(ddof=1):.4f}") in out

"""bench/meld_dialogue.py end to end on tiny MELD-format CSVs: the two-stage recipe (the
encoder of a checkpoint that bench/meld_text.py fine-tuned) with two dialogue models."""
from __future__ import annotations

import json

import pytest
from bench_loader import REPO, load_bench
from test_meld_text import write_csvs


@pytest.mark.slow
def test_meld_dialogue_bench_reports_each_row_over_its_seeds(tmp_path, tiny_text_model, capsys):
    write_csvs(tmp_path / "meld")
    load_bench("meld_text").main(["--meld-csv-dir", str(tmp_path / "meld"), "--work-dir", str(tmp_path / "text"),
                                  "--quick", "--max-train", "8", "--workers", "1", "--runs", "plain",
                                  "--max-length", "16", f"preprocess.text.model={tiny_text_model}",
                                  "train.batch_size=4"])
    checkpoint = tmp_path / "text" / "runs" / "no_context" / "best.pt"
    capsys.readouterr()  # the text bench's own table
    bench = load_bench("meld_dialogue")
    args = ["--meld-csv-dir", str(tmp_path / "meld"), "--work-dir", str(tmp_path / "work"), "--sources", "finetuned",
            "--finetuned", str(checkpoint), "--contexts", "none,gru", "--seeds", "2", "--workers", "1", "--quick",
            "model.context.width=8"]
    rows = bench.main(args)
    assert [(row["source"], row["context"], row["seeds"]) for row in rows] == [("finetuned", "none", 2),
                                                                              ("finetuned", "gru", 2)]
    for row in rows:
        assert len(row["runs"]) == 2
        for key in ("weighted_f1", "macro_f1", "fear", "disgust", "test_weighted_f1", "test_macro_f1"):
            mean, std, best = row[key]
            values = [run[key] for run in row["runs"]]
            assert mean == pytest.approx(sum(values) / 2) and best == max(values) and std >= 0
            assert all(0.0 <= value <= 1.0 for value in values)
    assert rows[0]["what"] == f"{tiny_text_model}, fine-tuned (no_context)"
    first_pass = rows[0]["embed_minutes"]
    out = capsys.readouterr().out
    assert out.count("\n| ") == 1 + len(rows)
    assert "Test evaluations made by this command: 4 (each seed's dev-chosen best.pt, once)." in out
    assert "Overrides: train.epochs=2 model.context.width=8." in out  # --quick adds the epochs
    # The vectors are up to date on a rerun, with the two-stage config too (the checkpoint
    # decides the encoder): the table still shows the pass that made them.
    # The rerun chooses settings: dialogues held out of training, test never scored.
    again = bench.main([*args, "--config", str(REPO / "configs" / "meld_two_stage.yaml"), "--first-seed", "3",
                        "--holdout", "0.6", "--no-test"])
    assert again[0]["embed_minutes"] == first_pass
    assert [run["seed"] for run in again[0]["runs"]] == [3, 4] and [run["seed"] for run in rows[0]["runs"]] == [0, 1]
    assert all(run["test"] is None and 0.0 <= run["holdout_weighted_f1"] <= 1.0 for run in again[0]["runs"])
    assert "holdout_weighted_f1" not in rows[0]["runs"][0]
    out = capsys.readouterr().out
    assert "Test evaluations made by this command: 0" in out
    assert "seeds 3-4 per row" in out and "meld_two_stage.yaml: 2 epochs, batches of whole dialogues up to 128" in out
    record = json.loads((tmp_path / "work" / "embed-finetuned.json").read_text(encoding="utf-8"))
    assert record["minutes"] == first_pass

"""bench/gpu.sh, the GPU recipe, run on the CPU with tiny settings: every step runs and its
figures reach OUT/figures.txt."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from bench_loader import REPO
from conftest import TINY_MODEL, TINY_PREPROCESS
from test_meld_text import write_csvs


@pytest.mark.slow
def test_the_gpu_script_runs_every_step_and_gathers_its_figures(tmp_path, tiny_text_model):
    write_csvs(tmp_path / "meld")
    tiny = [f"preprocess.text.model={tiny_text_model}", *TINY_PREPROCESS, *TINY_MODEL]
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "CONFIGS": "configs/default.yaml",
           "TEXT_ARGS": f"--quick --max-train 8 --workers 1 --context-max-length 32 preprocess.text.model={tiny_text_model} "
                        "train.batch_size=4",
           "TRAIN_ARGS": " ".join(["--clips-per-class", "1", "--steps", "2", "--warmup", "1", "data.num_workers=0",
                                   "train.batch_size=2", *tiny]),
           "INFER_ARGS": " ".join(["--clips-per-class", "1", "--duration", "1", "--width", "64", "--height", "48",
                                   "--workers", "1", "--repeat", "1", "--batch-size", "4", *tiny])}
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh"), str(tmp_path / "meld"), str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(path.name for path in out.iterdir()) == [
        "figures.txt", "infer_default.log", "infer_default.txt", "meld_text.log", "meld_text.txt",
        "train_default.log", "train_default.txt"]
    figures = (out / "figures.txt").read_text()
    assert "| 2 context turns |" in figures and "Test evaluations made by this command: 1" in figures
    assert "samples/s" in figures and "clips/s" in figures
    assert figures.count("peak resident memory") == 2
    # the recipe's settings reached the run: the dialogue around the utterance, bf16, every layer
    assert "preprocess.text.context_after=2 preprocess.text.target_marking=markers" in figures
    assert "model.encoders.text.freeze_layers=0 train.amp=bf16" in figures

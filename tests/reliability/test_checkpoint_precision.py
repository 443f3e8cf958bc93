"""A checkpoint trained with ``train.amp=fp16`` on a GPU (its weights even stored in half
precision) runs inference with ``--device cpu``: inference picks the precision of the device
it runs on (float32 on the CPU) instead of failing with "fp16 needs a CUDA device"."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from pipeline import infer
from pipeline.data.meld import CLIP_DIRS, CSV_NAMES
from pipeline.execution import inference_dtype
from pipeline.model import load_checkpoint


def predict(checkpoint: Path, clips: Path, transcripts: Path, out: Path) -> dict[str, dict]:
    status = infer.main(["--checkpoint", str(checkpoint), "--clips", str(clips), "--transcripts", str(transcripts),
                         "--out", str(out), "--workers", "0", "--device", "cpu"])
    assert status == 0
    return {row["id"]: row for row in map(json.loads, out.read_text(encoding="utf-8").splitlines())}


def test_an_fp16_checkpoint_runs_on_the_cpu_like_its_float32_original(trained_run, tiny_meld_cache, tmp_path):
    ckpt = load_checkpoint(trained_run["out"] / "best.pt")
    ckpt["config"]["train"]["amp"] = "fp16"
    ckpt["model"] = {name: value.half() if value.is_floating_point() else value for name, value in ckpt["model"].items()}
    half = tmp_path / "fp16.pt"
    torch.save(ckpt, half)
    root = Path(tiny_meld_cache["meld_root"])
    clips = tmp_path / "clips"
    shutil.copytree(root / CLIP_DIRS["dev"], clips)
    transcripts = root / CSV_NAMES["dev"]
    got = predict(half, clips, transcripts, tmp_path / "half.jsonl")
    expected = predict(trained_run["out"] / "best.pt", clips, transcripts, tmp_path / "full.jsonl")
    assert got.keys() == expected.keys() and all(row["status"] == "ok" for row in got.values())
    for id_, row in got.items():
        for name, p in row["emotion_probs"].items():
            assert p == pytest.approx(expected[id_]["emotion_probs"][name], abs=0.02), id_


@pytest.mark.parametrize("setting", ["fp16", "bf16", "auto", "off"])
def test_inference_on_the_cpu_is_float32_whatever_the_training_used(setting):
    assert inference_dtype(setting, torch.device("cpu")) is None

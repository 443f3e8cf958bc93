"""Files: the checkpoints training writes load with ``weights_only=True``; damaged, foreign and
other-version checkpoints are refused with a message naming the file by inference and by a
resumed training run (which leaves the file as it was); a cache made with other parameters
is refused by the preprocessing and training command lines, which leave it as it was."""
from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from reliability_helpers import run_cli

from pipeline import infer, train
from pipeline.data.meld import CLIP_DIRS

# train.main in process: torchelastic's @record cannot reach the fault handler through pytest's capture
pytestmark = pytest.mark.filterwarnings("ignore:Unable to enable fault handler")

PLAIN_TYPES = (torch.Tensor, str, int, float, bool, type(None))


def plain(value: Any, where: str = "checkpoint") -> list[str]:
    """Where ``value`` holds anything but tensors, dicts, lists, tuples, str, int, float, bool, None."""
    if isinstance(value, dict):
        return [bad for key, item in value.items() for bad in plain(key, where) + plain(item, f"{where}[{key!r}]")]
    if isinstance(value, (list, tuple)):
        return [bad for i, item in enumerate(value) for bad in plain(item, f"{where}[{i}]")]
    return [] if isinstance(value, PLAIN_TYPES) else [f"{where}: {type(value).__name__}"]


def test_checkpoints_written_by_training_load_with_weights_only(trained_run):
    scoring = {"model", "config", "preprocess", "labels", "metrics", "epoch"}
    for name, keys in (("last.pt", scoring | {"optimizer", "scheduler", "rng"}), ("best.pt", scoring)):
        ckpt = torch.load(trained_run["out"] / name, map_location="cpu", weights_only=True)
        assert (ckpt["format"], ckpt["version"]) == ("meld-fusion-checkpoint", 1)
        assert keys <= set(ckpt)
        assert plain(ckpt) == []
    assert torch.load(trained_run["out"] / "last.pt", weights_only=True)["epoch"] == 2


class Payload:
    """Unpickling this runs ``open(path, "w")``: a stand-in for code an attacker ships in a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def flipped(good: bytes, folder: Path) -> bytes:
    data = bytearray(good)
    middle = len(data) // 2  # inside some tensor's data: torch.load itself would not notice
    data[middle: middle + 8] = bytes(b ^ 0xFF for b in data[middle: middle + 8])
    return bytes(data)


def truncated(good: bytes, folder: Path) -> bytes:
    return good[: len(good) * 2 // 3]


def state_dict_only(good: bytes, folder: Path) -> bytes:
    return saved(torch.load(folder / "good.pt", weights_only=True)["model"], folder)


def custom_class(good: bytes, folder: Path) -> bytes:
    ckpt = torch.load(folder / "good.pt", weights_only=True)
    return saved({**ckpt, "hook": Payload(folder / "code ran")}, folder)


def other_version(good: bytes, folder: Path) -> bytes:
    return saved({**torch.load(folder / "good.pt", weights_only=True), "version": 2}, folder)


def saved(obj: Any, folder: Path) -> bytes:
    torch.save(obj, folder / "made.pt")
    return (folder / "made.pt").read_bytes()


BAD = {  # what was done to best.pt -> what the message says
    "flipped": (flipped, "is a damaged checkpoint file: record "),
    "truncated": (truncated, "is not a torch checkpoint file"),
    "state_dict": (state_dict_only, "is not a meld-fusion-checkpoint (format: None)"),
    "custom_class": (custom_class, "holds objects that weights_only loading refuses"),
    "other_version": (other_version, "is checkpoint version 2; this code reads version 1"),
}


@pytest.fixture(scope="module")
def bad_checkpoints(trained_run, tmp_path_factory) -> Iterator[dict[str, Path]]:
    """``{kind: path}`` of each BAD file, made from the run's best.pt, each in its own folder."""
    folder = tmp_path_factory.mktemp("bad")
    shutil.copy(trained_run["out"] / "best.pt", folder / "good.pt")
    good = (folder / "good.pt").read_bytes()
    paths = {}
    for kind, (make, _) in BAD.items():
        paths[kind] = folder / kind / "last.pt"
        paths[kind].parent.mkdir()
        paths[kind].write_bytes(make(good, folder))
    assert not (folder / "code ran").exists()  # saving the payload does not run it
    yield paths
    shutil.rmtree(folder)  # about 900 MB of checkpoints


# A checkpoint of another version given to inference: tests/pipeline/infer/test_infer.py.
@pytest.mark.parametrize("kind", [kind for kind in BAD if kind != "other_version"])
def test_inference_refuses_a_bad_checkpoint(bad_checkpoints, tiny_meld_cache, tmp_path, caplog, kind):
    clips = Path(tiny_meld_cache["meld_root"]) / CLIP_DIRS["test"]
    out = tmp_path / "p.jsonl"
    with caplog.at_level(logging.ERROR):
        status = infer.main(["--checkpoint", str(bad_checkpoints[kind]), "--clips", str(clips), "--out", str(out),
                             "--workers", "0", "--device", "cpu"])
    assert status == 1
    assert f"{bad_checkpoints[kind]} {BAD[kind][1]}" in caplog.text
    assert not out.exists() and not out.with_name("p.jsonl.partial").exists()
    assert not (bad_checkpoints[kind].parents[1] / "code ran").exists()


@pytest.mark.parametrize("kind", list(BAD))
def test_resuming_from_a_bad_checkpoint_is_refused_and_keeps_it(bad_checkpoints, trained_run, tmp_path, capsys,
                                                                 kind):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(bad_checkpoints[kind], out / "last.pt")
    before = (out / "last.pt").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        train.main([*trained_run["overrides"], f"output_dir={out}", "train.resume=true"])
    assert exit_info.value.code == 1
    assert f"ERROR pipeline.train: {out / 'last.pt'} {BAD[kind][1]}" in capsys.readouterr().err
    assert (out / "last.pt").read_bytes() == before
    assert not (out / "best.pt").exists() and not (out / "metrics.json").exists()
    assert not (bad_checkpoints[kind].parents[1] / "code ran").exists()


def test_a_cache_with_other_parameters_is_refused_by_both_command_lines(tiny_meld_cache, tmp_path):
    cache = Path(tiny_meld_cache["cache_dir"])
    before = {path: path.stat().st_mtime_ns for path in cache.rglob("*")}
    other = "preprocess.video.num_frames=3"  # the cache has 2
    result = run_cli(["-m", "pipeline.preprocess", tiny_meld_cache["meld_root"], cache, "--workers", "1",
                      *tiny_meld_cache["preprocess_overrides"], other])
    assert result.returncode == 1
    assert f"{cache / 'train'} was made with other preprocessing parameters" in result.stderr
    assert "video.num_frames: cache has 2, wanted 3" in result.stderr

    result = run_cli(["-m", "pipeline.train", *tiny_meld_cache["overrides"], "train.device=cpu", other,
                      f"output_dir={tmp_path / 'run'}"])
    assert result.returncode != 0
    assert f"{cache / 'train'} was made with other preprocessing parameters" in result.stderr
    assert "video.num_frames: cache has 2, wanted 3" in result.stderr
    assert not list((tmp_path / "run").glob("*.pt"))
    assert {path: path.stat().st_mtime_ns for path in cache.rglob("*")} == before

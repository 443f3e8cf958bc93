"""Training under the ways real jobs end badly:

- SIGTERM (a scheduler preempting the job) in the middle of an epoch: the step finishes,
  last.pt records the place in the epoch, the run says how to resume and exits 143, and the
  resumed run ends exactly where an uninterrupted one does (it used to die at once, saving
  nothing);
- resuming with another architecture: refused in one line naming what differs, with
  ``config.yaml`` untouched (it was overwritten first, then a traceback);
- a second run in a folder another run holds: refused (the two used to mix their files);
- a full disk while writing a checkpoint: one line, no ``.tmp`` left, the previous
  checkpoint whole (it was a traceback and a ``best.pt.tmp``).
"""
from __future__ import annotations

import errno
import json
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch
from reliability_helpers import run_cli, signal_inside_epoch_2, without_timings

from pipeline import train
from pipeline.train import distributed
from pipeline.train.guards import RunLock


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_the_place_and_the_resumed_run_matches_an_uninterrupted_one(trained_run, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "pipeline.train", *trained_run["overrides"], f"output_dir={out}"]
    status, done, stderr = signal_inside_epoch_2(command, after_steps=2, signum=signal.SIGTERM)
    assert 2 <= done < 7, "the signal did not arrive inside epoch 2 (7 steps)"
    assert status == 128 + signal.SIGTERM, stderr[-3000:]
    assert "SIGTERM received: finishing the current step" in stderr
    assert "Traceback" not in stderr
    last = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    stopped = last["epoch_progress"]["step"]
    assert last["epoch"] == 1 and done <= stopped < 7
    assert f"stopped by SIGTERM after step {stopped} of 7 in epoch 2" in stderr and "train.resume=true" in stderr

    resumed = run_cli(["-m", "pipeline.train", *trained_run["overrides"], f"output_dir={out}", "train.resume=true"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"after epoch 1 and {stopped} steps of the next" in resumed.stderr
    expected = without_timings(json.loads((trained_run["out"] / "metrics.json").read_text()))
    assert without_timings(json.loads((out / "metrics.json").read_text())) == expected
    weights = torch.load(out / "best.pt", map_location="cpu", weights_only=True)["model"]
    reference = torch.load(trained_run["out"] / "best.pt", map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(weights[name], tensor) for name, tensor in reference.items())
    # the optimizer took each step once: 2 epochs of 7
    assert torch.load(out / "last.pt", map_location="cpu", weights_only=True)["scheduler"]["last_epoch"] == 14


def test_resuming_with_another_architecture_is_refused_before_config_yaml_changes(trained_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained_run["out"], out)
    before = (out / "config.yaml").read_bytes()
    result = run_cli(["-m", "pipeline.train", *trained_run["overrides"], f"output_dir={out}", "train.resume=true",
                      "model.encoders.audio.fc_dims=[24]"])
    assert result.returncode == 1
    assert "cannot be resumed with this config" in result.stderr
    assert "model.encoders.audio.fc_dims: [16] -> [24]" in result.stderr
    assert "Traceback" not in result.stderr
    assert (out / "config.yaml").read_bytes() == before


def test_a_second_run_in_a_held_output_dir_is_refused_and_writes_nothing(trained_run, tmp_path):
    out = tmp_path / "busy"
    lock = RunLock(out)
    lock.acquire()  # a run in progress holds the folder
    try:
        result = run_cli(["-m", "pipeline.train", *trained_run["overrides"], f"output_dir={out}"])
    finally:
        lock.release()
    assert result.returncode == 1
    assert f"output_dir {out} is in use by another training run" in result.stderr and "Traceback" not in result.stderr
    assert sorted(path.name for path in out.iterdir()) == [".lock"]


def test_a_full_disk_while_saving_stops_in_one_line_and_leaves_no_tmp(trained_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_save = torch.save
    saves = []

    def save_until_full(obj, file, *args, **kwargs):
        saves.append(Path(f"/proc/self/fd/{file.fileno()}").readlink().name)  # the temporary file's name
        if len(saves) == 3:  # epoch 2's best.pt (epoch 1 wrote best.pt and last.pt)
            file.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(distributed.torch, "save", save_until_full)
    epoch_one = None
    with pytest.raises(SystemExit) as stopped:
        train.main([*trained_run["overrides"], f"output_dir={out}", "train.epochs=3"])
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert "training stopped:" in err and "No space left on device" in err and "Traceback" not in err
    assert saves[2].startswith((".best.pt.", ".last.pt.")) and saves[2].endswith(".tmp")
    assert not list(out.glob("*.tmp"))
    epoch_one = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert epoch_one["epoch"] == 1  # the checkpoint before the failure is whole

"""``--clips`` patterns over folders with links: ``**`` never follows a link to a folder (two
links to ``.`` made the walk hang), and a file reached under several names is one row."""
from __future__ import annotations

import logging
import os
import shutil
import signal
from pathlib import Path

from pipeline.data.meld import CLIP_DIRS
from pipeline.infer.clips import list_clips


def test_a_recursive_pattern_through_link_loops_ends_with_one_clip_per_file(tiny_meld_cache, tmp_path, caplog):
    folder = tmp_path / "clips"
    shutil.copytree(Path(tiny_meld_cache["meld_root"]) / CLIP_DIRS["dev"], folder)
    (folder / "deeper").mkdir()
    real = sorted(folder.glob("*.mp4"))
    os.replace(real[0], folder / "deeper" / real[0].name)
    (folder / "loop_a").symlink_to(".")
    (folder / "deeper" / "loop_b").symlink_to("..")
    (folder / "alias.mp4").symlink_to(folder / "deeper" / real[0].name)
    def hung(signum, frame):
        raise TimeoutError("the pattern walk did not end")  # it used to walk the loops for minutes

    signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        with caplog.at_level(logging.WARNING):
            clips = list_clips(f"{folder}/**/*.mp4")
    finally:
        signal.alarm(0)
    assert len(clips) == len(real) == len({os.path.realpath(c) for c in clips})
    assert "names of files already listed are skipped" in caplog.text


def test_a_pattern_relative_to_the_current_folder(tiny_meld_cache, tmp_path, monkeypatch):
    folder = tmp_path / "clips"
    shutil.copytree(Path(tiny_meld_cache["meld_root"]) / CLIP_DIRS["dev"], folder)
    monkeypatch.chdir(tmp_path)
    assert list_clips("clips/*.mp4") == sorted(Path("clips").glob("*.mp4"))
    assert list_clips("*/dia*.mp4") == sorted(Path("clips").glob("dia*.mp4"))

"""Outputs never write through a link or name they did not make. A symlink (or a hard link)
planted where a run writes a temporary, partial or lock file (``OUT.partial``, ``last.pt.tmp``,
``metrics.json.tmp``, ``.lock``, an embedding ``.npy.partial``) leaves its target byte for
byte: temporary files are new files of unique names, and the files that keep their name while
written are refused when they are links. Training never trains over another run's results,
and an output folder that cannot be written is one line before any work."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from pipeline import embed, infer, train
from pipeline.data.meld import CLIP_DIRS, CSV_NAMES
from pipeline.writing import UnsafeOutputError, open_own, write_text_atomic

THESIS = b"five years of work\n"


@pytest.fixture()
def thesis(tmp_path) -> Path:
    """The user's precious file, which planted links point at."""
    path = tmp_path / "elsewhere" / "thesis.tex"
    path.parent.mkdir()
    path.write_bytes(THESIS)
    return path


def test_an_atomic_write_replaces_a_planted_link_and_leaves_its_target(tmp_path, thesis):
    (tmp_path / "metrics.json").symlink_to(thesis)
    for name in ("metrics.json.tmp", ".metrics.json.tmp"):  # the temporary names of earlier versions
        (tmp_path / name).symlink_to(thesis)
    write_text_atomic(tmp_path / "metrics.json", "{}")
    assert thesis.read_bytes() == THESIS
    assert not (tmp_path / "metrics.json").is_symlink() and (tmp_path / "metrics.json").read_text() == "{}"


@pytest.mark.parametrize("planted", ["symlink", "hardlink", "fifo"])
def test_a_file_written_in_place_is_never_opened_through_a_link(tmp_path, thesis, planted):
    path = tmp_path / ".lock"
    {"symlink": lambda: path.symlink_to(thesis), "hardlink": lambda: os.link(thesis, path),
     "fifo": lambda: os.mkfifo(path)}[planted]()
    with pytest.raises(UnsafeOutputError, match=r"\.lock \(the lock\) .*refusing to write through it"):
        open_own(path, "the lock")
    assert thesis.read_bytes() == THESIS


@pytest.mark.parametrize("planted", ["symlink", "hardlink"])
def test_inference_refuses_an_out_partial_that_links_to_another_file(trained_run, tiny_meld_cache, tmp_path,
                                                                     thesis, caplog, planted):
    root = Path(tiny_meld_cache["meld_root"])
    out = tmp_path / "rows.jsonl"
    partial = tmp_path / "rows.jsonl.partial"
    partial.symlink_to(thesis) if planted == "symlink" else os.link(thesis, partial)
    with caplog.at_level(logging.ERROR):
        status = infer.main(["--checkpoint", str(trained_run["out"] / "best.pt"), "--clips",
                             str(root / CLIP_DIRS["dev"]), "--transcripts", str(root / CSV_NAMES["dev"]),
                             "--out", str(out), "--workers", "0", "--device", "cpu"])
    assert status == 1 and f"--out {out}: {partial}" in caplog.text and "refusing to write through it" in caplog.text
    assert thesis.read_bytes() == THESIS and not out.exists()


def test_training_writes_no_file_through_links_planted_in_its_folder(trained_run, tmp_path, thesis):
    out = tmp_path / "run"
    out.mkdir()
    names = ["last.pt.tmp", "best.pt.tmp", "metrics.json.tmp", "config.yaml.tmp", "curves.png.tmp",
             "report.txt", "curves.png", "confusion_matrix.png"]
    for name in names:
        (out / name).symlink_to(thesis)
    result = train.main([*trained_run["overrides"], f"output_dir={out}", "train.epochs=1"])
    assert result["best_epoch"] == 1
    assert thesis.read_bytes() == THESIS
    assert (out / "report.txt").is_file() and not (out / "report.txt").is_symlink()


def test_training_refuses_a_lock_that_is_a_link(trained_run, tmp_path, thesis, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").symlink_to(thesis)
    with pytest.raises(SystemExit):
        train.main([*trained_run["overrides"], f"output_dir={out}", "train.epochs=1"])
    err = capsys.readouterr().err
    assert f"{out / '.lock'} (the lock of a training run) is a symbolic link" in err and "Traceback" not in err
    assert thesis.read_bytes() == THESIS and not (out / "best.pt").exists()


def test_the_embedding_pass_replaces_partial_files_that_are_links(tiny_meld_cache, tmp_path, thesis):
    out = tmp_path / "emb" / "dev"
    out.mkdir(parents=True)
    for name in ("text.npy.partial", "text_mask.npy.partial"):
        (out / name).symlink_to(thesis)
    assert embed.main(["--config", "configs/default.yaml", "--cache", tiny_meld_cache["cache_dir"],
                       "--out", str(tmp_path / "emb"), "--splits", "dev", "--device", "cpu",
                       *tiny_meld_cache["overrides"], "model.modalities=[text]", "model.fusion.type=concat"]) == 0
    assert thesis.read_bytes() == THESIS and (out / "text.npy").is_file()


@pytest.mark.parametrize("left", [("best.pt", "metrics.json"), ("metrics.json",), ("last.pt", "best.pt")])
def test_training_never_trains_over_another_runs_results(trained_run, tmp_path, capsys, left):
    out = tmp_path / "run"
    out.mkdir()
    for name in left:
        shutil.copy(trained_run["out"] / name, out / name)
    before = {name: (out / name).read_bytes() for name in left}
    for extra in ([], ["train.resume=true"]) if "last.pt" not in left else ([],):
        with pytest.raises(SystemExit):
            train.main([*trained_run["overrides"], f"output_dir={out}", "train.epochs=1", *extra])
        err = capsys.readouterr().err
        assert f"output_dir {out} already holds a run ({', '.join(left)})" in err and "train.overwrite=true" in err
        assert {name: (out / name).read_bytes() for name in left} == before
    result = train.main([*trained_run["overrides"], f"output_dir={out}", "train.epochs=1", "train.overwrite=true"])
    assert result["best_epoch"] == 1 and (out / "best.pt").read_bytes() != before.get("best.pt")


@pytest.mark.parametrize("where", ["under_a_file", "read_only"])
def test_an_output_dir_that_cannot_be_written_is_one_line_before_the_model_is_built(
        trained_run, tmp_path, capsys, monkeypatch, where):
    from pipeline.train import session

    built = []
    monkeypatch.setattr(session, "build_model", lambda cfg: built.append(cfg) or pytest.fail("model built"))
    if where == "under_a_file":
        (tmp_path / "notes.txt").write_text("mine")
        out = tmp_path / "notes.txt" / "run"
    else:
        out = Path("/proc/self/run")  # a folder nobody can create files in, root included
    with pytest.raises(SystemExit):
        train.main([*trained_run["overrides"], f"output_dir={out}", "train.epochs=1"])
    err = capsys.readouterr().err
    assert f"output_dir {out}" in err and "Traceback" not in err and not built

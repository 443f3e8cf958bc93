"""scripts/download_meld.sh --from-archive with hostile and careless archives: it unpacks into a
folder of its own (members that leave it, links out of it and special files are refused,
naming the member), deletes only the nested tarballs it unpacked itself, and never replaces a
file of DEST with other content unless --overwrite is given."""
from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from pipeline.data import meld
from reliability_helpers import REPO, cli_env

SCRIPT = REPO / "scripts" / "download_meld.sh"


def add(archive: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE,
        link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data)
    archive.addfile(info, io.BytesIO(data) if data else None)


def nested_split(split: str, clip: bytes = b"clip") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as inner:
        add(inner, f"{meld.CLIP_DIRS[split]}/dia0_utt0.mp4", clip)
    return buffer.getvalue()


def release(path: Path, *extra: tuple, clip: bytes = b"clip", csv: bytes = b"Sr No.,Utterance\r\n") -> Path:
    """A miniature MELD.Raw.tar.gz (CSVs, one nested tarball per split) with ``extra`` members
    ``(name, data, kind, link)`` added first."""
    with tarfile.open(path, "w:gz") as archive:
        for member in extra:
            add(archive, *member)
        for split in meld.CLIP_DIRS:
            add(archive, f"MELD.Raw/{split}.tar.gz", nested_split(split, clip))
            add(archive, f"MELD.Raw/{meld.CSV_NAMES[split]}", csv)
    return path


def unpack(dest: Path, archive: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), str(dest), "--from-archive", str(archive), *extra],
                          capture_output=True, text=True, env=cli_env(), timeout=120)


@pytest.fixture()
def outside(tmp_path) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    return folder


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("planted", ["link_to_folder", "absolute_link", "dotdot_member", "absolute_member",
                                     "device", "hard_link_out"])
def test_an_archive_never_writes_outside_its_folder(tmp_path, outside, planted):
    members = {
        # the outer archive's link lets the nested train tarball write into the user's folder
        "link_to_folder": ("MELD.Raw/train_splits", b"", tarfile.SYMTYPE, str(outside)),
        "absolute_link": ("MELD.Raw/notes", b"", tarfile.SYMTYPE, str(outside / "notes.txt")),
        "dotdot_member": ("MELD.Raw/../../home/notes.txt", b"overwritten"),
        "absolute_member": (str(outside / "notes.txt"), b"overwritten"),
        "device": ("MELD.Raw/null", b"", tarfile.CHRTYPE),
        "hard_link_out": ("MELD.Raw/hard", b"", tarfile.LNKTYPE, str(outside / "notes.txt")),
    }
    before = files_under(outside)
    dest = tmp_path / "dest"
    result = unpack(dest, release(tmp_path / "MELD.Raw.tar.gz", members[planted]))
    assert files_under(outside) == before and sorted(outside.iterdir()) == [outside / "notes.txt"]
    if planted == "absolute_member":  # unpacked below DEST with the leading "/" removed, as tar does
        assert result.returncode == 0, result.stderr
        assert (dest / str(outside / "notes.txt").lstrip("/")).read_bytes() == b"overwritten"
        return
    assert result.returncode == 1, result.stderr
    assert "refusing to unpack it" in result.stderr and "Traceback" not in result.stderr
    assert [p.name for p in dest.iterdir()] == []  # its own folder is gone, nothing moved in


def test_only_the_nested_tarballs_it_unpacked_are_deleted(tmp_path):
    dest = tmp_path / "dest"
    backups = dest / "backups"
    backups.mkdir(parents=True)
    mine = nested_split("train", b"my backup")
    (backups / "train.tar.gz").write_bytes(mine)
    (dest / "MELD.Raw").mkdir()
    (dest / "MELD.Raw" / "old_run.tar.gz").write_bytes(mine)
    archive = release(tmp_path / "MELD.Raw.tar.gz")
    result = unpack(dest, archive)
    assert result.returncode == 0, result.stderr
    assert (backups / "train.tar.gz").read_bytes() == mine and not (backups / "train_splits").exists()
    assert (dest / "MELD.Raw" / "old_run.tar.gz").read_bytes() == mine
    assert (dest / "MELD.Raw" / "train_splits" / "dia0_utt0.mp4").read_bytes() == b"clip"
    assert not (dest / "MELD.Raw" / "train.tar.gz").exists() and archive.is_file()
    assert not [p for p in dest.iterdir() if p.name.startswith(".meld_unpack.")]


def test_an_existing_file_with_other_content_is_replaced_only_when_asked(tmp_path):
    dest = tmp_path / "dest"
    newer = dest / "MELD.Raw" / "train_sent_emo.csv"
    newer.parent.mkdir(parents=True)
    newer.write_bytes(b"my corrected labels")
    archive = release(tmp_path / "MELD.Raw.tar.gz")
    result = unpack(dest, archive)
    assert result.returncode == 1 and f"{newer}" in result.stderr and "--overwrite" in result.stderr
    assert newer.read_bytes() == b"my corrected labels"
    assert not (dest / "MELD.Raw" / "train_splits").exists()  # refused before anything moved in
    result = unpack(dest, archive, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert newer.read_bytes() == b"Sr No.,Utterance\r\n"


@pytest.mark.parametrize("planted", ["link_to_folder", "absolute_link", "dotdot_member", "device", "hard_link_out"])
def test_pythons_without_tarfiles_filter_refuse_the_same_members(tmp_path, outside, planted, monkeypatch):
    """Debian 12's python3 (3.11.2) has no extraction filters: unpack_meld's own checks refuse
    what the ``data`` filter refuses, and strip a leading "/" as it does."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("unpack_meld", REPO / "scripts" / "unpack_meld.py")
    unpack_meld = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(unpack_meld)
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    members = {
        "link_to_folder": ("MELD.Raw/train_splits", b"", tarfile.SYMTYPE, str(outside)),
        "absolute_link": ("MELD.Raw/notes", b"", tarfile.SYMTYPE, str(outside / "notes.txt")),
        "dotdot_member": ("MELD.Raw/../../home/notes.txt", b"overwritten"),
        "device": ("MELD.Raw/null", b"", tarfile.CHRTYPE),
        "hard_link_out": ("MELD.Raw/hard", b"", tarfile.LNKTYPE, str(outside / "notes.txt")),
    }
    before = files_under(outside)
    with pytest.raises(SystemExit):
        unpack_meld.extract(release(tmp_path / "MELD.Raw.tar.gz", members[planted]), tmp_path / "into", "archive")
    assert files_under(outside) == before
    absolute = release(tmp_path / "absolute.tar.gz", (str(outside / "notes.txt"), b"overwritten"))
    unpack_meld.extract(absolute, tmp_path / "stripped", "archive")
    assert (tmp_path / "stripped" / str(outside / "notes.txt").lstrip("/")).read_bytes() == b"overwritten"

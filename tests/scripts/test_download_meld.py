from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from pipeline.data import meld

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "download_meld.sh"


def tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture()
def release(tmp_path) -> Path:
    """A miniature MELD.Raw.tar.gz: CSVs plus one nested tarball per split."""
    nested = tmp_path / "nested"
    nested.mkdir()
    members = {}
    for split, folder in meld.CLIP_DIRS.items():
        inner = tar_gz(nested / f"{split}.tar.gz", {f"{folder}/dia0_utt0.mp4": b"clip", f"{folder}/dia0_utt1.mp4": b"x"})
        members[f"MELD.Raw/{split}.tar.gz"] = inner.read_bytes()
        members[f"MELD.Raw/{meld.CSV_NAMES[split]}"] = b"Sr No.,Utterance\r\n"
    return tar_gz(tmp_path / "MELD.Raw.tar.gz", members)


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env)


def test_unpacks_the_nested_layout(release, tmp_path):
    dest = tmp_path / "data dir"
    result = run(str(dest), "--from-archive", str(release))
    assert result.returncode == 0, result.stderr
    root = dest / "MELD.Raw"
    for split, folder in meld.CLIP_DIRS.items():
        assert meld.find_clip_dir(dest, split) == root / folder
        assert sorted(meld.clip_files(root / folder)) == ["dia0_utt0", "dia0_utt1"]
        assert meld.find_csv(dest, split) == root / meld.CSV_NAMES[split]
        assert not (root / f"{split}.tar.gz").exists()  # unpacked, then removed
    assert release.exists()  # the user's archive is left alone
    again = run(str(dest), "--from-archive", str(release))
    assert again.returncode == 0 and "already unpacked" in again.stderr


def test_refuses_a_truncated_or_foreign_file(release, tmp_path):
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(release.read_bytes()[: release.stat().st_size // 2])
    html = tmp_path / "error.tar.gz"
    html.write_text("<html>404</html>")
    for bad in (truncated, html):
        result = run(str(tmp_path / "dest"), "--from-archive", str(bad))
        assert result.returncode == 1 and "truncated or corrupt" in result.stderr
        assert not (tmp_path / "dest" / "MELD.Raw").exists()


def test_download_resumes_with_wget(release, tmp_path):
    """A stand-in wget records its arguments and 'downloads' the test archive."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "wget.log"
    (bin_dir / "wget").write_text(f'#!/bin/sh\necho "$@" > "{log}"\ncp "{release}" "$3/MELD.Raw.tar.gz"\n')
    (bin_dir / "wget").chmod(0o755)
    dest = tmp_path / "dest"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = run(str(dest), env=env)
    assert result.returncode == 0, result.stderr
    assert log.read_text().split() == ["-c", "-P", str(dest),
                                       "https://web.eecs.umich.edu/~mihalcea/downloads/MELD.Raw.tar.gz"]
    assert (dest / "MELD.Raw" / "train_splits" / "dia0_utt0.mp4").read_bytes() == b"clip"


def test_usage():
    result = run()
    assert result.returncode == 2 and "usage: scripts/download_meld.sh DEST" in result.stderr

"""Unpack MELD.Raw.tar.gz and the split tarballs nested in it into DEST, touching nothing else.

    python scripts/unpack_meld.py ARCHIVE DEST [--overwrite]

Called by scripts/download_meld.sh. Everything is unpacked first into a new folder of this
script's own inside DEST (``.meld_unpack.*``), with tarfile's ``data`` filter: a member with
an absolute path or ``..``, a link pointing outside the folder, or a device or pipe is
refused, naming the member. The nested tarballs unpacked there (the script's own copies) are
deleted once unpacked; nothing outside that folder is deleted or unpacked. Its files are then
moved into DEST: a file that already exists there with other content is never replaced unless
``--overwrite`` is given (identical files are left as they are). Standard library only, so it
runs before the project is installed.
"""
from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

NESTED_DEPTH = 3  # the release nests one tarball per split, one folder down


def fail(message: str) -> None:
    print(f"unpack_meld: {message}", file=sys.stderr)
    raise SystemExit(1)


class RefusedMember(Exception):
    """A member the ``data`` filter would refuse (its own FilterError where tarfile has one)."""


# tarfile's extraction filters came with Python 3.12 and 3.11.4; Debian 12's python3 is 3.11.2.
REFUSED = (RefusedMember, tarfile.FilterError) if hasattr(tarfile, "FilterError") else (RefusedMember,)


def inside(root: str, path: str) -> bool:
    return os.path.commonpath([root, os.path.realpath(path)]) == root


def checked_members(tar: tarfile.TarFile, into: Path) -> list[tarfile.TarInfo]:
    """The members, each checked as the ``data`` filter checks it, for Pythons without the
    filter: leading slashes stripped, no name or link leading out of ``into``, no device or fifo;
    no set-uid, set-gid or sticky bit and no write bit for group or others."""
    root = os.path.realpath(into)
    members = tar.getmembers()
    for member in members:
        member.name = member.name.lstrip("/" + os.sep)  # unpacked below the folder, as tar does
        target = os.path.join(root, member.name)
        if not inside(root, target):
            raise RefusedMember(f"member {member.name!r} would be written outside the folder")
        if member.isdev():
            raise RefusedMember(f"member {member.name!r} is a device or fifo")
        if member.issym() and (os.path.isabs(member.linkname)
                               or not inside(root, os.path.join(os.path.dirname(target), member.linkname))):
            raise RefusedMember(f"member {member.name!r} links outside the folder ({member.linkname!r})")
        if member.islnk() and (os.path.isabs(member.linkname) or not inside(root, os.path.join(root, member.linkname))):
            raise RefusedMember(f"member {member.name!r} is a hard link outside the folder ({member.linkname!r})")
        member.mode &= 0o755
    return members


def extract(archive: Path, into: Path, shown: str) -> None:
    """Unpack ``archive`` into ``into`` with the ``data`` filter (or the same checks where
    this Python lacks it); a refused member is one line."""
    print(f"unpacking {shown}", file=sys.stderr)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(into, filter="data")
            else:
                tar.extractall(into, members=checked_members(tar, into))
    except REFUSED as err:  # absolute paths, "..", links out of the folder, devices
        fail(f"{shown}: refusing to unpack it: {err}")
    except (tarfile.TarError, EOFError, OSError) as err:
        fail(f"{shown}: cannot be unpacked ({type(err).__name__}: {err})")


def nested_tarballs(root: Path) -> list[Path]:
    """Regular files ``*.tar.gz`` up to NESTED_DEPTH folders below ``root``, never through a link."""
    found = []
    for folder, dirs, files in os.walk(root):  # os.walk does not follow links to folders
        depth = len(Path(folder).relative_to(root).parts)
        if depth >= NESTED_DEPTH:
            dirs.clear()
        found += [Path(folder) / name for name in files
                  if name.endswith(".tar.gz") and not (Path(folder) / name).is_symlink()]
    return sorted(found)


def conflicts(staged: Path, dest: Path) -> list[str]:
    """Paths under ``dest`` that moving ``staged`` in would replace with other content."""
    clashes = []
    for folder, dirs, files in os.walk(staged):
        relative = Path(folder).relative_to(staged)
        for name in [*dirs, *files]:
            source, target = Path(folder) / name, dest / relative / name
            if not os.path.lexists(target):
                continue
            if target.is_symlink() or source.is_symlink():
                clashes.append(str(target))
            elif source.is_dir() != target.is_dir():
                clashes.append(str(target))
            elif source.is_file() and not filecmp.cmp(source, target, shallow=False):
                clashes.append(str(target))
        dirs[:] = [d for d in dirs if not (dest / relative / d).is_symlink()]
    return clashes


def move_in(staged: Path, dest: Path) -> None:
    """Move every file of ``staged`` to the same place under ``dest`` (folders merged)."""
    for folder, dirs, files in os.walk(staged):
        relative = Path(folder).relative_to(staged)
        here = dest / relative
        if relative.parts and (here.is_symlink() or here.is_file()):
            here.unlink()  # --overwrite: a link or file where the release has a folder
        (dest / relative).mkdir(exist_ok=True)
        for name in files:
            target = dest / relative / name
            if target.is_symlink():
                target.unlink()  # --overwrite: the link goes, never what it points to
            os.replace(Path(folder) / name, target)
        for name in list(dirs):
            if (Path(folder) / name).is_symlink():  # a link inside the release (kept inside it by the filter)
                target = dest / relative / name
                if os.path.lexists(target):
                    target.unlink() if target.is_symlink() or target.is_file() else shutil.rmtree(target)
                os.replace(Path(folder) / name, target)
                dirs.remove(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archive", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--overwrite", action="store_true", help="replace files in DEST that differ")
    args = parser.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=args.dest, prefix=".meld_unpack."))
    try:
        extract(args.archive, staging, str(args.archive))
        for nested in nested_tarballs(staging):
            extract(nested, nested.parent, str(args.dest / nested.relative_to(staging)))
            nested.unlink()  # this script's own copy, unpacked; keeping it would double the disk use
        clashes = conflicts(staging, args.dest)
        if clashes and not args.overwrite:
            more = f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
            fail(f"{', '.join(clashes[:3])}{more} already exist(s) in {args.dest} with other content; "
                 "nothing was replaced: move them away, or run again with --overwrite")
        move_in(staging, args.dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the script's own folder (rmtree never follows links)
    return 0


if __name__ == "__main__":
    sys.exit(main())

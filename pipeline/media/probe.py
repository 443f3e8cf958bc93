"""Probing a clip: what streams it holds, how long it is and how large, without decoding it.

``probe(path)`` returns a :class:`ClipInfo` or raises :class:`ClipError` with a short reason.
Starting ``ffprobe`` costs about a third of decoding a 3 s clip, so MP4/MOV headers are read
in Python (a few boxes of the ``moov`` atom); anything else goes to ffprobe. Only real media
containers of the allowed formats are opened (SAFE_INPUT), never a playlist or a file list.
"""
from __future__ import annotations

import json
import math
import os
import re
import stat
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# The only demuxers ffprobe and ffmpeg may use on a clip: real media containers. Playlists
# (hls), file lists (concat), image sequences (image2) and the like would make ffmpeg read
# other files than the one given, so they are refused before ffmpeg reads anything else; and
# inputs may use the file protocol alone.
ALLOWED_FORMATS = ("mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts,flv,ogg,wav,mp3,aac,flac,asf,mpeg")
SAFE_INPUT = {"format_whitelist": ALLOWED_FORMATS, "protocol_whitelist": "file"}
SAFE_INPUT_ARGS = [arg for key, value in SAFE_INPUT.items() for arg in (f"-{key}", value)]
NOT_ALLOWED = re.compile(r"\[(\w+) @ [^]]*\] Format not on whitelist")
PROBE_SECONDS = 60.0  # ffprobe reads headers: a probe this long is a hung or hostile file
# Frames above this many pixels (4096 x 4096; 4K video is half of it) are refused: an 8192 x
# 8192 clip of 0.6 MB took 28 s to decode, for 224-pixel crops.
MAX_FRAME_PIXELS = 4096 * 4096


class ClipError(Exception):
    """A clip that cannot be used, with a short human reason ("missing file", "empty file",
    "no audio or video stream", "unreadable: <ffmpeg's message>")."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(str(path), reason)
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class ClipInfo:
    """What a clip holds. ``width``/``height`` are as stored (before any rotation tag)."""

    duration: float  # seconds, of the video stream when there is one
    has_audio: bool
    has_video: bool
    width: int = 0
    height: int = 0
    fps: float = 0.0
    audio_stream: int = 0  # which audio stream to decode (``a:N``): the one marked default, else the first


def probe(path: str | os.PathLike) -> ClipInfo:
    """Duration, streams present, stored size and frame rate of a clip; ClipError if unusable."""
    path = check_file(path)
    info = probe_mp4(path)
    if info is None:
        info = probe_ffprobe(path)
    if not (info.has_audio or info.has_video):
        raise ClipError(path, "no audio or video stream")
    return info


def check_file(path: str | os.PathLike) -> Path:
    """The absolute path of an existing, non-empty file (absolute, so that a name starting
    with ``-`` or holding ``proto:`` is never read by ffmpeg as an option or a protocol)."""
    path = Path(path).absolute()
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ClipError(path, "missing file") from None
    except OSError as err:  # a name too long for the file system, a loop of links, no permission
        raise ClipError(path, f"missing file ({err.strerror or err})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ClipError(path, "not a file")
    if info.st_size == 0:
        raise ClipError(path, "empty file")
    return path


def probe_ffprobe(path: Path) -> ClipInfo:
    """ClipInfo from ``ffprobe`` (any container ffmpeg reads)."""
    command = ["ffprobe", "-show_format", "-show_streams", "-of", "json", "-v", "error", *SAFE_INPUT_ARGS, str(path)]
    try:
        result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=PROBE_SECONDS)
    except subprocess.TimeoutExpired:
        raise ClipError(path, f"timed out: ffprobe ran over {PROBE_SECONDS:.0f} s") from None
    if result.returncode != 0:
        refused = NOT_ALLOWED.search(result.stderr.decode("utf-8", "replace"))
        if refused:
            raise ClipError(path, f"not a media file of an allowed format (ffmpeg detects {refused.group(1)}); "
                                  "playlists, file lists and image sequences are refused, as they name other files")
        raise ClipError(path, "unreadable: " + last_line(result.stderr, path))
    try:
        data = json.loads(result.stdout.decode("utf-8", "replace"))
    except ValueError:
        raise ClipError(path, "unreadable: ffprobe's report is not JSON") from None
    streams = data.get("streams", [])
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    video = [s for s in streams if s.get("codec_type") == "video"
             and not s.get("disposition", {}).get("attached_pic")]
    defaults = [i for i, stream in enumerate(audio) if stream.get("disposition", {}).get("default")]
    duration = as_float(video[0].get("duration")) if video else 0.0
    duration = duration or as_float(data.get("format", {}).get("duration"))
    width = height = 0
    fps = 0.0
    if video:
        width, height = int(video[0].get("width", 0)), int(video[0].get("height", 0))
        num, _, den = str(video[0].get("avg_frame_rate", "0/0")).partition("/")
        fps = as_float(num) / as_float(den) if as_float(den) else 0.0
    return ClipInfo(duration, bool(audio), bool(video), width, height, fps, defaults[0] if defaults else 0)


def as_float(value: object) -> float:
    """``value`` as a finite float, or 0.0 (ffprobe writes "N/A" for unknown values)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def probe_mp4(path: Path) -> ClipInfo | None:
    """ClipInfo read from an MP4/MOV ``moov`` box, or None when the file is not a plain
    MP4 that this reader understands (the caller then asks ffprobe)."""
    try:
        with open(path, "rb") as file:
            moov = find_box(file, b"moov", os.fstat(file.fileno()).st_size)
            if moov is None:
                return None
            mvhd = child(moov, b"mvhd")
            movie_timescale = struct.unpack_from(">I", mvhd, 20 if mvhd[0] == 1 else 12)[0]
            tracks = [read_track(trak, movie_timescale) for kind, trak in iter_boxes(moov) if kind == b"trak"]
    except (OSError, struct.error, ValueError):
        return None
    video = [t for t in tracks if t["handler"] == b"vide" and t["duration"] > 0]
    audio = [t for t in tracks if t["handler"] == b"soun" and t["duration"] > 0]
    if not (video or audio) or len(audio) > 1:
        return None  # several audio tracks: ffprobe says which one is the default
    main = (video or audio)[0]
    fps = main["samples"] / main["media_duration"] if video and main["media_duration"] else 0.0
    return ClipInfo(main["duration"], bool(audio), bool(video), main["width"], main["height"], fps)


def find_box(file: IO[bytes], kind: bytes, file_size: int) -> bytes | None:
    """The payload of the top-level box ``kind``, seeking over the others (``mdat`` is
    most of the file and is never read)."""
    offset = 0
    while offset + 8 <= file_size:
        file.seek(offset)
        size, box = struct.unpack(">I4s", file.read(8))
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", file.read(8))[0], 16
        elif size == 0:
            size = file_size - offset
        if size < header or offset + size > file_size:
            return None  # truncated or not an MP4
        if box == kind:
            if size > 256 << 20:
                return None
            return file.read(size - header)
        offset += size
    return None


def iter_boxes(payload: bytes) -> list[tuple[bytes, bytes]]:
    """The (type, payload) children of a container box."""
    boxes, offset = [], 0
    while offset + 8 <= len(payload):
        size, kind = struct.unpack_from(">I4s", payload, offset)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", payload, offset + 8)[0], 16
        elif size == 0:
            size = len(payload) - offset
        if size < header or offset + size > len(payload):
            raise ValueError("bad box size")
        boxes.append((kind, payload[offset + header: offset + size]))
        offset += size
    return boxes


def child(payload: bytes, *path: bytes) -> bytes:
    """The payload of the first descendant box along ``path`` (ValueError if absent)."""
    for kind in path:
        payload = next((body for name, body in iter_boxes(payload) if name == kind), None)
        if payload is None:
            raise ValueError(f"no {kind!r} box")
    return payload


def read_track(trak: bytes, movie_timescale: int) -> dict:
    """Handler type, duration (s) as presented, the media's own duration (s), sample count
    and stored size of one ``trak`` box.

    The presented duration is the edit list's (``edts/elst``) where the track has one: a cut
    stream-copied out of a long-GOP clip carries the frames back to its keyframe and an edit
    list that starts the presentation later, so the media lasts longer than what plays."""
    mdhd = child(trak, b"mdia", b"mdhd")
    if mdhd[0] == 1:
        timescale, duration = struct.unpack_from(">IQ", mdhd, 20)
    else:
        timescale, duration = struct.unpack_from(">II", mdhd, 12)
    media = duration / timescale if timescale else 0.0
    presented = edited_duration(trak, movie_timescale)
    handler = child(trak, b"mdia", b"hdlr")[8:12]
    stsz = child(trak, b"mdia", b"minf", b"stbl", b"stsz")
    samples = struct.unpack_from(">I", stsz, 8)[0]
    tkhd = child(trak, b"tkhd")
    width, height = struct.unpack_from(">II", tkhd, len(tkhd) - 8)
    return {"handler": handler, "duration": media if presented is None else min(presented, media),
            "media_duration": media, "samples": samples, "width": width >> 16, "height": height >> 16}


def edited_duration(trak: bytes, movie_timescale: int) -> float | None:
    """Seconds the edit list of ``trak`` presents of its media (empty edits, which only delay
    the start, left out); None when it has no edit list."""
    try:
        elst = child(trak, b"edts", b"elst")
    except ValueError:
        return None
    if not movie_timescale:
        return None
    version, count = elst[0], struct.unpack_from(">I", elst, 4)[0]
    entry, layout = (20, ">Qq") if version == 1 else (12, ">Ii")
    total = 0
    for index in range(min(count, (len(elst) - 8) // entry)):
        segment, media_time = struct.unpack_from(layout, elst, 8 + index * entry)
        if media_time != -1:
            total += segment
    return total / movie_timescale if total else None


def last_line(stderr: bytes | str | None, path: Path) -> str:
    """The last non-empty line of ffmpeg's stderr without the "<path>: " it starts with
    (so that equal faults read the same in the summary), other mentions of the path
    shortened to the file name."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else (stderr or "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[-1].removeprefix(f"{path}: ").replace(str(path), path.name)

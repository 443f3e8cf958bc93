"""Frames are sampled over what the clip really holds, not over the duration its header
claims: a header ten times too long (the seek path would find one frame) or ten times too
short (the frame rate filter would emit ten times the frames) is flagged and the frames
spread over the real span; a live WebM without any duration in its header is decoded.

The clip's brightness rises with time (40 levels per second), so a frame's mean says when
it was taken."""
from __future__ import annotations

import logging
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import AudioFeatures, VideoFeatures
from pipeline.media.decode import load_clip, probe

SECONDS = 6.0
RAMP = "nullsrc=s=64x36:r=24,geq=lum='min(255,T*40)':cb=128:cr=128"


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def with_header_duration(clip: Path, factor: float, out: Path) -> Path:
    """A copy of ``clip`` whose tracks' mdhd boxes claim ``factor`` times their duration, and
    so do their edit lists when ``factor`` > 1 (an edit list shorter than the media is not a
    lie: ffmpeg plays only what it lists)."""
    data = bytearray(clip.read_bytes())
    at = data.find(b"mdhd")
    while at >= 0:
        assert data[at + 4] == 0  # version 0: 32-bit times
        duration = struct.unpack_from(">I", data, at + 20)[0]
        struct.pack_into(">I", data, at + 20, int(duration * factor))
        at = data.find(b"mdhd", at + 4)
    at = data.find(b"elst") if factor > 1 else -1
    while at >= 0:
        assert data[at + 4] == 0
        for entry in range(struct.unpack_from(">I", data, at + 8)[0]):
            segment = struct.unpack_from(">I", data, at + 12 + 12 * entry)[0]
            struct.pack_into(">I", data, at + 12 + 12 * entry, int(segment * factor))
        at = data.find(b"elst", at + 4)
    out.write_bytes(bytes(data))
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("durations")
    ramp = folder / "ramp.mp4"
    ffmpeg("-f", "lavfi", "-i", RAMP, "-f", "lavfi", "-i", "sine", "-t", str(SECONDS), "-c:v", "libx264",
           "-pix_fmt", "yuv420p", "-c:a", "aac", str(ramp))
    live = folder / "live.webm"
    with open(live, "wb") as file:  # written to a pipe, as a live stream is: no duration in the header
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(ramp), "-c:v", "libvpx", "-b:v",
                        "200k", "-c:a", "libopus", "-f", "webm", "pipe:"], stdout=file, check=True)
    return {"honest": ramp, "ten_times_long": with_header_duration(ramp, 10, folder / "long.mp4"),
            "ten_times_short": with_header_duration(ramp, 0.1, folder / "short.mp4"), "live": live}


def frame_times(clip: Path) -> np.ndarray:
    loaded = load_clip(clip, AudioFeatures(max_seconds=2.0), VideoFeatures(num_frames=8, size=32))
    return loaded.frames.reshape(8, -1).mean(axis=1) / 40


@pytest.mark.parametrize("kind, header", [("ten_times_long", 60.0), ("ten_times_short", 0.6), ("live", 0.0)])
def test_frames_are_sampled_over_the_real_span_and_a_lying_header_is_flagged(clips, caplog, kind, header):
    assert probe(clips[kind]).duration == pytest.approx(header, abs=0.01)
    reference = frame_times(clips["honest"])
    with caplog.at_level(logging.WARNING):
        times = frame_times(clips[kind])
    assert np.all(np.diff(times) > 0.4), times  # 8 distinct frames, in order, spread out
    assert times[0] < 1.0 and times[-1] > SECONDS - 1.5, times  # over the whole 6 s
    if kind != "live":
        assert np.allclose(times, reference, atol=0.1)  # as the honest header gives
        assert f"the header says {header:.2f} s but the video packets span {SECONDS:.2f} s" in caplog.text

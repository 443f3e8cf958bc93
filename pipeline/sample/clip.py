"""One sample clip written by one ffmpeg call: frames piped in as raw yuv420p on one pipe,
the audio as raw PCM on a second, encoded as the real release is (H.264, AAC)."""
from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.labels import EMOTIONS
from pipeline.sample.render import EMOTION_STYLES, render_size, synth_audio, synth_frames, to_yuv420p

CHANNEL_LAYOUTS: dict[int, str] = {1: "mono", 2: "stereo", 6: "5.1"}


AUDIO_BITRATE = "96k"


def make_clip(path: str | Path, emotion: str, seed: int, duration: float, width: int = 1280,
              height: int = 720, fps: float = 24, channels: int = 2, sample_rate: int = 48000,
              audio: bool = True, video: bool = True, audio_style: str = "",
              video_style: str = "") -> Path:
    """Render one MELD-like clip with a single ffmpeg call and return its path.

    Video: H.264 yuv420p ``width``x``height`` at ``fps`` (e.g. 24, 30 or 24000/1001), drawn
    at low resolution in numpy and scaled up by ffmpeg. Audio: AAC at ``sample_rate`` with
    ``channels`` (1, 2 or 6). ``audio=False`` / ``video=False`` leave that stream out (the
    odd clips the preprocessing tests need). ``audio_style`` / ``video_style`` name the
    emotion the voice / face shows ("" = ``emotion``). The output is byte-identical for
    identical arguments, and is written to a temporary name first so a killed run leaves
    no half clip.
    """
    for name, value in (("emotion", emotion), ("audio_style", audio_style or emotion),
                        ("video_style", video_style or emotion)):
        if value not in EMOTION_STYLES:
            raise ValueError(f"{name}: unknown {value!r}, expected one of {EMOTIONS}")
    if not (audio or video):
        raise ValueError("audio, video: a clip needs at least one stream")
    if channels not in CHANNEL_LAYOUTS:
        raise ValueError(f"channels: must be one of {sorted(CHANNEL_LAYOUTS)}, got {channels}")
    if duration <= 0 or fps <= 0 or sample_rate <= 0:
        raise ValueError(f"duration, fps, sample_rate: must be > 0, got {duration}, {fps}, "
                         f"{sample_rate}")
    if width < 2 or height < 2 or width % 2 or height % 2:
        raise ValueError(f"width, height: must be even and >= 2 (yuv420p), got {width}x{height}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    # Both streams draw from their own generators, so a clip without audio shows the same
    # frames as its audio-bearing twin.
    video_rng, audio_rng = rng.spawn(2)
    rate = Fraction(fps).limit_denominator(1001)

    command = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
    stdin_payload: bytes | None = None
    pipes: list[tuple[int, int, bytes]] = []  # (read fd for ffmpeg, write fd for us, payload)
    if video:
        frame_w, frame_h = render_size(width, height)
        n_frames = max(1, int(round(duration * rate)))
        indices, palette = synth_frames(video_style or emotion, video_rng, n_frames, float(rate),
                                        frame_w, frame_h)
        command += ["-f", "rawvideo", "-pix_fmt", "yuv420p", "-video_size", f"{frame_w}x{frame_h}",
                    "-framerate", str(rate), "-i", "pipe:0"]
        stdin_payload = to_yuv420p(indices, palette)
    if audio:
        pcm = synth_audio(audio_style or emotion, audio_rng, duration, sample_rate, channels)
        read_fd, write_fd = os.pipe()
        command += ["-f", "s16le", "-ar", str(sample_rate), "-ch_layout", CHANNEL_LAYOUTS[channels],
                    "-i", f"pipe:{read_fd}"]
        pipes.append((read_fd, write_fd, pcm.tobytes()))
    if video:
        command += ["-map", "0:v", "-vf", f"scale={width}:{height}:flags=fast_bilinear,setsar=1",
                    "-c:v", "libx264", "-preset", "ultrafast", "-crf", "28", "-pix_fmt", "yuv420p",
                    "-threads", "1", "-flags:v", "+bitexact"]
    if audio:
        command += ["-map", f"{1 if video else 0}:a", "-c:a", "aac", "-aac_coder", "fast",
                    "-b:a", AUDIO_BITRATE, "-flags:a", "+bitexact"]
    # a new file of its own (a unique name, created exclusively): ffmpeg never writes through a planted link
    descriptor, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    tmp_path = Path(tmp_name)
    command += ["-filter_threads", "1", "-fflags", "+bitexact", "-map_metadata", "-1",
                "-f", "mp4", str(tmp_path)]
    try:
        run_ffmpeg(command, stdin_payload, pipes)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    os.replace(tmp_path, path)
    return path


def run_ffmpeg(command: list[str], stdin_payload: bytes | None,
               pipes: Sequence[tuple[int, int, bytes]]) -> None:
    """Run ffmpeg, feeding ``stdin_payload`` to its stdin and each payload of ``pipes`` to its
    extra pipe, all concurrently: ffmpeg reads its inputs interleaved, so writing one
    after the other would deadlock once a pipe buffer fills. Raises RuntimeError with
    ffmpeg's message when it fails."""
    try:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL if stdin_payload is None else subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            pass_fds=[read_fd for read_fd, _, _ in pipes])
    except BaseException:
        for read_fd, write_fd, _ in pipes:
            os.close(read_fd)
            os.close(write_fd)
        raise
    streams = [open(write_fd, "wb") for _, write_fd, _ in pipes]
    for read_fd, _, _ in pipes:
        os.close(read_fd)  # ffmpeg has its copy; if it dies, our writes then fail, not hang
    feeds = [(stream, payload) for stream, (_, _, payload) in zip(streams, pipes)]
    if stdin_payload is not None:
        feeds.append((process.stdin, stdin_payload))
    writers = [threading.Thread(target=write_all, args=feed, daemon=True) for feed in feeds]
    for writer in writers:
        writer.start()
    stderr = process.stderr.read()
    for writer in writers:
        writer.join()
    if process.wait() != 0:
        message = stderr.decode(errors="replace").strip()[-2000:]
        raise RuntimeError(f"ffmpeg failed ({process.returncode}): {message}\n{' '.join(command)}")


def write_all(stream: Any, payload: bytes) -> None:
    """Write ``payload`` to ``stream`` and close it; a pipe ffmpeg closed early is not an
    error here (its exit status reports the failure)."""
    try:
        stream.write(payload)
        stream.close()
    except (BrokenPipeError, ValueError):
        pass

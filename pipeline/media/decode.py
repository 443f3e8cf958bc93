"""Reading clips: probe a file, then decode audio and sampled frames with one ffmpeg process.

``load_clip(path, audio_cfg, video_cfg)`` returns the clip's 16 kHz mono waveform and its
``num_frames`` frames sampled uniformly over the duration, resized (short side = ``size``)
and centre-cropped (or face-cropped), or raises :class:`ClipError` with a short reason.

Why it is shaped this way (see DESIGN "Performance notes"):

- One ffmpeg process per clip writes both outputs, audio as f32le to an extra pipe and
  frames to stdout; both pipes are drained by threads so neither can fill up and stall
  ffmpeg. The ``fps=N/duration`` filter runs before ``scale``, so only the kept frames
  are scaled, and the whole decode costs about the same as ``ffmpeg -i clip -f null -``.
- Clips longer than ``LONG_CLIP_SECONDS`` are not decoded in full: the command opens the
  file once per sampled time with ``-ss`` before ``-i`` (a keyframe seek), keeps one frame
  of each and concatenates them; audio comes from one more input read for ``max_seconds``.
- Probing (what the clip holds, how long it is) lives in ``pipeline.media.probe``.
- Frames leave ffmpeg as PPM images (rgb24 behind a tiny header), so their size is read
  from the stream itself and rotated or portrait clips need no special casing.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from pipeline.config import AudioFeatures, VideoFeatures
from pipeline.media.probe import (MAX_FRAME_PIXELS, SAFE_INPUT_ARGS, ClipError, ClipInfo, as_float, check_file,
                                  last_line, probe)

logger = logging.getLogger(__name__)

LONG_CLIP_SECONDS = 20.0  # above this, seek to each sampled frame instead of decoding it all
DECODE_SECONDS = 300.0  # one clip's ffmpeg run beyond this is killed (a MELD clip takes well under 1 s)
FFMPEG_GLOBAL_ARGS = ["-nostdin", "-hide_banner", "-loglevel", "error", "-filter_complex_threads", "1"]
# A header's duration is trusted only as far as the frames it yields agree with it: when the
# count is off and the video packets span a duration off by more than this (seconds, or
# share of the header's), the frames are sampled again over the span the packets cover.
DURATION_TOLERANCE = (0.5, 0.1)
FACE_CONTEXT = 2.0  # side of a face crop, in face widths: the whole head and a little around it
PPM_HEADER = re.compile(rb"P6\s+(\d+)\s+(\d+)\s+255\s")


@dataclass(frozen=True)
class Clip:
    """Decoded content; ``None`` for a stream the clip lacks or that was not asked for."""

    info: ClipInfo
    waveform: np.ndarray | None  # float32[S], mono at the requested sample rate
    frames: np.ndarray | None  # uint8[N, size, size, 3], RGB
    face_frames: int | None = None  # with face_crop on: how many of the frames showed a face
    decode_errors: str | None = None  # what ffmpeg reported about a clip still usable (damaged data)


# --------------------------------------------------------------------------- decoding
def load_clip(path: str | os.PathLike, audio: AudioFeatures | None,
              video: VideoFeatures | None) -> Clip:
    """Probe and decode ``path`` in one ffmpeg process.

    ``audio`` / ``video`` None: that stream is not decoded. Returns waveform float32[S]
    (S <= max_seconds * sample_rate) and frames uint8[num_frames, size, size, 3].
    Raises ClipError when the file is missing, empty, unreadable, truncated, or has
    neither stream.
    """
    path = check_file(path)
    info = probe(path)
    want_audio = audio is not None and info.has_audio
    want_video = video is not None and info.has_video
    if want_video and info.width * info.height > MAX_FRAME_PIXELS:
        raise ClipError(path, f"frames of {info.width}x{info.height} pixels, over the bound of {MAX_FRAME_PIXELS:,} "
                              "pixels a frame (scale the clip down first)")
    if not (want_audio or want_video):
        return Clip(info, None, None)
    duration = info.duration
    if want_video and duration <= 0:  # live WebM/MKV, raw streams: what the packets span
        duration = packet_span(path)
        if duration <= 0:
            raise ClipError(path, "unreadable: unknown duration")
    outputs = []
    faces = want_video and video.face_crop != "none"
    scale = video.size * 2 if faces else video.size if want_video else 0  # room to move the crop
    if want_video:
        outputs.append(video_output(path, duration, video.num_frames, scale, crop=not faces))
    audio_pipe = os.pipe() if want_audio else None  # (read end for us, write end for ffmpeg)
    if audio_pipe is not None:
        outputs.append(audio_output(path, audio, duration, f"pipe:{audio_pipe[1]}", info.audio_stream))
    command = ["ffmpeg", *FFMPEG_GLOBAL_ARGS, *ffmpeg_args(*outputs)]
    stdout, audio_bytes, stderr, returncode = run_ffmpeg(command, audio_pipe, path)
    if returncode != 0:
        raise ClipError(path, "unreadable: " + last_line(stderr, path))
    # ffmpeg exits 0 on a file whose data ends early (it reports errors and stops), so a
    # clip is truncated when it both reports errors and yields much less than its header
    # promises; errors alone (a damaged frame or two) do not make a clip unusable.
    errors = last_line(stderr, path)
    waveform = frames = face_frames = None
    if want_audio:
        waveform = np.frombuffer(audio_bytes, dtype="<f4")[: len(audio_bytes) // 4].astype(np.float32)
        if waveform.size == 0:
            raise ClipError(path, "unreadable: " + (errors or "no audio decoded"))
        expected = min(duration, audio.max_seconds) * audio.sample_rate
        if errors and waveform.size < 0.5 * expected:
            raise ClipError(path, "truncated: " + errors)
        if errors and waveform.size < 0.95 * expected:
            errors += f" (audio: {waveform.size / audio.sample_rate:.2f} s decoded of {expected / audio.sample_rate:.2f} s)"
    if want_video:
        decoded = parse_ppm_stream(stdout)
        if not errors and not video.num_frames - 1 <= len(decoded) <= video.num_frames + 1:
            decoded = resample_if_misled(path, decoded, duration, video.num_frames, scale, not faces)
        if len(decoded) == 0:
            raise ClipError(path, "unreadable: " + (errors or "no frames decoded"))
        if errors and len(decoded) < video.num_frames - 1:
            raise ClipError(path, "truncated: " + errors)
        frames = pick_uniform(decoded, video.num_frames)
        if faces:
            frames, face_frames = face_crop(frames, video.size, video.face_crop)
    if errors:
        logger.warning("%s: decoded with errors, kept: %s", path.name, errors)
    return Clip(info, waveform, frames, face_frames, errors or None)


def packet_span(path: Path) -> float:
    """Seconds covered by the video packets of ``path`` (demuxed by ffprobe, not decoded):
    what the header's duration should have said; 0.0 when unknown."""
    command = ["ffprobe", "-v", "error", *SAFE_INPUT_ARGS, "-select_streams", "v:0",
               "-show_entries", "packet=pts_time,duration_time", "-of", "csv=p=0", str(path)]
    try:
        result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return 0.0
    starts, ends = [], []
    for line in result.stdout.decode("ascii", "replace").splitlines():
        pts, _, length = line.partition(",")
        try:
            start = float(pts)
        except ValueError:  # N/A
            continue
        starts.append(start)
        ends.append(start + as_float(length))
    return max(ends) - min(starts) if starts else 0.0


def resample_if_misled(path: Path, decoded: np.ndarray, duration: float, num_frames: int, size: int,
                       crop: bool) -> np.ndarray:
    """The frames again, sampled over the span the video packets cover, when the header's
    ``duration`` (which set the sampling rate) disagrees with it beyond DURATION_TOLERANCE:
    stream-copied cuts, edit lists and rewritten headers. The clip is flagged in the log."""
    span = packet_span(path)
    seconds, share = DURATION_TOLERANCE
    if span <= 0 or abs(span - duration) <= max(seconds, share * duration):
        return decoded
    logger.warning("%s: the header says %.2f s but the video packets span %.2f s (%d frames where %d were "
                   "asked for); sampling the frames over the %.2f s decoded", path.name, duration, span,
                   len(decoded), num_frames, span)
    command = ["ffmpeg", *FFMPEG_GLOBAL_ARGS, *ffmpeg_args(video_output(path, span, num_frames, size, crop))]
    stdout, _, stderr, returncode = run_ffmpeg(command, None, path)
    return parse_ppm_stream(stdout) if returncode == 0 else decoded


# --------------------------------------------------------------------------- ffmpeg arguments
Source = tuple[int, str] | int  # (input K of the output, stream selector such as "v:0"), or an earlier filter


@dataclass(frozen=True)
class Output:
    """One output of an ffmpeg command: its inputs (each the arguments up to and including
    ``-i path``), the filters from them to the output in order (each ``(sources, filter)``, the
    last one's result is written) and the options that write it (format, codec, ..., target).
    ``ffmpeg_args`` lays out one or more of them as one command."""

    inputs: tuple[tuple[str, ...], ...]
    filters: tuple[tuple[tuple[Source, ...], str], ...]
    options: tuple[str, ...]

    def get_args(self) -> list[str]:
        return ffmpeg_args(self)


def ffmpeg_args(*outputs: Output) -> list[str]:
    """The arguments (after the global ones) of one ffmpeg command writing all ``outputs``:
    the inputs (identical ones opened once), one ``-filter_complex`` graph whose links are
    named s0, s1, ... in order, then each output's ``-map`` and options."""
    inputs: dict[tuple[str, ...], int] = {}  # an input's arguments -> its number in the command
    graph: list[str] = []
    outputs_args: list[str] = []
    for output in outputs:
        number = [inputs.setdefault(arguments, len(inputs)) for arguments in output.inputs]
        first = len(graph)  # this output's filters write links s{first}, s{first + 1}, ...
        for sources, name in output.filters:
            pads = "".join(f"[s{first + source}]" if isinstance(source, int) else f"[{number[source[0]]}:{source[1]}]"
                           for source in sources)
            graph.append(f"{pads}{name}[s{len(graph)}]")
        outputs_args += ["-map", f"[s{len(graph) - 1}]", *output.options]
    return [*(arg for arguments in inputs for arg in arguments), "-filter_complex", ";".join(graph), *outputs_args]


def clip_input(path: Path, *options: str) -> tuple[str, ...]:
    """The arguments opening clip ``path`` with one decoder thread: only the allowed containers
    (SAFE_INPUT_ARGS), then ``options`` (a seek, a duration)."""
    return (*SAFE_INPUT_ARGS, *options, "-threads", "1", "-i", str(path))


def video_output(path: Path, duration: float, num_frames: int, size: int, crop: bool) -> Output:
    """The output writing ``num_frames`` frames as PPM to stdout: the short side scaled to
    ``size``, centre-cropped to ``size``x``size`` when ``crop``."""
    filters: list[tuple[tuple[Source, ...], str]] = []
    if duration > LONG_CLIP_SECONDS:
        # One input per sampled time, each seeked to its keyframe and cut to one frame.
        times = [(k + 0.5) * duration / num_frames for k in range(num_frames)]
        inputs = tuple(clip_input(path, "-ss", f"{t:.3f}") for t in times)
        for k in range(num_frames):
            filters += [(((k, "v:0"),), "trim=end_frame=1"), ((len(filters),), "setpts=PTS-STARTPTS")]
        if num_frames > 1:
            filters.append((tuple(range(1, len(filters), 2)), f"concat=a=0:n={num_frames}:v=1"))
    else:
        inputs = (clip_input(path),)
        filters.append((((0, "v:0"),), f"fps=fps={num_frames / duration:.6f}"))
    # area averaging: the usual downscale is ~3x (720p to 224), where it avoids aliasing
    filters.append(((len(filters) - 1,), f"scale={size}:{size}:flags=area:force_original_aspect_ratio=increase"))
    if crop:
        filters.append(((len(filters) - 1,), f"crop={size}:{size}"))
    # passthrough: the concatenated single frames share timestamps and must not be dropped
    # frames:v caps the work and memory when the header's duration is far too short (then
    # resample_if_misled samples again over the real span)
    return Output(inputs, tuple(filters), ("-f", "image2pipe", "-fps_mode", "passthrough",
                                           "-frames:v", str(4 * num_frames + 4), "-vcodec", "ppm", "pipe:1"))


def audio_output(path: Path, audio: AudioFeatures, duration: float, target: str, stream: int = 0) -> Output:
    """The output of the first ``max_seconds`` of audio stream ``stream`` as mono float32 at
    ``sample_rate``, downmixed by ffmpeg's standard matrix (centre and surrounds at -3 dB, LFE
    left out) normalised to weights summing to one: the same sound in every channel comes out
    at its own level whatever the layout (mono as it is, stereo as (L + R) / 2), as
    ``ffmpeg -i clip -ac 1 clip.wav`` writes it."""
    seconds = f"{audio.max_seconds:.3f}"
    source = clip_input(path, "-t", seconds) if duration > LONG_CLIP_SECONDS else clip_input(path)
    filters = ((((0, f"a:{stream}"),), "aresample=rematrix_maxval=1.0"),
               ((0,), f"aformat=channel_layouts=mono:sample_fmts=flt:sample_rates={audio.sample_rate}"))
    return Output((source,), filters, ("-f", "f32le", "-acodec", "pcm_f32le", "-t", seconds, target))


def run_ffmpeg(command: list[str], audio_pipe: tuple[int, int] | None, path: Path) -> tuple[bytes, bytes, bytes, int]:
    """Run ffmpeg (argument list, no shell) and read stdout, stderr and the extra audio pipe
    at the same time, so that no full pipe ever blocks ffmpeg. ``audio_pipe`` is the
    (read, write) pair of ``os.pipe()`` whose write end the command names as ``pipe:N``.
    Returns (stdout, audio bytes, stderr, exit status); raises ClipError for clip ``path`` when
    ffmpeg runs over DECODE_SECONDS (it is killed: a hung ffmpeg never hangs the run)."""
    audio_file = None
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE,
                                   pass_fds=() if audio_pipe is None else (audio_pipe[1],))
        if audio_pipe is not None:
            audio_file = open(audio_pipe[0], "rb")
    except BaseException:
        if audio_pipe is not None:
            os.close(audio_pipe[0])
        raise
    finally:
        if audio_pipe is not None:
            os.close(audio_pipe[1])  # ffmpeg has its own copy; ours would keep the pipe open
    results: dict[str, bytes] = {}
    readers = [threading.Thread(target=read_into, args=(results, "stderr", process.stderr.read))]
    if audio_file is not None:
        readers.append(threading.Thread(target=read_into, args=(results, "audio", audio_file.read)))
    for reader in readers:
        reader.start()
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        process.kill()

    watchdog = threading.Timer(DECODE_SECONDS, kill)
    watchdog.daemon = True
    watchdog.start()
    try:
        with process:
            stdout = process.stdout.read()
            for reader in readers:
                reader.join()
    finally:
        watchdog.cancel()
        if audio_file is not None:
            audio_file.close()
    if timed_out.is_set():
        raise ClipError(path, f"timed out: decoding ran over {DECODE_SECONDS:.0f} s")
    return stdout, results.get("audio", b""), results["stderr"], process.returncode


def read_into(results: dict[str, bytes], key: str, read: Callable[[], bytes]) -> None:
    results[key] = read()


def parse_ppm_stream(data: bytes) -> np.ndarray:
    """Frames uint8[M, H, W, 3] from concatenated binary PPM images of one size."""
    match = PPM_HEADER.match(data)
    if match is None:
        return np.zeros((0, 1, 1, 3), dtype=np.uint8)
    width, height = int(match.group(1)), int(match.group(2))
    header = match.end()
    frame_bytes = header + width * height * 3
    count = len(data) // frame_bytes
    images = np.frombuffer(data[: count * frame_bytes], dtype=np.uint8).reshape(count, frame_bytes)
    return images[:, header:].reshape(count, height, width, 3).copy()


def pick_uniform(frames: np.ndarray, count: int) -> np.ndarray:
    """``count`` frames spread evenly over ``frames`` (repeating some when there are fewer:
    a 0.3 s clip still gives ``count`` frames)."""
    if len(frames) == count:
        return frames
    index = np.round(np.linspace(0, len(frames) - 1, count)).astype(int)
    return frames[index]


# --------------------------------------------------------------------------- face crop
@functools.lru_cache(maxsize=1)
def face_detector() -> cv2.CascadeClassifier:
    """OpenCV's bundled frontal-face Haar cascade (loaded once per process)."""
    detector = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    if detector.empty():
        raise RuntimeError("OpenCV's haarcascade_frontalface_default.xml could not be loaded")
    return detector


def largest_face(frame: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x, y, w, h) of the largest detected face in an RGB frame, or None."""
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    minimum = max(16, min(gray.shape) // 10)
    faces = face_detector().detectMultiScale(gray, scaleFactor=1.2, minNeighbors=5,
                                             minSize=(minimum, minimum))
    if len(faces) == 0:
        return None
    x, y, w, h = max(faces, key=lambda box: box[2] * box[3])
    return int(x), int(y), int(w), int(h)


def face_crop(frames: np.ndarray, size: int, detector: str = "opencv") -> tuple[np.ndarray, int]:
    """Crop each frame uint8[N,H,W,3] to a square around its largest face, resized to
    ``size``: (uint8[N,size,size,3], how many frames showed a face). ``detector``: opencv
    (the Haar cascade) or mtcnn (pipeline.media.faces). A frame without a detection uses the
    nearest frame's face (so the crop does not jump), and a clip without any face falls
    back to the centre crop."""
    if detector == "mtcnn":
        from pipeline.media.faces import largest_faces  # imported here: torch is needed by this detector only

        boxes = largest_faces(frames)
    else:
        boxes = [largest_face(frame) for frame in frames]
    found = [i for i, box in enumerate(boxes) if box is not None]
    height, width = frames.shape[1:3]
    out = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        if found:
            x, y, w, h = boxes[min(found, key=lambda j: abs(j - i))]
            side = min(height, width, max(int(w * FACE_CONTEXT), size // 2))
            left = min(max(x + w // 2 - side // 2, 0), width - side)
            top = min(max(y + h // 2 - side // 2, 0), height - side)
        else:
            side = min(height, width)
            left, top = (width - side) // 2, (height - side) // 2
        square = frame[top: top + side, left: left + side]
        interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        out[i] = cv2.resize(square, (size, size), interpolation=interpolation)
    return out, len(found)

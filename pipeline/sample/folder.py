"""Sample-data generator: a small folder shaped exactly like MELD.Raw, with learnable labels.

``python -m pipeline.sample OUT_DIR [--clips-per-class N] [--seed S] ...`` writes

    OUT_DIR/train_sent_emo.csv  dev_sent_emo.csv  test_sent_emo.csv
    OUT_DIR/train_splits/  dev_splits_complete/  output_repeated_splits_test/   diaD_uttU.mp4

with MELD's CSV columns, CRLF line ends and ``"hh:mm:ss,ms"`` times, and clips as the real
release has them: H.264 yuv420p video at 1280x720 / 24 fps, AAC 48 kHz audio with 2 or 6
channels. The emotion of an utterance can be learnt from each modality on its own:

- text: per-emotion sentence templates with neutral slot fillers, plus a share of
  ambiguous sentences shared by all emotions (so text alone is not perfect);
- audio: a harmonic "voice" whose pitch band, syllable rate, pitch contour and loudness
  depend on the emotion, plus a little noise;
- video: a drawn face whose mouth, background hue and motion depend on the emotion.

How much each modality tells is adjustable (``--ambiguous-share``, ``--audio-random-share``,
``--video-random-share``): a share of the clips can show the voice or the face of a randomly
drawn emotion, so that no modality alone is perfect and combining them pays (the fusion
benchmark, ``bench/fusion.py``, uses this).

Like the real release, the dev and test folders also hold an unlabelled clip that no CSV
row names (``--no-extras`` leaves them out). Everything is deterministic in ``--seed``:
the same seed gives byte-identical CSVs and clips.

Each clip is one ffmpeg call: frames are rendered in numpy at low resolution and piped
in as raw RGB (ffmpeg scales them up), the audio is piped in as raw PCM on a second pipe.
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from pipeline.labels import EMOTIONS

logger = logging.getLogger(__name__)

MELD_COLUMNS: tuple[str, ...] = (
    "Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
    "Season", "Episode", "StartTime", "EndTime",
)
SPLITS: tuple[str, ...] = ("train", "dev", "test")
CSV_NAMES: dict[str, str] = {s: f"{s}_sent_emo.csv" for s in SPLITS}
CLIP_DIRS: dict[str, str] = {
    "train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test",
}
SPEAKERS: tuple[str, ...] = (
    "Rachel", "Ross", "Monica", "Chandler", "Joey", "Phoebe", "Gunther", "Janice", "Mike",
)
CHANNEL_LAYOUTS: dict[int, str] = {1: "mono", 2: "stereo", 6: "5.1"}
# Per-channel gains of the "voice": dialogue sits in the centre channel of 5.1 mixes, as in
# broadcast audio, so a downmix to mono keeps it loudest there.
CHANNEL_GAINS: dict[int, tuple[float, ...]] = {
    1: (1.0,), 2: (1.0, 0.9), 6: (0.5, 0.5, 1.0, 0.1, 0.3, 0.3),
}
AMBIGUOUS_SHARE = 0.3  # default share of utterances whose text says nothing about the emotion
SIX_CHANNEL_SHARE = 0.25  # share of clips with 5.1 audio (the rest are stereo)
RENDER_SHORT_SIDE = 96  # frames are drawn at this short side, then scaled by ffmpeg
AUDIO_BITRATE = "96k"


@dataclass(frozen=True)
class EmotionStyle:
    """How an emotion shows in the audio and video of a clip.

    Pitch bands are a factor ~1.35 apart; with per-clip jitter (+-6 %), contour and vibrato
    the pitch ranges of two emotions still never overlap. Background hues are 360/7 degrees
    apart with +-10 degrees jitter.
    """

    pitch_hz: float  # fundamental of the voice
    pitch_slope: float  # relative pitch change over the clip (rising > 0, falling < 0)
    syllable_hz: float  # amplitude-modulation rate (speech tempo)
    loudness: float  # peak amplitude in [0, 1]
    hue: float  # background hue in degrees
    mouth: str  # "smile" | "frown" | "flat" | "tilt" | "open" | "small_open"
    frowning: bool  # slanted eyebrows (tells anger from sadness, which share the mouth)
    motion: tuple[float, float, float]  # face oscillation: x, y amplitude (face radii), Hz


EMOTION_STYLES: dict[str, EmotionStyle] = {
    "sadness": EmotionStyle(140.0, -0.15, 2.0, 0.25, 206.0, "frown", False, (0.0, 0.15, 0.4)),
    "neutral": EmotionStyle(190.0, 0.0, 3.0, 0.40, 154.0, "flat", False, (0.05, 0.05, 0.5)),
    "disgust": EmotionStyle(255.0, -0.05, 2.5, 0.40, 103.0, "tilt", False, (0.3, 0.0, 0.7)),
    "anger": EmotionStyle(345.0, 0.05, 5.0, 0.85, 0.0, "frown", True, (0.25, 0.0, 6.0)),
    "fear": EmotionStyle(465.0, 0.10, 7.0, 0.30, 257.0, "small_open", False, (0.08, 0.08, 9.0)),
    "joy": EmotionStyle(630.0, 0.05, 4.5, 0.65, 51.0, "smile", False, (0.0, 0.35, 2.0)),
    "surprise": EmotionStyle(850.0, 0.25, 6.0, 0.70, 309.0, "open", False, (0.0, 0.5, 1.2)),
}

SENTIMENT_OF: dict[str, tuple[str, ...]] = {
    "neutral": ("neutral",), "joy": ("positive",), "surprise": ("positive", "negative"),
    "anger": ("negative",), "sadness": ("negative",), "disgust": ("negative",),
    "fear": ("negative",),
}

# Slot fillers are shared by all emotions, so only the template words carry the label.
FILLERS: dict[str, tuple[str, ...]] = {
    "name": ("Rachel", "Ross", "Monica", "Chandler", "Joey", "Phoebe", "Mike", "Janice"),
    "thing": ("the apartment", "the coffee", "the couch", "the job", "the wedding",
              "the sandwich", "the duck", "the dinner", "the audition", "the museum"),
    "time": ("tonight", "tomorrow", "this morning", "on Friday", "right now", "last week"),
}
TEMPLATES: dict[str, tuple[str, ...]] = {
    "neutral": (
        "I’m going to pick up {thing} {time}.",
        "{name} said we should meet at {thing} {time}.",
        "So, uh, {thing} is on the second floor.",
        "Okay, let’s talk about {thing} {time}.",
        "I think {name} is working {time}.",
    ),
    "joy": (
        "This is wonderful, {name}! I love {thing}!",
        "Oh, I’m so happy about {thing}, this is great!",
        "Yay! {thing} is perfect, thank you so much!",
        "You’re the best, {name}! That’s amazing!",
        "Ha ha, I love it! What a great day!",
    ),
    "surprise": (
        "What?! {name} did what with {thing}?",
        "Oh my God! No way! {thing}? Really?!",
        "Wait, you’re kidding me! {time}?!",
        "Whoa! I can’t believe {name} is here!",
        "Seriously?! {thing} is gone?!",
    ),
    "anger": (
        "Shut up, {name}! I’m so sick of {thing}!",
        "How dare you touch {thing}?! Get out!",
        "I am furious! You ruined {thing}!",
        "Don’t you ever do that again, {name}!",
        "Damn it! Stop yelling at me about {thing}!",
    ),
    "sadness": (
        "I miss {name} so much. I’m so sad.",
        "I’m sorry, I just feel so lonely {time}.",
        "Nobody cares about {thing} anymore...",
        "It’s over, {name}. I lost everything.",
        "I cried all night about {thing}.",
    ),
    "disgust": (
        "Ew, gross! {thing} smells disgusting!",
        "Eww, that’s revolting, {name}. Yuck.",
        "Ugh, I can’t even look at {thing}, it’s nasty.",
        "That is so gross. Who licked {thing}?",
        "Yuck! Get {thing} away from me!",
    ),
    "fear": (
        "I’m scared, {name}. What if something happens?",
        "Oh no, I’m terrified of {thing}!",
        "Please don’t leave me alone {time}, I’m afraid!",
        "Help! Something is moving behind {thing}!",
        "I’m so nervous, my hands are shaking.",
    ),
}
AMBIGUOUS: tuple[str, ...] = (
    "Okay.", "What?", "Hey.", "Oh.", "Yeah.", "Really?", "Hi, {name}.",
    "Hey, I need to tell you something.", "Can we talk about {thing}?", "Well, {name}...",
    "Are you serious?", "I don’t know.", "Look at this.", "Oh my.",
)


# --------------------------------------------------------------------------- CSV
def write_meld_csv(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``rows`` (dicts keyed by :data:`MELD_COLUMNS`) as a MELD CSV.

    UTF-8 without BOM, CRLF line ends, and fields quoted only when needed (times contain a
    comma, so they come out as ``"00:16:16,059"``), as in the real release. Missing keys
    are written empty; unknown keys raise ``ValueError``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MELD_COLUMNS, lineterminator="\r\n", restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    return path


def format_time(seconds: float) -> str:
    """MELD's timestamp format ``hh:mm:ss,mmm``."""
    ms = int(round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def utterance_text(emotion: str, rng: np.random.Generator,
                   ambiguous_share: float = AMBIGUOUS_SHARE) -> str:
    """A templated sentence for ``emotion``, or (with probability ``ambiguous_share``) an
    ambiguous one that every emotion uses."""
    pool = AMBIGUOUS if rng.random() < ambiguous_share else TEMPLATES[emotion]
    template = pool[rng.integers(len(pool))]
    slots = {key: values[rng.integers(len(values))] for key, values in FILLERS.items()}
    return template.format(**slots)


@dataclass(frozen=True)
class Difficulty:
    """How much each modality tells about the emotion.

    ``ambiguous_share``: share of utterances whose text is an ambiguous sentence.
    ``audio_random_share`` / ``video_random_share``: share of clips whose voice (face) is
    drawn in the style of a uniformly random emotion, independent of the label (it matches
    the label one time in seven), like a speaker whose voice or face does not show what
    they feel. The defaults keep audio and video always faithful to the label.
    """

    ambiguous_share: float = AMBIGUOUS_SHARE
    audio_random_share: float = 0.0
    video_random_share: float = 0.0

    def __post_init__(self) -> None:
        for name in ("ambiguous_share", "audio_random_share", "video_random_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: must be in [0, 1], got {value}")


@dataclass(frozen=True)
class ClipJob:
    """One clip to render: where, which emotion, its per-clip seed and shape, and the
    emotions whose style its audio and video show (the label's unless randomised)."""

    path: Path
    emotion: str
    seed: int
    duration: float
    channels: int
    audio_style: str = ""  # "" = the emotion's own style
    video_style: str = ""


def plan_split(split: str, per_class: int, seed: int, duration_range: tuple[float, float],
               clip_dir: Path, extras: bool, difficulty: Difficulty = Difficulty(),
               ) -> tuple[list[dict[str, Any]], list[ClipJob], list[str]]:
    """The CSV rows, the clip jobs and the names of unlabelled extra clips of one split.

    Utterances are balanced over emotions (``per_class`` each), shuffled, and cut into
    dialogues of 3-6 turns between 2-3 speakers with consecutive timestamps.
    """
    split_index = SPLITS.index(split)
    rng = np.random.default_rng([seed, split_index])
    # Styles are drawn from a generator of their own, so the default difficulty gives
    # the same CSVs and clips as before the knobs existed.
    style_rng = np.random.default_rng([seed, split_index, 1])
    emotions = [e for e in EMOTIONS for _ in range(per_class)]
    rng.shuffle(emotions)

    def style(emotion: str, random_share: float) -> str:
        drawn = EMOTIONS[style_rng.integers(len(EMOTIONS))]
        return drawn if style_rng.random() < random_share else emotion

    def new_job(name: str, emotion: str) -> ClipJob:
        clip_seed = int(rng.integers(2**31))
        duration = round(float(rng.uniform(*duration_range)), 3)
        channels = 6 if rng.random() < SIX_CHANNEL_SHARE else 2
        return ClipJob(clip_dir / name, emotion, clip_seed, duration, channels,
                       style(emotion, difficulty.audio_random_share),
                       style(emotion, difficulty.video_random_share))

    rows: list[dict[str, Any]] = []
    jobs: list[ClipJob] = []
    dialogue_id, start = 0, 0
    while start < len(emotions):
        turns = emotions[start:start + int(rng.integers(3, 7))]
        speakers = rng.choice(SPEAKERS, size=int(rng.integers(2, 4)), replace=False)
        season, episode = int(rng.integers(1, 11)), int(rng.integers(1, 25))
        clock = float(rng.uniform(60.0, 1200.0))
        for utterance_id, emotion in enumerate(turns):
            job = new_job(f"dia{dialogue_id}_utt{utterance_id}.mp4", emotion)
            sentiments = SENTIMENT_OF[emotion]
            rows.append({
                "Sr No.": len(rows) + 1,
                "Utterance": utterance_text(emotion, rng, difficulty.ambiguous_share),
                "Speaker": str(speakers[utterance_id % len(speakers)]),
                "Emotion": emotion,
                "Sentiment": sentiments[rng.integers(len(sentiments))],
                "Dialogue_ID": dialogue_id, "Utterance_ID": utterance_id,
                "Season": season, "Episode": episode,
                "StartTime": format_time(clock), "EndTime": format_time(clock + job.duration),
            })
            jobs.append(job)
            clock += job.duration + float(rng.uniform(0.2, 1.5))
        start += len(turns)
        dialogue_id += 1

    # The real dev and test folders hold clips that no CSV row names (e.g. dev dia66_utt9,
    # test final_videos_test*.mp4); a preprocessor has to cope with them.
    extra_names: list[str] = []
    if extras and split == "dev":
        last = rows[-1]
        extra_names.append(f"dia{last['Dialogue_ID']}_utt{last['Utterance_ID'] + 1}.mp4")
    if extras and split == "test":
        extra_names.append("final_videos_testdia0_utt0.mp4")
    for name in extra_names:
        jobs.append(new_job(name, EMOTIONS[rng.integers(len(EMOTIONS))]))
    return rows, jobs, extra_names


# --------------------------------------------------------------------------- media synthesis
def synth_audio(emotion: str, rng: np.random.Generator, duration: float, sample_rate: int,
                channels: int) -> np.ndarray:
    """The emotion's "voice" as int16 PCM, shape [samples, channels].

    A three-harmonic tone in the emotion's pitch band (jittered +-6 %, with a pitch contour
    and slow vibrato), gated into syllables at the emotion's tempo, scaled to its loudness,
    plus low-level white noise.
    """
    style = EMOTION_STYLES[emotion]
    n = max(1, int(round(duration * sample_rate)))
    t = np.arange(n) / sample_rate
    progress = t / duration
    f0 = style.pitch_hz * rng.uniform(0.94, 1.06)
    vibrato = 0.02 * np.sin(2 * np.pi * rng.uniform(4.0, 6.0) * t)
    freq = f0 * (1.0 + style.pitch_slope * (progress - 0.5) + vibrato)
    phase = 2 * np.pi * np.cumsum(freq) / sample_rate
    voice = np.sin(phase) + 0.5 * np.sin(2 * phase) + 0.25 * np.sin(3 * phase)
    syllables = 0.5 * (1 + np.sin(2 * np.pi * style.syllable_hz * rng.uniform(0.9, 1.1) * t
                                  + rng.uniform(0, 2 * np.pi)))
    envelope = 0.2 + 0.8 * syllables
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # 10 ms ramps: no clicks at the ends
    loudness = style.loudness * rng.uniform(0.85, 1.0) / 1.75  # 1.75: bound of the harmonic sum
    mono = loudness * voice * envelope * fade + rng.normal(0.0, 0.01, n)
    gains = np.asarray(CHANNEL_GAINS[channels])
    pcm = np.clip(mono[:, None] * gains[None, :], -1.0, 1.0)
    return (pcm * 32767).astype("<i2")


def hsv_to_rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    """One HSV colour (hue in degrees) as a float RGB triple in [0, 255]."""
    h = (hue % 360.0) / 60.0
    c = value * saturation
    x = c * (1 - abs(h % 2 - 1))
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    return (np.asarray(rgb) + value - c) * 255.0


def render_size(width: int, height: int) -> tuple[int, int]:
    """Size (even, aspect kept) at which frames are drawn before ffmpeg scales them up."""
    scale = min(1.0, RENDER_SHORT_SIDE / min(width, height))
    return max(2, 2 * round(width * scale / 2)), max(2, 2 * round(height * scale / 2))


def synth_frames(emotion: str, rng: np.random.Generator, n_frames: int, fps: float,
                 width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames of a drawn face for ``emotion`` as palette indices.

    Returns ``(indices uint8 [n_frames, height, width], palette float [3, 3] RGB)`` with
    palette rows background, skin, features (eyes and mouth). Background hue, mouth shape
    and motion (amplitude and frequency of the face's oscillation) depend on the emotion;
    position, size, hue, brightness and phase are jittered per clip. The face stays near
    the centre, so centre crops keep it.
    """
    style = EMOTION_STYLES[emotion]
    short = min(width, height)
    radius = 0.3 * short * rng.uniform(0.92, 1.08)
    centre_x = width / 2 + rng.uniform(-0.08, 0.08) * short
    centre_y = height / 2 + rng.uniform(-0.05, 0.05) * short
    background = hsv_to_rgb(style.hue + rng.uniform(-10, 10), rng.uniform(0.55, 0.75),
                            rng.uniform(0.75, 0.9))
    palette = np.stack([background, [250.0, 222.0, 177.0], [40.0, 30.0, 30.0]])
    amp_x, amp_y, motion_hz = style.motion
    phase = rng.uniform(0, 2 * np.pi)

    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = np.zeros((n_frames, height, width), dtype=np.uint8)
    for i in range(n_frames):
        swing = np.sin(2 * np.pi * motion_hz * i / fps + phase)
        dx = (xs - centre_x - amp_x * radius * swing) / radius  # face coordinates, radius 1
        dy = (ys - centre_y - amp_y * radius * swing) / radius
        eyes = np.minimum((dx - 0.35) ** 2, (dx + 0.35) ** 2) + (dy + 0.25) ** 2 <= 0.13**2
        frames[i][dx**2 + dy**2 <= 1.0] = 1
        features = eyes | mouth_mask(style.mouth, dx, dy)
        if style.frowning:  # brows from (|x|=0.15, y=-0.48) down-in to (0.55, -0.68) up-out
            brow_y = -0.68 + 0.5 * (0.55 - np.abs(dx))
            features |= (np.abs(np.abs(dx) - 0.35) <= 0.2) & (np.abs(dy - brow_y) <= 0.06)
        frames[i][features] = 2
    return frames, palette


def mouth_mask(mouth: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Pixels of the mouth in face coordinates (face radius 1, mouth centred at y=0.4)."""
    my = dy - 0.4
    if mouth == "open":
        return (dx / 0.3) ** 2 + (my / 0.25) ** 2 <= 1.0
    if mouth == "small_open":
        return (dx / 0.15) ** 2 + (my / 0.1) ** 2 <= 1.0
    u = dx / 0.45  # -1..1 across the mouth
    curve = {"smile": 0.3 * (1 - u**2) - 0.15, "frown": -0.3 * (1 - u**2) + 0.15,
             "flat": 0.0 * u, "tilt": 0.2 * u}[mouth]
    return (np.abs(u) <= 1.0) & (np.abs(my - curve) <= 0.08)


def to_yuv420p(indices: np.ndarray, palette: np.ndarray) -> bytes:
    """Palette frames [N, H, W] (H, W even) as raw yuv420p bytes, BT.601 limited range.

    Handing ffmpeg yuv420p at low resolution makes its upscale a plain per-plane resize,
    cheaper than converting RGB at full resolution. Chroma takes the top-left pixel of
    each 2x2 block.
    """
    to_yuv = np.array([[0.257, 0.504, 0.098], [-0.148, -0.291, 0.439], [0.439, -0.368, -0.071]])
    yuv = np.clip(np.rint(palette @ to_yuv.T + [16.0, 128.0, 128.0]), 0, 255).astype(np.uint8)
    n = indices.shape[0]
    chroma = indices[:, ::2, ::2]
    planes = [yuv[indices, 0].reshape(n, -1), yuv[chroma, 1].reshape(n, -1),
              yuv[chroma, 2].reshape(n, -1)]
    return np.concatenate(planes, axis=1).tobytes()


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
    tmp_path = path.with_name(f".{path.name}.tmp")
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


# --------------------------------------------------------------------------- whole folder
def split_sizes(clips_per_class: int, eval_clips_per_class: int | None = None) -> dict[str, int]:
    """Utterances per emotion of each split: train ``clips_per_class``, dev and test
    ``eval_clips_per_class`` (default: about a third of train, at least 2)."""
    small = max(2, round(clips_per_class / 3)) if eval_clips_per_class is None else eval_clips_per_class
    return {"train": clips_per_class, "dev": small, "test": small}


def generate(out_dir: str | Path, clips_per_class: int = 12, seed: int = 0,
             splits: Sequence[str] = SPLITS, width: int = 1280, height: int = 720,
             duration_range: tuple[float, float] = (1.5, 3.5), workers: int | None = None,
             extras: bool = True, overwrite: bool = False,
             difficulty: Difficulty = Difficulty(),
             eval_clips_per_class: int | None = None) -> dict[str, Any]:
    """Write a MELD.Raw-shaped sample folder to ``out_dir`` and return a summary.

    ``splits`` picks which of train/dev/test to write; ``workers`` clips are rendered at
    once (default: the CPU count), each by its own single-threaded ffmpeg. An ``out_dir``
    that already holds MELD files is refused unless ``overwrite`` (which then removes only
    the CSVs and clip folders this generator writes). ``difficulty`` sets how much text,
    audio and video each tell (see :class:`Difficulty`). Dev and test get
    ``eval_clips_per_class`` utterances per emotion (default: a third of train, at least 2).

    Returns ``{"out_dir", "seed", "clips", "seconds", "splits": {split: {"csv", "clip_dir",
    "rows", "clips", "extras", "emotions", "off_label"}}}``, where ``off_label`` counts the
    labelled clips whose audio / video shows another emotion than the label.
    """
    if clips_per_class < 1:
        raise ValueError(f"clips_per_class: must be >= 1, got {clips_per_class}")
    if eval_clips_per_class is not None and eval_clips_per_class < 1:
        raise ValueError(f"eval_clips_per_class: must be >= 1, got {eval_clips_per_class}")
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or not splits:
        raise ValueError(f"splits: expected a non-empty subset of {SPLITS}, got {list(splits)}")
    low, high = duration_range
    if not 0 < low <= high:
        raise ValueError(f"duration_range: need 0 < low <= high, got {duration_range}")
    if width < 2 or height < 2 or width % 2 or height % 2:
        raise ValueError(f"width, height: must be even and >= 2, got {width}x{height}")
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, splits, overwrite)

    started = time.perf_counter()
    sizes = split_sizes(clips_per_class, eval_clips_per_class)
    rows_of: dict[str, list[dict[str, Any]]] = {}
    jobs: list[ClipJob] = []
    summary: dict[str, Any] = {"out_dir": str(out_dir), "seed": seed, "splits": {}}
    for split in (s for s in SPLITS if s in splits):  # MELD order, whatever order was asked
        clip_dir = out_dir / CLIP_DIRS[split]
        clip_dir.mkdir(parents=True, exist_ok=True)
        rows, split_jobs, extra_names = plan_split(split, sizes[split], seed, (low, high),
                                                   clip_dir, extras, difficulty)
        rows_of[split] = rows
        jobs += split_jobs
        summary["splits"][split] = {
            "csv": str(out_dir / CSV_NAMES[split]), "clip_dir": str(clip_dir), "rows": len(rows),
            "clips": len(split_jobs), "extras": extra_names,
            "emotions": {e: sum(r["Emotion"] == e for r in rows) for e in EMOTIONS},
            "off_label": {stream: sum(getattr(job, f"{stream}_style") != job.emotion
                                      for job in split_jobs[:len(rows)])
                          for stream in ("audio", "video")},
        }

    render_all(jobs, width, height, workers or os.cpu_count() or 1)
    # CSVs last: a CSV on disk means every clip it names is there.
    for split, rows in rows_of.items():
        write_meld_csv(out_dir / CSV_NAMES[split], rows)

    summary["clips"] = len(jobs)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    for split, info in summary["splits"].items():
        logger.info("%s: %d utterances (%s per emotion), %d clips (%d unlabelled) in %s",
                    split, info["rows"], sizes[split], info["clips"], len(info["extras"]),
                    info["clip_dir"])
    logger.info("wrote %d clips (%dx%d) to %s in %.1f s (%.2f s per clip)", len(jobs), width,
                height, out_dir, summary["seconds"], summary["seconds"] / max(1, len(jobs)))
    return summary


def prepare_out_dir(out_dir: Path, splits: Sequence[str], overwrite: bool) -> None:
    """Refuse to mix with existing MELD files unless ``overwrite``; then remove those of
    ``splits`` so no stale clip of an earlier run stays behind as a stray extra."""
    existing = [p for s in splits for p in (out_dir / CSV_NAMES[s], out_dir / CLIP_DIRS[s])
                if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir} already holds {', '.join(p.name for p in existing)}; "
                              "pass overwrite=True (--overwrite) to replace them")
    for path in existing:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def render_all(jobs: Sequence[ClipJob], width: int, height: int, workers: int) -> None:
    """Render ``jobs`` with ``workers`` at once, with a progress bar.

    Threads suffice: the work happens in the ffmpeg child processes and in numpy, so the
    GIL is not the bottleneck and nothing needs pickling.
    """
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(make_clip, job.path, job.emotion, job.seed, job.duration,
                               width, height, channels=job.channels, audio_style=job.audio_style,
                               video_style=job.video_style) for job in jobs]
        try:
            for future in tqdm(as_completed(futures), total=len(futures), unit="clip",
                               desc="sample clips"):
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def parse_pair(text: str) -> tuple[float, float]:
    """``"1.5,3.5"`` -> ``(1.5, 3.5)`` (argparse type)."""
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers like 1.5,3.5, got {text!r}")
    return low, high


def parse_splits(text: str) -> list[str]:
    """``"train,dev"`` -> ``["train", "dev"]`` (argparse type)."""
    splits = [s.strip() for s in text.split(",") if s.strip()]
    if not splits or set(splits) - set(SPLITS):
        raise argparse.ArgumentTypeError(
            f"expected a comma list of {', '.join(SPLITS)}, got {text!r}")
    return splits


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line: ``python -m pipeline.sample OUT_DIR [options]``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.sample",
        description="Write a small MELD.Raw-shaped folder whose labels are learnable from "
                    "text, audio and video separately.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--clips-per-class", type=int, default=12,
                        help="train utterances per emotion (default: %(default)s)")
    parser.add_argument("--eval-clips-per-class", type=int, default=None,
                        help="dev and test utterances per emotion (default: a third of train, >= 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--splits", type=parse_splits, default=list(SPLITS),
                        help="comma list of train,dev,test")
    parser.add_argument("--duration-range", type=parse_pair, default=(1.5, 3.5),
                        help="clip durations in seconds, LOW,HIGH")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--workers", type=int, default=None, help="clips rendered at once")
    parser.add_argument("--no-extras", dest="extras", action="store_false",
                        help="leave out the unlabelled extra clips of dev and test")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the MELD CSVs and clip folders already in OUT_DIR")
    parser.add_argument("--ambiguous-share", type=float, default=AMBIGUOUS_SHARE,
                        help="share of utterances with ambiguous text (default: %(default)s)")
    parser.add_argument("--audio-random-share", type=float, default=0.0,
                        help="share of clips whose voice shows a random emotion (default: %(default)s)")
    parser.add_argument("--video-random-share", type=float, default=0.0,
                        help="share of clips whose face shows a random emotion (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        difficulty = Difficulty(args.ambiguous_share, args.audio_random_share, args.video_random_share)
        return generate(args.out_dir, args.clips_per_class, args.seed, args.splits, args.width,
                        args.height, args.duration_range, args.workers, args.extras, args.overwrite,
                        difficulty, args.eval_clips_per_class)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()

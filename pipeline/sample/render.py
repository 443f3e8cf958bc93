"""The content of a sample clip, drawn in numpy: a harmonic "voice" whose pitch band,
syllable rate, contour and loudness depend on the emotion, and a drawn face whose mouth,
background hue and motion do, rendered at low resolution as yuv420p planes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Per-channel gains of the "voice": dialogue sits in the centre channel of 5.1 mixes, as in
# broadcast audio, so a downmix to mono keeps it loudest there.
CHANNEL_GAINS: dict[int, tuple[float, ...]] = {
    1: (1.0,), 2: (1.0, 0.9), 6: (0.5, 0.5, 1.0, 0.1, 0.3, 0.3),
}


RENDER_SHORT_SIDE = 96  # frames are drawn at this short side, then scaled by ffmpeg


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

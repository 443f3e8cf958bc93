"""A cut stream-copied out of a long-GOP H.264 clip (``ffmpeg -ss 8 -i long.mp4 -t 3 -c copy``,
keyframes every 10 s) carries the frames back to its keyframe and an edit list that starts the
presentation at 8 s. Its frames are sampled over what plays: 8 frames were 2 distinct images,
4 copies each, because the MP4 reader took the media's duration (11 s) for the clip's."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from pipeline.config import VideoFeatures
from pipeline.media.decode import load_clip, parse_ppm_stream
from pipeline.media.probe import probe


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *args], check=True)


def test_a_stream_copied_cut_is_sampled_over_what_plays(tmp_path):
    long, cut = tmp_path / "long.mp4", tmp_path / "cut.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=20", "-c:v", "libx264", "-g", "250",
           "-keyint_min", "250", "-sc_threshold", "0", "-pix_fmt", "yuv420p", str(long))
    ffmpeg("-ss", "8", "-i", str(long), "-t", "3", "-c", "copy", str(cut))
    played = float(subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                                   str(cut)], capture_output=True, text=True, check=True).stdout)
    assert abs(probe(cut).duration - played) < 0.05
    frames = load_clip(cut, None, VideoFeatures(num_frames=8, size=64)).frames
    assert len(frames) == 8 and all((frames[i] != frames[i - 1]).any() for i in range(1, 8))
    # the frames ffmpeg itself presents at that rate, through the same scaling
    chain = (f"fps={8 / played:.6f},scale=64:64:force_original_aspect_ratio=increase:flags=area,crop=64:64")
    reference = parse_ppm_stream(subprocess.run(["ffmpeg", "-v", "error", "-i", str(cut), "-vf", chain, "-frames:v",
                                                 "8", "-f", "image2pipe", "-vcodec", "ppm", "pipe:1"],
                                                capture_output=True, check=True).stdout)
    np.testing.assert_array_equal(frames, reference)


def test_an_ordinary_clip_keeps_its_duration(tmp_path):
    clip = tmp_path / "plain.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=3", "-c:v", "libx264", "-bf", "2",
           "-pix_fmt", "yuv420p", str(clip))
    info = probe(Path(clip))
    assert abs(info.duration - 3.0) < 0.05 and abs(info.fps - 25.0) < 0.1

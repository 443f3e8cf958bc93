"""Per-clip cost of preprocessing against the decode floor and a naive baseline.

    python bench/preprocess.py [--clips 6] [--duration 3.3] [--repeats 3] [--cpu 0]

Generates MELD-like clips (1280x720 H.264 at 24 fps, AAC 48 kHz stereo, via
``pipeline.sample.clip.make_clip``), pins itself (and so every ffmpeg it starts) to one CPU core,
and measures per clip, interleaved and repeated:

  (a) floor     ``ffmpeg -threads 1 -i clip -f null -``: decoding every frame, nothing else
  (b) ours      one sample through the preprocessor's worker (probe, one ffmpeg process for
                audio and sampled frames, log-mel, tokens, npz + status write), workers=1
  (c) naive     OpenCV reads every frame (1 decoder thread), keeps the sampled ones and
                resizes them; a second ffmpeg decode extracts the audio; same log-mel

and prints the median wall and CPU seconds per clip (CPU = this process + its children)
and the ratios to the floor. Target: (b)/(a) <= 1.3 and (b) well below (c).
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # `python bench/x.py` puts bench/ first on sys.path, where bench/fusion.py
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # would shadow the fusion package

import argparse
import os
import resource
import statistics
import subprocess
import tempfile
import time
from typing import Callable

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import PreprocessConfig, to_dict  # noqa: E402
from pipeline.data import cache_writer  # noqa: E402
from pipeline.media.features import log_mel  # noqa: E402
from pipeline.media.text import Utterance  # noqa: E402
from pipeline.preprocess.run import Task, Worker  # noqa: E402
from pipeline.sample.clip import make_clip  # noqa: E402


def cpu_seconds() -> float:
    """CPU time of this process (all threads) plus its finished children."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def measure(work: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    work()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def floor(clip: Path) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-threads", "1", "-i", str(clip), "-f", "null", "-"],
                   check=True)


def naive(clip: Path, pcfg: PreprocessConfig) -> None:
    """What a first attempt looks like: every frame through OpenCV, audio by a second decode."""
    capture = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    size = pcfg.video.size
    keep = np.linspace(0, len(frames) - 1, pcfg.video.num_frames).round().astype(int)
    sampled = []
    for index in keep:
        frame = cv2.cvtColor(frames[index], cv2.COLOR_BGR2RGB)
        height, width = frame.shape[:2]
        scale = size / min(height, width)
        frame = cv2.resize(frame, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        top, left = (frame.shape[0] - size) // 2, (frame.shape[1] - size) // 2
        sampled.append(frame[top: top + size, left: left + size])
    audio = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-threads", "1", "-i", str(clip), "-t",
                            str(pcfg.audio.max_seconds), "-ac", "1", "-ar", str(pcfg.audio.sample_rate),
                            "-f", "f32le", "-"], check=True, capture_output=True).stdout
    log_mel(np.frombuffer(audio, dtype=np.float32).copy(), pcfg.audio)
    np.stack(sampled)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--duration", type=float, default=3.3, help="seconds per clip (MELD's median is ~3)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu", type=int, default=min(os.sched_getaffinity(0)), help="core to pin to")
    parser.add_argument("--text-model", default="all-MiniLM-L6-v2")
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {args.cpu})  # (a), (b), (c) and their ffmpeg children share one core
    cv2.setNumThreads(1)

    pcfg = PreprocessConfig()
    pcfg.text.model = args.text_model
    worker = Worker(to_dict(pcfg))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clips = [make_clip(work / f"dia0_utt{i}.mp4", "joy", seed=i, duration=args.duration)
                 for i in range(args.clips)]
        split_dir = cache_writer.prepare_split(work / "cache" / "train", "train", to_dict(pcfg),
                                        [clip.stem for clip in clips])
        tasks = [Task(str(split_dir), {"id": clip.stem}, str(clip), Utterance("Oh my God, this is great!", "Joey"))
                 for clip in clips]
        worker.process(tasks[0])  # warm-up: imports, the mel filters, the page cache
        naive(clips[0], pcfg)
        results: dict[str, list[list[tuple[float, float]]]] = {name: [[] for _ in clips]
                                                              for name in ("floor", "ours", "naive")}
        for _ in range(args.repeats):
            for i, (clip, task) in enumerate(zip(clips, tasks)):
                results["floor"][i].append(measure(lambda: floor(clip)))
                results["ours"][i].append(measure(lambda: worker.process(task)))
                results["naive"][i].append(measure(lambda: naive(clip, pcfg)))

    def per_clip(name: str, column: int) -> float:
        """Median over repeats, then mean over clips."""
        return statistics.fmean(statistics.median(run[column] for run in runs) for runs in results[name])

    print(f"{args.clips} clips, {args.duration:.1f} s, 1280x720 H.264 24 fps + AAC 48 kHz stereo; "
          f"num_frames={pcfg.video.num_frames}, size={pcfg.video.size}; pinned to CPU {args.cpu}; "
          f"median of {args.repeats}")
    print(f"{'':28s} {'wall s/clip':>12s} {'CPU s/clip':>11s} {'wall / (a)':>11s} {'CPU / (a)':>10s}")
    labels = {"floor": "(a) floor: ffmpeg -f null", "ours": "(b) pipeline.preprocess",
              "naive": "(c) naive OpenCV + ffmpeg"}
    for name, label in labels.items():
        wall, cpu = per_clip(name, 0), per_clip(name, 1)
        print(f"{label:28s} {wall:12.3f} {cpu:11.3f} {wall / per_clip('floor', 0):11.2f} "
              f"{cpu / per_clip('floor', 1):10.2f}")


if __name__ == "__main__":
    main()

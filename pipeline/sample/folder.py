"""The sample folder: every split planned, its clips rendered in parallel, its CSVs written
last (a CSV on disk means every clip it names is there)."""
from __future__ import annotations

import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from pipeline.labels import EMOTIONS
from pipeline.sample.clip import make_clip
from pipeline.sample.plan import CLIP_DIRS, CSV_NAMES, SPLITS, ClipJob, Difficulty, plan_split, split_sizes
from pipeline.sample.text import write_meld_csv

logger = logging.getLogger(__name__)


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

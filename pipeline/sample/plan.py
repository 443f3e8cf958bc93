"""The plan of a sample split: which utterances (emotion, speaker, dialogue, text), which
clips with which seed, duration, channel count and off-label styles (:class:`Difficulty`),
and the unlabelled extras."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.labels import EMOTIONS
from pipeline.sample.text import AMBIGUOUS_SHARE, SENTIMENT_OF, format_time, utterance_text

SPLITS: tuple[str, ...] = ("train", "dev", "test")


CSV_NAMES: dict[str, str] = {s: f"{s}_sent_emo.csv" for s in SPLITS}


CLIP_DIRS: dict[str, str] = {
    "train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test",
}


SPEAKERS: tuple[str, ...] = (
    "Rachel", "Ross", "Monica", "Chandler", "Joey", "Phoebe", "Gunther", "Janice", "Mike",
)


SIX_CHANNEL_SHARE = 0.25  # share of clips with 5.1 audio (the rest are stereo)


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


# --------------------------------------------------------------------------- whole folder
def split_sizes(clips_per_class: int, eval_clips_per_class: int | None = None) -> dict[str, int]:
    """Utterances per emotion of each split: train ``clips_per_class``, dev and test
    ``eval_clips_per_class`` (default: about a third of train, at least 2)."""
    small = max(2, round(clips_per_class / 3)) if eval_clips_per_class is None else eval_clips_per_class
    return {"train": clips_per_class, "dev": small, "test": small}

"""What the sample CSVs say: MELD's columns, per-emotion sentence templates with neutral
slot fillers, ambiguous sentences shared by all emotions, and the CSV writer (CRLF line
ends, ``"hh:mm:ss,ms"`` times, as the real release)."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from pipeline.writing import write_text_atomic

MELD_COLUMNS: tuple[str, ...] = (
    "Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
    "Season", "Episode", "StartTime", "EndTime",
)


AMBIGUOUS_SHARE = 0.3  # default share of utterances whose text says nothing about the emotion


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
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=MELD_COLUMNS, lineterminator="\r\n", restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    write_text_atomic(path, text.getvalue())
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

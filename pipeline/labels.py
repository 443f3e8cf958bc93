"""Label vocabularies of MELD, in the order the heads' outputs use."""
from __future__ import annotations

EMOTIONS: tuple[str, ...] = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")
SENTIMENTS: tuple[str, ...] = ("neutral", "positive", "negative")
# Regression targets derived from MELD's labels: a sentiment polarity score in [-1, 1].
REGRESSION: tuple[str, ...] = ("polarity",)
POLARITY: dict[str, float] = {"negative": -1.0, "neutral": 0.0, "positive": 1.0}


def label_vocab() -> dict[str, list[str]]:
    """The vocabularies stored in every checkpoint (task -> names)."""
    return {"emotion": list(EMOTIONS), "sentiment": list(SENTIMENTS), "regression": list(REGRESSION)}

"""Text-only fluency measures of replies (repetition, distinct n-grams, compression): the bound that tuning and
calibration keep a strength under, and what the evaluation reports."""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from memory_inception.errors import EvaluationError

_WORD = re.compile(r"\w+(?:'\w+)*")


def words(text: str) -> list[str]:
    """Lowercased word tokens: runs of letters, digits or underscores, with inner apostrophes kept (don't)."""
    return _WORD.findall(text.lower())


def _ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    if n < 1:
        raise EvaluationError(f"n={n}; n-grams need n >= 1")
    tokens = words(text)
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repeated_ngram_rate(text: str, n: int = 3) -> float:
    """Fraction of word n-grams equal to an earlier n-gram of the same text; 0.0 when it has fewer than n words."""
    grams = _ngrams(text, n)
    if not grams:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams)


def distinct_n(text: str, n: int = 2) -> float:
    """Unique word n-grams / total word n-grams; 1.0 when the text has fewer than n words."""
    grams = _ngrams(text, n)
    return len(set(grams)) / len(grams) if grams else 1.0


def compression_ratio(text: str) -> float:
    """UTF-8 bytes / zlib-compressed bytes, as Whisper uses (larger = more repetitive); 0.0 for empty text.

    Short texts score below 1 because of zlib's fixed overhead, so compare texts of similar length.
    """
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


@dataclass(frozen=True)
class Fluency:
    """Mean repetition and diversity measures over a set of texts."""

    repeated_3gram_rate: float
    distinct_2: float
    compression_ratio: float
    n_texts: int


def fluency(texts: Sequence[str]) -> Fluency:
    """Means of repeated 3-gram rate, distinct-2 and compression ratio over `texts`."""
    if isinstance(texts, str):
        raise EvaluationError("fluency takes a list of texts, not one string; wrap it as [text]")
    if not texts:
        raise EvaluationError("fluency got no texts; pass at least one")
    return Fluency(
        repeated_3gram_rate=float(np.mean([repeated_ngram_rate(t, 3) for t in texts])),
        distinct_2=float(np.mean([distinct_n(t, 2) for t in texts])),
        compression_ratio=float(np.mean([compression_ratio(t) for t in texts])),
        n_texts=len(texts),
    )

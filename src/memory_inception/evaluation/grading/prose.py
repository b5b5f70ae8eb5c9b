"""Answers written as words: content keywords, (im)possibility synonyms, agreeing negation."""

from __future__ import annotations

import re

from memory_inception.evaluation.grading.normalize import UNIT_TOKENS

_STOPWORDS = set(
    """the and for are was were with that this from into onto than then there their these those its
    has have had been being which when where while what who whom will would shall should can could may
    might must also both each such only very more most less least per via due all any some other""".split()
)


_NEGATIONS = {"not", "no", "never", "cannot", "can't", "doesn't", "isn't", "won't", "none", "neither", "nor", "without"}


def _words(s: str) -> list[str]:
    s = re.sub(r"\\[a-zA-Z]+", " ", s)
    return [w.lower() for w in re.findall(r"[A-Za-z][A-Za-z'\-]+", s)]


def _content_words(s: str) -> list[str]:
    return [w for w in _words(s) if len(w) >= 3 and w not in _STOPWORDS and w not in _NEGATIONS]


_PROSE_SYNONYMS = [
    (re.compile(r"\bimpossible\b", re.IGNORECASE), "not possible"),
    (
        re.compile(
            r"\b(?:cannot|can't|can\s+not|could\s+not|couldn't|will\s+not|won't|does\s+not|do\s+not)\s+"
            r"(?:take\s+place|occur|happen|proceed)\b",
            re.IGNORECASE,
        ),
        "not possible",
    ),
    (re.compile(r"\b(?:forbidden|disallowed|not\s+allowed)\b", re.IGNORECASE), "not possible"),
]


def _canonical_prose(s: str) -> str:
    """Phrases of (im)possibility in one form: "impossible", "cannot take place", "forbidden" -> "not possible"."""
    for pattern, repl in _PROSE_SYNONYMS:
        s = pattern.sub(repl, s)
    return s


def keyword_recall(reference: str, text: str) -> tuple[float, bool]:
    """Fraction of the reference's content words found in ``text`` (5-letter prefixes), negation agrees?"""
    reference, text = _canonical_prose(reference), _canonical_prose(text)
    ref_words = _content_words(reference)
    have = {w[:5] for w in _words(text)}
    found = sum(w[:5] in have for w in ref_words)
    ref_neg = any(w in _NEGATIONS for w in _words(reference))
    txt_neg = any(w in _NEGATIONS for w in _words(text))
    return found / max(1, len(ref_words)), (not ref_neg or txt_neg)


def prose_words(answer: str) -> list[str]:
    """Content words written as text (inside \\text{...} or bare words), units excluded."""
    blocks = " ".join(re.findall(r"\\text\s*\{([^{}]*)\}", answer))
    answer = re.sub(r"\\(?:begin|end)\s*\{[^{}]*\}", " ", answer)  # environment names are not words
    bare = re.sub(r"\\[a-zA-Z]+|\\text\s*\{[^{}]*\}", " ", answer)
    bare_words = [w for w in re.findall(r"[A-Za-z]{3,}", bare)]
    words = _content_words(blocks) + [w.lower() for w in bare_words if len(w) >= 4]
    return [w for w in words if w not in {u.lower() for u in UNIT_TOKENS}]

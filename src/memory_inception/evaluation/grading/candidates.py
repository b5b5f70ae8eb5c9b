"""Candidate answers in a text: the ``\\boxed{}`` contents, else every math chunk of the scanned text.

Used on replies (what the grader compares with the listed answers) and on questions (what a reply may not
copy, :mod:`.echo`), so both sides go through the same extraction and normalization.
"""

from __future__ import annotations

import re

from memory_inception.datasets.latex_spans import (
    extract_final_answer,
    find_boxed,
    math_segments,
    split_top_level,
)
from memory_inception.evaluation.grading.normalize import norm_latex, split_relations


def candidates(response: str, require_boxed: bool = False) -> tuple[list[str], str | None, bool]:
    """(candidate strings, what was extracted, scanned?) — boxes if any, else every math chunk.

    With boxes (or ``require_boxed``) the candidates are the boxes and their comma-separated parts. Without,
    the text is scanned: the last paragraph's parts, every math segment joined and line by line, each side
    of each relation, and the final-answer phrase (:func:`~memory_inception.datasets.latex_spans.extract_final_answer`).
    """
    boxes = [b.strip() for b in find_boxed(response) if b.strip()]
    if boxes or require_boxed:
        cands: list[str] = []
        for b in boxes:
            cands.append(b)
            cands += split_top_level(b)
        return dedupe(cands), (" ; ".join(boxes) or None), False
    final = extract_final_answer(response)
    segs = math_segments(response)
    paragraphs = [x for x in re.split(r"\n\s*\n", response.strip()) if x.strip()]
    last = re.sub(r"\$", " ", paragraphs[-1]) if paragraphs else ""
    cands = split_top_level(last) if len(last) < 400 else []
    for seg in segs + ([final] if final else []):
        seg = norm_latex(seg)
        seg = re.sub(r"\\(?:begin|end)\{[a-z*]*\}", "\n", seg)
        joined = re.sub(r"\\\\|\n|&", " ", seg).strip()
        cands.append(joined)
        cands += split_relations(joined)
        for line in re.split(r"\\\\|\n|\\quad|\\qquad|\\text\{\s*(?:and|or|,)\s*\}", seg):
            line = line.replace("&", " ").strip()
            cands.append(line)
            for piece in split_top_level(line):
                cands.append(piece)
                cands += split_relations(piece)
    return dedupe([c for c in cands if c.strip()]), final, True


def final_candidates(response: str) -> list[str]:
    """The final answer's own candidates: the last box and its parts, else the extracted final answer's parts.

    Relations are not split: in ``x_0 = 0`` the bare ``0`` is x_0's value, not a final answer of its own.
    """
    boxes = [b.strip() for b in find_boxed(response) if b.strip()]
    final = boxes[-1] if boxes else extract_final_answer(response)
    if not final:
        return []
    final = norm_latex(final)
    return dedupe([final, *split_top_level(final)])


def dedupe(items: list[str]) -> list[str]:
    """``items`` stripped, without empties and repeats, first occurrence kept."""
    seen, out = set(), []
    for it in items:
        k = it.strip()
        if k and k not in seen:
            seen.add(k)
            out.append(k)
    return out

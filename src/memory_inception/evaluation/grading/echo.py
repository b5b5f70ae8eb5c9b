"""What a reply copies from its question earns no credit.

The question is read with the same candidate scan and the same normalization as a reply
(:func:`~.candidates.candidates`, :func:`~.normalize.text_key`). A reply candidate whose text key is one of
the question's (:func:`copied`) is dropped before matching (:func:`own_candidates`), unless it is a bare trivial value
(``0``, ``1/2``, ``K``: :func:`is_trivial`) in a final answer of the reply's own, or the reply's final answer
picking exactly one option of a multiple-choice question (:func:`picked_option`). For the text fallbacks (reference
text contained in the reply, prose key words) the reply's own text is used (:func:`own_text`): math
segments copied from the question and runs of :data:`COPY_RUN` or more words that the question contains are
blanked out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from memory_inception.datasets.latex_spans import MATH_SEGMENT, math_segments, strip_boxed
from memory_inception.evaluation.grading.candidates import candidates
from memory_inception.evaluation.grading.normalize import (
    is_unit_tail,
    leading_number,
    norm_latex,
    prepare,
    strip_units,
    text_key,
)
from memory_inception.evaluation.grading.parsing import to_sympy

#: A run of this many consecutive words shared with the question counts as copied text.
COPY_RUN = 5


@dataclass(frozen=True)
class QuestionText:
    """What a reply could copy from one question: its candidates' text keys, its word runs, its options."""

    keys: frozenset[str]
    runs: frozenset[tuple[str, ...]]
    options: tuple[str, ...]


def segment_key(segment: str) -> str:
    """The text key of one math segment, joined over lines as the candidate scan joins it."""
    seg = re.sub(r"\\(?:begin|end)\{[a-z*]*\}", "\n", norm_latex(segment))
    return text_key(re.sub(r"\\\\|\n|&", " ", seg))


@lru_cache(maxsize=2048)
def read_question(question: str) -> QuestionText:
    """Keys of every candidate the scan finds in ``question`` (and of its math segments), its word runs, its options."""
    if not isinstance(question, str) or not question.strip():
        return QuestionText(frozenset(), frozenset(), ())
    cands, _, _ = candidates(question)
    keys = {text_key(c) for c in cands} | {segment_key(s) for s in math_segments(question)}
    words = _words(question)
    runs = {tuple(words[i : i + COPY_RUN]) for i in range(len(words) - COPY_RUN + 1)}
    return QuestionText(frozenset(k for k in keys if k), frozenset(runs), tuple(options(question)))


def is_trivial(value: str) -> bool:
    """A bare value too common to be evidence: one symbol (``K``, ``r_0``) or a small rational (0, -2, 1/2, 0.25).

    Small rational: n/q with |n| <= 10 and q <= 4. ``value`` is a prepared answer part (no left-hand side).
    """
    s = strip_units(norm_latex(strip_boxed(value))).strip().strip("$").strip()
    if not s:
        return False  # nothing left but words: prose, not a bare value
    if re.fullmatch(r"[-+]?\(?(?:\\[A-Za-z]+|[A-Za-z])(?:_\{?[A-Za-z0-9]+\}?)?'*\)?", s):  # K, r_0, (c)
        return True
    lead = leading_number(s)
    if lead is not None and not lead[1]:
        v = lead[0]
    elif re.fullmatch(r"[-+]?\s*(?:\\frac\s*\{\s*\d+\s*\}\s*\{\s*\d+\s*\}|\d+\s*/\s*\d+)", s):
        expr = to_sympy(s)
        if expr is None or not expr.is_Rational:
            return False
        v = float(expr)
    else:
        return False
    if v == 0:
        return True
    return any(round(v * q) != 0 and abs(round(v * q)) <= 10 and abs(v * q - round(v * q)) < 1e-9 for q in (1, 2, 3, 4))


def copied(candidate: str, question: QuestionText) -> bool:
    """True when ``candidate`` (a reply's candidate answer) is text the question prints."""
    key = text_key(candidate)
    return bool(key) and key in question.keys


def own_candidates(cands: list[str], final: list[str], question: QuestionText, pick: str | None = None) -> list[str]:
    """The reply's own candidates: those not :func:`copied` from the question, with two exceptions.

    A bare trivial value (``0``, ``1/2``) the question also prints is kept when it is part of a final answer
    that is not itself a copy; the key of a multiple-choice pick (``pick``, from :func:`picked_option`) is kept.
    """
    final_copied = bool(final) and copied(final[0], question)
    finals = set() if final_copied else {text_key(c) for c in final}
    return [
        c for c in cands
        if not copied(c, question) or text_key(c) == pick or (is_trivial(c) and text_key(c) in finals)
    ]


def picked_option(final: list[str], cands: list[str], question: QuestionText, boxed: bool) -> str | None:
    """The option key the reply picks: its final answer names exactly one option of a multiple-choice question,
    and either the answer is boxed or the reply names no other option anywhere (a copied list picks nothing)."""
    if not question.options:
        return None
    hits = {o for o in question.options if o in {k for c in final for k in _option_forms(c)}}
    if len(hits) != 1:
        return None
    named = {o for o in question.options if o in {text_key(c) for c in cands}}
    return next(iter(hits)) if boxed or named <= hits else None


def _option_forms(candidate: str) -> set[str]:
    """Keys under which a final answer may name an option: as written, prepared, and its number without the unit."""
    forms = {text_key(candidate), text_key(prepare(candidate))}
    lead = leading_number(prepare(candidate))
    if lead is not None and lead[1] and is_unit_tail(lead[1]):
        forms.add(text_key(prepare(candidate)[: -len(lead[1])]))
    return forms


def own_text(response: str, question: QuestionText, keep: str | None = None) -> str:
    """``response`` with what it copies from the question blanked: copied math segments, copied runs of words.

    Word runs are looked for in the text between math segments only (math is compared as segments). A segment
    whose key is ``keep`` (a multiple-choice pick) and bare trivial values stay.
    """
    out, pos = [], 0
    for m in MATH_SEGMENT.finditer(response):
        out.append(_blank_runs(response[pos : m.start()], question))
        inner = next(g for g in m.groups() if g is not None)
        key = segment_key(inner)
        out.append(" " if key in question.keys and key != keep and not is_trivial(inner) else m.group(0))
        pos = m.end()
    out.append(_blank_runs(response[pos:], question))
    return "".join(out)


def _blank_runs(text: str, question: QuestionText) -> str:
    """``text`` with every run of :data:`COPY_RUN` words that the question also contains blanked."""
    tokens = list(re.finditer(r"[A-Za-z0-9]+", text))
    words = [t.group(0).lower() for t in tokens]
    masked = [False] * len(words)
    for i in range(len(words) - COPY_RUN + 1):
        if tuple(words[i : i + COPY_RUN]) in question.runs:
            masked[i : i + COPY_RUN] = [True] * COPY_RUN
    out, pos = [], 0
    for tok, hide in zip(tokens, masked):
        if hide:
            out.append(text[pos : tok.start()] + " ")
            pos = tok.end()
    out.append(text[pos:])
    return "".join(out)


_OPTION_ITEM = r"\$[^$\n]{1,60}\$|(?<![\w.^{])[-+]?\d+(?:\.\d+)?(?![\w.])"
_INLINE_OPTIONS = re.compile(rf"(?:{_OPTION_ITEM})(?:\s*(?:,|;|\bor\b)\s*(?:{_OPTION_ITEM})){{2,}}")
_LABELLED_OPTION = re.compile(r"^\s*\(([a-h])\)\s*(.{1,100}?)\s*$", re.MULTILINE)


def options(question: str) -> list[str]:
    """Text keys of the options a multiple-choice question offers (empty when it offers none).

    Two forms: an inline list of three or more values (``$10^{-5}$, $10^{-2}$, $10^1$``, ``0.02, 0.2, 20``),
    or two or more short lines labelled ``(a)``, ``(b)``, ... that contain math or a number.
    """
    out: list[str] = []
    for m in _INLINE_OPTIONS.finditer(question):
        out += [_option_key(x.group(0)) for x in re.finditer(_OPTION_ITEM, m.group(0))]
    labelled = [m.group(2) for m in _LABELLED_OPTION.finditer(question) if re.search(r"\$|\d", m.group(2))]
    if len(labelled) >= 2:
        out += [_option_key(x) for x in labelled]
    return [k for k in dict.fromkeys(out) if k]


def _option_key(item: str) -> str:
    return text_key(item.strip().strip("$").rstrip(";,.").strip().strip("$"))


def _words(text: str) -> list[str]:
    return [w.lower() for w in re.findall(r"[A-Za-z0-9]+", text)]

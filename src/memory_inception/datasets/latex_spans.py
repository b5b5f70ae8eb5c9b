"""LaTeX answer spans in text: boxed contents, math segments, the final answer, top-level parts.

Shared by the data loader (answers inside reference solutions) and the graders (answers inside replies)."""

from __future__ import annotations

import re
from typing import Any

_BOX_START = re.compile(r"\\boxed\s*\{|\\fbox\s*\{|(?<![\\A-Za-z])boxed\s*\{|\\boxed\s+(?=[^\s{])")


def _closing_brace(text: str, open_pos: int) -> int:
    """Index of the brace closing the one at ``open_pos`` (escaped braces ignored), or -1."""
    depth = 0
    i = open_pos
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def find_boxed(text: str, with_positions: bool = False) -> list[Any]:
    """All ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed x`` contents in order (balanced braces).

    Also accepts ``boxed{`` whose backslash was lost (HARDMath solutions contain ``$boxed{``). Boxes
    inside boxes are not reported separately. With ``with_positions`` items are ``(start, content)``.
    """
    out: list[Any] = []
    pos = 0
    while True:
        m = _BOX_START.search(text, pos)
        if m is None:
            break
        if m.group(0).endswith("{"):
            end = _closing_brace(text, m.end() - 1)
            if end < 0:
                pos = m.end()
                continue
            content, pos = text[m.end() : end], end + 1
        else:  # "\boxed 5": one token
            tok = re.match(r"[^\s$]+", text[m.end() :])
            content = tok.group(0) if tok else ""
            pos = m.end() + len(content)
        out.append((m.start(), content) if with_positions else content)
    return out


def strip_boxed(text: str) -> str:
    """``\\boxed{X}`` (whole string) -> ``X``; anything else unchanged apart from surrounding space."""
    s = text.strip()
    boxes = find_boxed(s, with_positions=True)
    if len(boxes) == 1 and boxes[0][0] == 0:
        start, content = boxes[0]
        if s.endswith("}") and _closing_brace(s, s.index("{")) == len(s) - 1:
            return content.strip()
    return s


#: A math segment: ``$$..$$``, ``\\[..\\]``, ``\\(..\\)`` or ``$..$`` (the first non-None group is its content).
MATH_SEGMENT = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|\$(.+?)\$", re.DOTALL)


_FINAL_PHRASE = re.compile(
    r"(?:final\s+answers?(?:\s+(?:is|are|was|were))?|answers?\s+(?:is|are)|answer(?=\s*:))\s*[:=]?\s*(.+)", re.IGNORECASE
)


def math_segments(text: str) -> list[str]:
    """Contents of the math segments in ``text`` in order: ``$$..$$``, ``\\[..\\]``, ``\\(..\\)``, ``$..$``."""
    return [next(g for g in m.groups() if g is not None) for m in MATH_SEGMENT.finditer(text)]


def extract_final_answer(text: str | None) -> str | None:
    """The final answer in ``text``, or None.

    Order: (1) the content of the last ``\\boxed{}`` / ``\\fbox{}`` / ``\\boxed x``; (2) the rest of the
    line after the last "final answer(s) ... :", "answer is/are ..." or "answer:" phrase (surrounding
    ``$`` / ``\\[ \\]`` stripped); (3) the last math segment (``$$..$$``, ``\\[..\\]``, ``\\(..\\)``,
    ``$..$``). Empty results are skipped.
    """
    if not isinstance(text, str) or not text.strip():
        return None
    boxes = [b.strip() for b in find_boxed(text) if b.strip()]
    if boxes:
        return boxes[-1]
    phrases = list(_FINAL_PHRASE.finditer(text))
    for m in reversed(phrases):
        line = m.group(1).split("\n")[0].strip()
        line = re.sub(r"\$+|\\\[|\\\]|\\\(|\\\)", " ", line).strip().rstrip(".").strip()
        if line:
            return line
    segs = [s.strip() for s in math_segments(text) if s.strip()]
    # A trailing bare symbol ("at time $t$", "$p_i$ = 0") is a mention, not an answer: skip such fragments.
    for seg in reversed(segs):
        if not _is_fragment(seg):
            return seg
    return segs[-1] if segs else None


_FRAGMENT = re.compile(r"[(|]?\s*(?:\\[A-Za-z]+|[A-Za-z])(?:'+)?(?:_\{?[A-Za-z0-9]+\}?)?\s*[)|]?\s*[.,;]?")


def _is_fragment(seg: str) -> bool:
    """A lone symbol or label (``t``, ``p_i``, ``\\lambda_1``, ``(c)``): no number, operator or relation."""
    return bool(_FRAGMENT.fullmatch(seg.strip()))


_OPEN = "([{"


_CLOSE = ")]}"


def split_top_level(text: str, seps: str = ",;") -> list[str]:
    """Split at separators outside any bracket; an enclosing ``[...]`` / ``\\left[...\\right]`` is removed."""
    s = text.strip()
    s = re.sub(r"\\[ ,;:!]|\\q?quad|~", " ", s)
    s = s.replace("\\left", "").replace("\\right", "")
    s = re.sub(r"\\\{", "(", s)
    s = re.sub(r"\\\}", ")", s)
    s = s.strip()
    lhs_list = re.match(r"^[A-Za-z_{}\\()\s]*=\s*(?=\[)", s)
    if lhs_list and s.endswith("]") and match_bracket(s, lhs_list.end()) == len(s) - 1:
        s = s[lhs_list.end() :]
    if s.startswith("[") and s.endswith("]") and match_bracket(s, 0) == len(s) - 1:
        s = s[1:-1]
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth = max(0, depth - 1)
        if ch in seps and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def match_bracket(s: str, i: int) -> int:
    """Index of the bracket closing the one at ``s[i]`` (any of ``([{``, nesting counted), or -1."""
    depth = 0
    for j in range(i, len(s)):
        if s[j] in _OPEN:
            depth += 1
        elif s[j] in _CLOSE:
            depth -= 1
            if depth == 0:
                return j
    return -1

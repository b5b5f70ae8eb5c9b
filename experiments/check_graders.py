"""Checks of the offline graders: self-check (misses), echo check (credit for copying), cross check (false positives).

- Self-check: every HARDMath mini problem (366) and every text-only PHYSICS validation problem (231) graded
  with its own reference *solution text* as the reply; the grader extracts the final answer(s) exactly as from
  a model. Show-that problems (every listed answer printed in the question) are left out and listed.
- Echo check: every problem graded with its own *question* as the reply (should credit nothing).
- Cross check: problems graded with *other* problems' reference solutions: ``--pairs`` seeded random pairs
  (default 120, the audit's size) and one seeded same-kind pair per problem; every credited pair is listed.

Writes ``reports/graders.md``. Usage:
``.venv/bin/python experiments/check_graders.py [--limit N] [--pairs 120] [--seed 0] [--out reports/graders.md]``
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import defaultdict
from pathlib import Path

from memory_inception.datasets.reasoning_problems import load_hardmath, load_physics, physics_errata
from memory_inception.evaluation.grading import grade_hardmath, grade_physics, stated_answers
from memory_inception.evaluation.grading.audit import cross_check, draw_pairs, echo_check, false_positives, self_check

NOTES = """
## How the graders decide (summary; the rules are the docstring of `memory_inception/evaluation/grading/__init__.py`)

- Extraction: last `\\boxed{}` (balanced braces; `\\fbox`, `\\boxed x`, and `boxed{` with a lost
  backslash, which HARDMath solutions contain), else the "final answer ... :" / "answer is" phrase, else
  the last math segment. Multi-part HARDMath answers take the last box, extended by earlier boxes until
  there are as many parts as reference parts; parts are matched to references by maximum bipartite
  matching (order free). Left-hand sides (`y =`, `I(x) \\approx`, `\\epsilon =`) and units are dropped.
- Comparison is numeric first: both sides evaluated (sympy, 30 digits, mpmath magnitudes so `e^{-700}`
  does not underflow) at the same points, relative tolerance `rtol` = 1e-2 by default. Symbolic
  simplification is only a fallback for expressions with <= 40 operations and runs under a 2 s deadline.
- HARDMath upstream grades nondimensionalization with `sympy.simplify(a - b) == 0` and everything else with
  a GPT-4o judge (full credit for a matching formula; partial credit per matching root / regime). Offline we
  use: symbolic epsilon - identity at 4 random positive points (rtol 1e-6); numeric epsilon - within half a
  unit of the stated 2-decimal precision or 1e-2 relative; Laplace integrals - the formula at
  `large_eval_point` and twice it; three-regime integrals - each formula at epsilon = 0.1, 1, 10; ODE -
  small-x formula at x = p, 5p, 10p (p = `small_eval_point`; a bare constant `y = 1` fails), large-x
  formula at `large_eval_point` (real odd roots, as the dataset's own values use); polynomial roots - the
  root values at epsilon = 0.1 and 10, one-to-one, score = mean fraction over the two regimes. We compare
  against the reference *formulas*, not the stored `*_numerical` ground truth: the references themselves
  are only leading-order approximations (e.g. ODE large-x values are ~10% off the numerical solution), so a
  1e-2 tolerance against the numerical truth would fail the answer key itself. The stored
  `small_analytical` root lists disagree with the root formulas for some rows (e.g. hardmath/132,
  hardmath/144: `sqrt(-1/eps)` stored as real numbers), so root values are recomputed from the formulas.
- PHYSICS upstream compares every boxed answer with the listed answers by sympy and falls back to GPT-4o
  (always GPT-4o when `\\text` is present). Offline, per listed answer: loose text equality; numbers with
  units stripped, 1e-2 relative (a `%` candidate may also be read as a fraction); expressions at 4 seeded
  random points, 1e-2 relative; answers listing several values need all of them; non-parseable references
  (matrices, operators, prose) - the reference text contained in the candidate text, or for prose >= 75%
  of its content words present with agreeing negation. Unit conversions (mH vs H) are not attempted.
- General PHYSICS rules (none keyed to a problem id or answer string), each with equivalent and
  non-equivalent hand-made cases in `tests/test_grading.py`:
  - definitions the response states (`X = expr` with a single-symbol `X`, every relation in the chain
    `=`) are substituted (up to 3 rounds) into a candidate that uses symbols the reference lacks, e.g.
    `2d\\sin\\theta/m` with "where $d = 1/N$"; the reference's own symbols are never rewritten, and the
    result must still agree numerically with the reference;
  - a one-letter function of coordinates only (`V(\\mathbf{r})`, `\\psi(x, t)`) may be written without its
    arguments (`V`): the reference is retried with such arguments dropped (math comparison only);
  - `\\frac{\\partial f}{\\partial x}` and `\\frac{\\partial}{\\partial x} f` are the same text form;
  - prose: "impossible", "cannot take place / occur / happen", "forbidden", "not allowed" all read as
    "not possible" (the negation check still applies);
  - a final answer that is only a choice label (`(c)`, `\\boxed{b}`) is resolved to that option's text
    when the question lists "(c) ..." on one line; another label selects another option and fails;
  - parsing: bare `exp(`/`sin(`/`ln(` get their backslash, a symbol `d` before a command is not read
    as a differential (`2d\\sin\\theta`), and `\\sin\\theta/m` is read as `\\sin(\\theta)/m`;
  - extraction skips a trailing lone symbol (`$t$`, `$p_i$`, `$(c)$`) for the last substantive segment.
- A reply earns no credit for what it copies from the question: the question is read with the same candidate
  scan and normalization as a reply, and a reply candidate whose normalized text the question prints is
  dropped before matching (a bare trivial value such as `0` in the reply's own final answer, and a final
  answer picking exactly one option of a multiple-choice question, are kept); the text fallbacks read the
  reply with copied math segments and copied runs of 5+ words blanked. The same expression derived by the
  reply, where the question does not print it, still earns credit (tests in `tests/test_grading.py`).
- Show-that problems: a listed answer the question itself states (read strictly: equal text, equal
  expression, or a number with the same unit; never prose, a bare trivial value, or a multiple-choice option)
  is not graded, because matching it would credit copying and judging whether a derivation reaches a printed
  result needs a judge. A problem whose every listed answer is stated is left out (status `show-that`) and
  listed below; otherwise the score is over the remaining answers.
- Bare trivial references (`E^{(1)} = 0`, `\\Delta E_0 < 0`, `K`) in a problem with nothing else to match need the
  same left-hand side or the reply's final answer; `math_verify` (for unparseable references) never accepts a
  bare value or a candidate using symbols the reference lacks; a condition after a value (`, r > R`,
  `\\text{at} r = a`) is not part of it; a subscripted `E`/`e` (`E_0`) parses as a symbol, not Euler's number.
  These closed the false positives the cross check found (`4E_0` parsed as 0, `\\to 0` matching any `0`,
  `r > R` reducing an answer to `R`, `math_verify` equating a sum with `0`).
- Timeouts and grader errors are statuses (`timeout`, `error`), never a silent "incorrect"; bounded steps
  that ran out of time are counted per grade (`step_timeouts`).
- The reference solutions are **not boxed**, so this self-check exercises the unboxed fallback: every
  math chunk of the solution (each side of each relation) is a candidate. That is lenient by design
  and flagged in `Grade.detail` ("scanned unboxed text"); prompt models to box their answers, or pass
  `require_boxed=True` to `grade_physics` for strict grading.

### Errata and the remaining PHYSICS failures

Each failure was checked by hand. Where the shipped reference solution does not state a listed answer (it
is incomplete or has a typo), that answer is an erratum in `data/physics/errata.json` (id, answer index,
what the solution writes): the self-check sets it aside, since grading a solution against an answer it
does not reach measures the solution, not a miss. The errata are never read by the graders; the summary
also gives the self-check as shipped (errata counted as misses): 214/227. The errata:
atomic/1-25 (the text ends before the `\\sin^2` / `\\cos^2` result), quantum/6040 (the final line drops the
`t` in the exponent), quantum/5060 (`- \\hbar\\omega_l +` where the listed answer has `\\hbar\\omega_l` inside
the sum), electro/4_29 (`\\cos\\theta` for `\\cos\\theta''` in the final `R`), quantum/4010 (the solution's `H`
keeps the `A^2` term), electro/1_60 (`QK/(4\\pi\\sigma)` for `QK/(4\\pi a)`), statistics/1-83 (`l^2` for
`l_0^2`), electro/2_13 (`k` for `k_e`).

The failures left are grader misses, not forced by id-specific rules:
- electro/4_29 part 1: `\\arcsin \\left( .. \\right)^{1/2}` reads, as written, as the square root of the
  arcsine;
- notation or substitution: statistics/2-127 (`F` for a general `V`, listed with `V_1`), optics/3-3
  (`c/2l` vs `c/(2 \\times 0.5)`: the question's number would have to be substituted);
- prose below the 75% keyword threshold: quantum/5032 (the state table), quantum/3-3048 and
  statistics/2-120 (lowering the threshold would let wrong prose answers through).
A model answer in these problems is still graded correct when it writes the listed form, but PHYSICS scores
from these graders are a **lower bound** on what an LLM judge would give for such problems. Two errata
(electro/1_60, statistics/1-83) passed the old grader only through false positives the cross check exposed
(a condition `r = a` reducing the listed answer to `a`; the word "const."), which is why the self-check as
shipped fell from 220/231 to 214/227. quantum/4010's `g` values (a markdown table against a LaTeX array
with a `:` column) are credited since punctuation-only cells are layout (`_table_cells`).
"""


def _cell(text: str | None, n: int) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")[:n]


def _gradable(rows):  # type: ignore[no-untyped-def]
    """Rows with something to check: not show-that, and not every listed answer an erratum."""
    return [r for r in rows if r.grade.status != "show-that" and not r.all_set_aside]


def _shipped(rows) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(credited, graded) over every listed answer as the texts ship, errata included."""
    graded = [r for r in rows if r.as_shipped.status != "show-that"]
    return sum(r.as_shipped.correct for r in graded), len(graded)


def _section(title: str, rows, wall: float) -> list[str]:  # type: ignore[no-untyped-def]
    gradable = _gradable(rows)
    left_out = [r for r in rows if r.grade.status == "show-that"]
    errata = [r for r in rows if r.set_aside]
    by_kind: dict[str, list] = defaultdict(list)
    for r in gradable:
        by_kind[r.problem.kind].append(r)
    n_ok = sum(r.grade.correct for r in gradable)
    mean_score = sum(r.grade.score for r in gradable) / max(1, len(gradable))
    out = [f"## {title}", ""]
    out.append(
        f"Correct: **{n_ok}/{len(gradable)} = {100 * n_ok / max(1, len(gradable)):.1f}%** of the gradable problems "
        f"(mean partial score {mean_score:.3f}; {n_ok}/{len(rows)} = {100 * n_ok / max(1, len(rows)):.1f}% of all "
        f"{len(rows)}); wall time {wall:.1f} s, slowest problem {max(r.seconds for r in rows):.2f} s. "
        f"Show-that problems left out: {len(left_out)}; listed answers stated in the question and not graded in the "
        f"other problems: {sum(r.grade.stated for r in gradable)}; timed out: "
        f"{sum(r.grade.status == 'timeout' for r in rows)}, errors: {sum(r.grade.status == 'error' for r in rows)}."
    )
    if errata:
        n_ship, of_ship = _shipped(rows)
        out[-1] += (
            f" Errata set aside: {sum(len(r.set_aside) for r in errata)} listed answer(s) of {len(errata)} problem(s) that "
            f"the shipped solution does not state ({sum(r.all_set_aside for r in errata)} problem(s) with nothing left "
            f"to check); over every listed answer as shipped: {n_ship}/{of_ship} = {100 * n_ship / max(1, of_ship):.1f}%."
        )
    out += ["", "| kind / subject | n | correct | rate | mean score | time (s) |", "|---|---|---|---|---|---|"]
    for kind, items in by_kind.items():
        k_ok = sum(r.grade.correct for r in items)
        out.append(
            f"| {kind} | {len(items)} | {k_ok} | {100 * k_ok / len(items):.1f}% | "
            f"{sum(r.grade.score for r in items) / len(items):.3f} | {sum(r.seconds for r in items):.1f} |"
        )
    if left_out:
        out += ["", f"Show-that problems left out ({len(left_out)}): "
                + ", ".join(f"{r.problem.id} ({len(r.problem.answers)} listed answer(s), all printed in the question)" for r in left_out) + "."]
    if errata:
        out += ["", (f"Errata set aside ({len(errata)} problems; `data/physics/errata.json`, checked by hand): the listed answer "
                "is not what the reference solution states, so grading that solution against it cannot measure a miss. "
                "Graded as shipped, these problems are credited "
                f"{sum(r.as_shipped.correct for r in errata)} time(s); with the errata set aside, "
                f"{sum(r.grade.correct for r in errata if not r.all_set_aside)} of the "
                f"{sum(not r.all_set_aside for r in errata)} with answers left."), "",
                "| id | answer | what the solution writes | graded on the rest |", "|---|---|---|---|"]
        for r in errata:
            rest = "nothing left" if r.all_set_aside else ("correct" if r.grade.correct else f"**missed** ({r.grade.score:.2f})")
            for index, why in sorted(r.set_aside.items()):
                out.append(f"| {r.problem.id} | [{index + 1}] | {_cell(why, 220)} | {rest} |")
    fails = [r for r in gradable if not r.grade.correct]
    out += ["", f"### Failures ({len(fails)})", ""]
    if fails:
        out += ["| id | kind | status | score | extracted (truncated) | reason |", "|---|---|---|---|---|---|"]
        for r in fails:
            out.append(f"| {r.problem.id} | {r.problem.kind} | {r.grade.status} | {r.grade.score:.2f} | "
                       f"`{_cell(r.grade.extracted, 90)}` | {_cell(r.grade.detail, 300)} |")
    out.append("")
    return out


def _echo_section(results: dict[str, list]) -> list[str]:  # type: ignore[type-arg]
    out = ["## Echo check: each question graded as its own reply", "",
           "Measures credit for copying: a reply that only restates the question must earn nothing. Before the echo "
           "rule (commit 7229993) the grader credited 51 of 231 PHYSICS questions at least partly (19 fully).", ""]
    out += ["| benchmark | questions | graded | credited correct | credited partly |", "|---|---|---|---|---|"]
    partial_rows = []
    for name, rows in results.items():
        ok = [r for r in rows if r.grade.status == "ok"]
        part = [r for r in ok if r.grade.score > 0]
        partial_rows += part
        out.append(f"| {name} | {len(rows)} | {len(ok)} | {sum(r.grade.correct for r in ok)} | {len(part)} |")
    if partial_rows:
        out += ["", "Partly credited questions:", ""] + [f"- {r.problem.id}: {_cell(r.grade.detail, 240)}" for r in partial_rows]
    return out + [""]


def _cross_section(results: dict[str, dict[str, tuple]], n_pairs: int, seed: int) -> list[str]:  # type: ignore[type-arg]
    out = ["## Cross check: problems graded with other problems' reference solutions", "",
           "Measures false positives: each reply is a fluent, on-topic worked solution, but to another problem, so "
           "any credit is wrong unless the two problems share their reference answer (checked by grading the other "
           "problem's listed answers, boxed; such pairs are listed and not counted). The self-check above measures "
           f"only misses. Pairs: {n_pairs} seeded random pairs per benchmark (seed {seed}; graded problems with a "
           "verdict, show-that problems excluded) and one seeded same-kind pair per problem (similar symbols and "
           "formulas: the harder case). Target: false positives <= 2% on the random pairs. The audit of the old grader "
           "found 3 credited pairs in 120 PHYSICS pairs (2.5%, another draw). The old grader (commit 7229993, before "
           "the echo rule) on the default draw (seed 0, 120 pairs), measured once by hand: 0 of the 120 random PHYSICS "
           "pairs and 2 of the 227 same-kind pairs credited (quantum/5035 with the solution of quantum/1-1022, through "
           "math_verify; quantum/1-1024 with that of quantum/4010, `4E_0` parsed as a number).", ""]
    out += ["| benchmark | pairs | with a verdict | credited | same answer | false positives | rate |", "|---|---|---|---|---|---|---|"]
    listed = []
    for name, by_design in results.items():
        for design, (graded, credited) in by_design.items():
            fp, n = false_positives(graded, credited)
            out.append(f"| {name} ({design}) | {len(graded)} | {n} | {len(credited)} | "
                       f"{sum(c.same_answer for c in credited)} | {fp} | {100 * fp / max(1, n):.1f}% |")
            listed += [(name, design, c) for c in credited]
    out += ["", f"Every credited pair ({len(listed)}):", ""]
    if listed:
        out += ["| benchmark | pairs | graded problem | reply: solution of | same answer? | reason |", "|---|---|---|---|---|---|"]
        for name, design, c in listed:
            out.append(f"| {name} | {design} | {c.problem.id} | {c.source.id} | {'yes' if c.same_answer else '**no**'} | "
                       f"{_cell(c.grade.detail, 200)} |")
    else:
        out.append("(none)")
    return out + [""]


def _summary(self_rows: dict, echo: dict, cross: dict, n_pairs: int) -> list[str]:  # type: ignore[type-arg]
    """The headline numbers against their targets, one line per benchmark and check, saying what each measures."""
    out = ["## Summary", "", "| benchmark | check | what it measures | result | target | met? |", "|---|---|---|---|---|---|"]
    for name, rows in self_rows.items():
        gradable = [r for r in _gradable(rows) if r.grade.status == "ok"]
        ok = sum(r.grade.correct for r in gradable)
        rate = ok / max(1, len(gradable))
        n_show = sum(r.grade.status == "show-that" for r in rows)
        errata = [r for r in rows if r.set_aside]
        left = f"{n_show} show-that left out" + (
            f"; {sum(len(r.set_aside) for r in errata)} listed answers of {len(errata)} problems set aside as errata, "
            f"{sum(r.all_set_aside for r in errata)} problems with nothing left" if errata else "")
        out.append(f"| {name} | self-check | misses: reference solutions not credited ({left}) | {ok}/{len(gradable)} = "
                   f"{100 * rate:.1f}% | >= 95% | {'yes' if rate >= 0.95 else '**no**'} |")
        if errata:
            n_ship, of_ship = _shipped(rows)
            out.append(f"| {name} | self-check, as shipped | the same, errata included (a solution that does not reach its "
                       f"listed answer counts as a miss) | {n_ship}/{of_ship} = {100 * n_ship / max(1, of_ship):.1f}% | "
                       "(for reference) | |")
        copied = sum(r.grade.score > 0 for r in echo[name] if r.grade.status == "ok")
        out.append(f"| {name} | echo check | credit for restating the question | {copied}/{len(echo[name])} credited at all "
                   f"| 0 | {'yes' if copied == 0 else '**no**'} |")
        graded, credited = cross[name]["random"]
        fp, n = false_positives(graded, credited)
        out.append(f"| {name} | cross check ({n_pairs} random pairs) | false positives: credit for another problem's "
                   f"solution | {fp}/{n} = {100 * fp / max(1, n):.1f}% | <= 2% | {'yes' if fp <= 0.02 * n else '**no**'} |")
        graded, credited = cross[name]["same kind"]
        fp, n = false_positives(graded, credited)
        out.append(f"| {name} | cross check (same kind, one pair per problem) | false positives between similar "
                   f"problems | {fp}/{n} = {100 * fp / max(1, n):.1f}% | (none set) | |")
    return out + [""]


def main() -> None:
    """Run the three checks with the offline graders and write the markdown report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="only the first N problems per benchmark")
    ap.add_argument("--pairs", type=int, default=120, help="random cross pairs per benchmark")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("reports/graders.md"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    benchmarks = {"HARDMath": (load_hardmath(limit=args.limit), grade_hardmath),
                  "PHYSICS": (load_physics(limit=args.limit), grade_physics)}
    lines = [
        "# Offline grader checks",
        "",
        "Three measurements, produced by `experiments/check_graders.py`:",
        "",
        "- **Self-check** (misses): each problem's reference solution text is graded as if it were a model reply; "
        "the grader extracts the final answer(s) the solution states and compares them with the stored answer(s). "
        "Target: at least 95% of the gradable problems per benchmark.",
        "- **Echo check** (credit for copying): each question graded as its own reply; should credit nothing.",
        "- **Cross check** (false positives): each problem graded with another problem's reference solution; "
        "target at most 2% credited on the random pairs.",
        "",
    ]
    titles = {"HARDMath": "HARDMath mini", "PHYSICS": "PHYSICS validation, text-only"}
    summary = []
    echo, cross, self_rows = {}, {}, {}
    for name, (problems, grader) in benchmarks.items():
        t0 = time.perf_counter()
        rows = self_check(problems, grader, physics_errata() if name == "PHYSICS" else None)
        self_rows[name] = rows
        lines += _section(f"Self-check: {titles[name]}", rows, time.perf_counter() - t0)
        gradable = _gradable(rows)
        summary.append(f"{name} self-check: {sum(r.grade.correct for r in gradable)}/{len(gradable)} gradable "
                       f"({len(rows) - len(gradable)} show-that or errata-only left out); as shipped %d/%d" % _shipped(rows))
        echo[name] = echo_check(problems, grader)
        with_verdict = [p for p in problems if not all(stated_answers(p))] if name == "PHYSICS" else problems
        cross[name] = {"random": cross_check(draw_pairs(with_verdict, args.pairs, args.seed), grader),
                       "same kind": cross_check(draw_pairs(with_verdict, None, args.seed, same_kind=True), grader)}
        for design, (graded, credited) in cross[name].items():
            fp, n = false_positives(graded, credited)
            summary.append(f"{name} cross ({design}): {fp}/{n} false positives, {len(credited)} credited")
    lines[lines.index("## Self-check: HARDMath mini"):lines.index("## Self-check: HARDMath mini")] = _summary(
        self_rows, echo, cross, args.pairs)
    lines += _echo_section(echo)
    lines += _cross_section(cross, args.pairs, args.seed)
    lines += NOTES.splitlines()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for line in summary:
        print(line)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

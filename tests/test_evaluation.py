"""The evaluation suite: configs, resumable JSONL runs, metrics on hand-made inputs, and a smoke run of every task."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from memory_inception.cli import app
from memory_inception.errors import EvaluationError
from memory_inception.evaluation import (
    TASKS,
    get_task,
    load_config,
    read_records,
    run_task,
    write_report,
)
from memory_inception.evaluation.analysis import (
    above_zero,
    below_zero,
    control_and_drift,
    fmt_interval,
    nanmean,
    paired_margin_shift,
)
from memory_inception.evaluation.tasks.capability import accuracy_change
from memory_inception.evaluation.tasks.dialogue import aligned, parse_pair, variants
from memory_inception.evaluation.tasks.kv_storage import KVDims, published_dims
from memory_inception.evaluation.tasks.persistence import cut
from memory_inception.evaluation.tasks.personality import (
    control_rows,
    judge_scores,
    likert_scores,
    statement_scores,
    summary_rows,
)

runner = CliRunner()

SMOKE = """
model = "{model}"
personas = ["extraversion:high", "agreeableness:low"]
max_new_tokens = 6
batch_size = 4
[mi]
rho = 3.0
[caa]
layer = 2
multiplier = 2.0
pairs = 4
"""

OPTIONS = {
    "bigfive": {"likert_per_trait": 2, "statements": 2},
    "bigfive-generation": {"prompts": 2},
    "dialogue": {"pairs": ["extraversion:high>agreeableness:low"], "conversations": 1, "turns_before": 1, "turns_after": 1, "statements": 2},
    "persistence": {"personas": ["extraversion:high"], "lengths": [0, 64], "statements": 2, "history_turns": 3, "history_reply_tokens": 12},
    "capability": {"gsm8k": 2, "mmlu": 3, "gsm8k_max_new_tokens": 8},
    "storage": {},
    "hardmath": {"per_cell": 1, "direct_tokens": 6, "steps_tokens": 10, "routing": "keywords", "solution_tokens": 12},
    "physics": {"per_cell": 1, "direct_tokens": 6, "steps_tokens": 10, "poolings": ["mean"], "aux_gains": {"checker": 1.0},
                "likelihood_per_type": 1, "solution_tokens": 12},
    "long-memory": {"sizes": [300], "facts": 4, "truncate_tokens": 128,
                    "conditions": ["plain", "truncated", "retriever", "memory"]},
}


# ---- hand-made inputs with known answers -------------------------------------------------------------
def test_control_and_drift():
    plain = {"openness": 3.0, "extraversion": 3.0, "agreeableness": 2.0, "neuroticism": 1.0}
    steered = {"openness": 3.5, "extraversion": 2.0, "agreeableness": 2.0, "neuroticism": 2.0}
    control, drift = control_and_drift(steered, plain, "extraversion", "low")
    assert control == pytest.approx(1.0)  # down by 1 toward the low pole
    assert drift == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert control_and_drift(steered, plain, "extraversion", "high")[0] == pytest.approx(-1.0)
    assert math.isnan(nanmean([])) and nanmean([1.0, float("nan"), 3.0]) == 2.0


def _statement_records(shifts: dict[tuple[str, str], dict[str, float]], noise: float = 0.0, n: int = 12) -> list[dict]:
    """bigfive statement records with per-statement log-probs: plain's are noise around -3 (seeded), and a
    condition's matching statements move by shifts[condition][trait], its non-matching ones not at all; `noise`
    adds independent per-statement noise to every steered condition."""
    import numpy as np

    rng = np.random.default_rng(0)
    base = {t: {side: list(-3.0 + rng.normal(0, 0.5, n)) for side in ("matching", "nonmatching")}
            for t in ("extraversion", "openness")}
    records = []
    for (persona, method), by_trait in {("none", "plain"): {}, **shifts}.items():
        for trait in base:
            shift = by_trait.get(trait, 0.0)
            jitter = (lambda: rng.normal(0, noise, n)) if method != "plain" else (lambda: np.zeros(n))
            entry = {"offset": 300,
                     "matching": [float(v) for v in np.add(base[trait]["matching"], shift) + jitter()],
                     "nonmatching": [float(v) for v in np.add(base[trait]["nonmatching"], 0.0) + jitter()]}
            records.append({"unit": f"{persona}|{method}|statements|{trait}", "persona": persona, "method": method,
                            "measure": "statements", "trait": trait, "statements": 2 * n, "logprobs": entry,
                            "value": nanmean(entry["matching"]) - nanmean(entry["nonmatching"])})
    return records


def test_poles_are_reported_separately_and_moved_means_the_interval_excludes_zero():
    records = _statement_records({
        # mi separates the poles; caa moves both up (steers nothing about the trait)
        ("extraversion:high", "mi"): {"extraversion": 0.5, "openness": 0.1},
        ("extraversion:low", "mi"): {"extraversion": -0.2, "openness": -0.1},
        ("extraversion:high", "caa"): {"extraversion": 0.4},
        ("extraversion:low", "caa"): {"extraversion": 0.3},
    })
    scores = statement_scores(records)
    rows = control_rows(scores)
    by = {(r["persona"], r["method"]): r for r in rows}
    assert by[("extraversion:low", "caa")]["control"].estimate == pytest.approx(-0.3)
    assert by[("extraversion:low", "mi")]["control"].estimate == pytest.approx(0.2)
    assert by[("extraversion:high", "mi")]["drift"].estimate == pytest.approx(0.1)
    # no noise on top of the shifts: every statement moved alike, so each interval is the point
    assert by[("extraversion:low", "mi")]["control"].low == pytest.approx(0.2)
    summary = {row[0]: row for row in summary_rows(rows, scores)}
    assert summary["mi"][3:] == ["2/2", "0/2", "1/1", "1/1"]
    assert summary["caa"][3:] == ["1/2", "1/2", "1/1", "0/1"]  # high above low, but the low pole moved up
    assert summary["mi"][1].startswith("+0.350 [+0.350, +0.350]")


def test_a_shift_lost_in_per_statement_noise_is_not_counted_as_moved():
    """The old rule counted any sign; a tiny shift under noise of 0.5 per statement has an interval covering 0."""
    records = _statement_records({("extraversion:high", "mi"): {"extraversion": 0.01},
                                  ("extraversion:low", "mi"): {"extraversion": -0.01}}, noise=0.5)
    scores = statement_scores(records)
    rows = control_rows(scores)
    assert all(not above_zero(r["control"]) and not below_zero(r["control"]) for r in rows)
    assert all(r["control"].low < 0 < r["control"].high for r in rows)
    assert {row[0]: row for row in summary_rows(rows, scores)}["mi"][3:] == ["0/2", "0/2", "0/1", "0/1"]
    # records without per-statement values (made before they were stored) give no intervals at all
    assert statement_scores([{k: v for k, v in r.items() if k != "logprobs"} for r in records]) is None


def test_paired_intervals_on_known_cases():
    import numpy as np

    rng = np.random.default_rng(1)
    plain = {"matching": list(rng.normal(-3, 1, 20)), "nonmatching": list(rng.normal(-3, 1, 20))}
    up = {"matching": [v + 0.2 + 0.05 * rng.random() for v in plain["matching"]], "nonmatching": plain["nonmatching"]}
    shift = paired_margin_shift(plain, up)
    assert 0.2 < shift.low <= shift.estimate <= shift.high < 0.25 and above_zero(shift)  # all shifts positive
    assert below_zero(paired_margin_shift(plain, up, sign=-1.0))  # toward a low pole it moved away
    symmetric = [0.3, -0.3] * 10  # symmetric noise around no change
    noisy = {"matching": [v + d for v, d in zip(plain["matching"], symmetric)], "nonmatching": plain["nonmatching"]}
    covered = paired_margin_shift(plain, noisy)
    assert covered.estimate == pytest.approx(0.0, abs=1e-12) and covered.low < 0 < covered.high
    assert not above_zero(covered) and not below_zero(covered) and not above_zero(None)
    # capability: the same questions plain and steered, paired by id
    same = accuracy_change({i: float(i % 2) for i in range(10)}, {i: float(i % 2) for i in range(10)})
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    better = accuracy_change({i: 1.0 for i in range(10)}, {i: float(i < 5) for i in range(12)})  # 2 unanswered
    assert better.estimate == pytest.approx(0.5) and better.low > 0
    assert fmt_interval(better) == f"+0.500 [{better.low:+.3f}, {better.high:+.3f}]"


def test_likert_and_judge_scores_pair_items_across_conditions():
    plain = {"unit": "none|plain|likert|extraversion", "persona": "none", "method": "plain", "measure": "likert",
             "trait": "extraversion", "value": 3.0, "items": [[1, 3.0, 0.99], [2, 2.0, 0.99], [3, 4.0, 0.99]]}
    high = {**plain, "persona": "extraversion:high", "method": "mi", "unit": "x",
            "items": [[3, 4.5, 0.99], [1, 3.5, 0.99], [2, 2.5, 0.99]]}  # other order: paired by id
    rows = control_rows(likert_scores([plain, high]))
    assert rows[0]["control"].estimate == pytest.approx(0.5) and rows[0]["control"].low == pytest.approx(0.5)
    with pytest.raises(EvaluationError, match="different items"):
        likert_scores([plain, {**high, "items": high["items"][:2]}])
    judged = [{"kind": "replies", "persona": "none", "method": "plain",
               "judge_items": {"extraversion": [0.4, 0.5, 0.6], "openness": [0.5, 0.5, 0.5]}},
              {"kind": "replies", "persona": "extraversion:low", "method": "caa",
               "judge_items": {"extraversion": [0.2, 0.3, 0.4], "openness": [0.6, 0.6, 0.6]}}]
    row = control_rows(judge_scores(judged))[0]
    assert row["control"].estimate == pytest.approx(0.2) and above_zero(row["control"])
    assert row["drift"].estimate == pytest.approx(0.1)
    assert judge_scores([{k: v for k, v in r.items() if k != "judge_items"} for r in judged]) is None


def test_dialogue_helpers():
    assert parse_pair("extraversion:high>agreeableness:low") == ("extraversion:high", "agreeableness:low")
    with pytest.raises(EvaluationError, match="PERSONA_A>PERSONA_B"):
        parse_pair("extraversion:high")
    assert aligned(0.8, "high") == 0.8 and aligned(0.8, "low") == pytest.approx(0.2)
    assert variants(["plain", "prompting", "mi"]) == ["plain", "prompting-rewrite", "prompting-append", "mi"]


def test_persistence_cuts_whole_turns(tiny_tokenizer):
    turns = [["tell me about cats", "cats are small"], ["and dogs please", "dogs are big and they like to run"]]
    msgs, n = cut(tiny_tokenizer, turns, 1000)
    assert len(msgs) == 4 and n > 0
    one, m = cut(tiny_tokenizer, turns, n - 1)
    assert len(one) == 2 and 0 < m < n
    assert cut(tiny_tokenizer, turns, 0) == ([], 0)


def test_kv_dims_match_the_spec_formula():
    llama = published_dims()["llama-3.1-8b-instruct"]
    assert (llama.num_layers, llama.num_kv_heads, llama.head_dim, llama.bytes_per_value) == (32, 8, 128, 2)
    assert llama.prompt_bytes(1) == 2 * 32 * 8 * 128 * 2 == 131072
    qwen = published_dims()["qwen3-30b-a3b"]
    assert (qwen.num_layers, qwen.num_kv_heads) == (48, 4)
    dims = KVDims(num_layers=10, num_kv_heads=2, head_dim=4, bytes_per_value=4)
    assert dims.bank_bytes(slots=3, layers=2) == 2 * 2 * 2 * 3 * 4 * 4
    assert dims.bank_bytes(slots=3, layers=2, kv_groups_per_layer=1) == 2 * 2 * 1 * 3 * 4 * 4


def test_config_files_and_errors(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('task = "bigfive"\nmethods = ["plain", "mi"]\n[mi]\nrho = -4\n[options]\nstatements = 3\n')
    cfg = load_config(toml, limit=2)
    assert cfg.methods == ["plain", "mi"] and cfg.rho == -4.0 and cfg.limit == 2 and cfg.options == {"statements": 3}
    yaml = tmp_path / "c.yaml"
    yaml.write_text("task: dialogue\nmodel: smollm2-135m-instruct\ncaa:\n  layer: 3\n")
    assert load_config(yaml).caa.layer == 3
    assert load_config(task="bigfive").rho == -20.0  # the measured default for the default model
    with pytest.raises(EvaluationError, match="rhoo"):
        load_config(task="bigfive", mi={"rhoo": 1})
    with pytest.raises(EvaluationError, match="unknown method"):
        load_config(task="bigfive", methods=["mi", "lora"])
    with pytest.raises(EvaluationError, match="pole"):
        load_config(task="bigfive", personas=["extraversion:up"])
    with pytest.raises(EvaluationError, match="no task"):
        load_config()
    (tmp_path / "bad.toml").write_text("task = ")
    with pytest.raises(EvaluationError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")
    with pytest.raises(EvaluationError, match="unknown option"):
        get_task("bigfive").options(load_config(task="bigfive", options={"statement": 3}))
    with pytest.raises(EvaluationError, match="unknown task"):
        get_task("bigsix")


# ---- runs on a tiny random model with the default model's tokenizer -----------------------------------
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A 4-layer random Llama with the default model's real tokenizer, saved as a local model directory."""
    import memory_inception as mi

    _, tok = mi.load_model()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-smollm")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _toml(value):
    """A TOML literal: JSON for scalars and lists, an inline table for dicts."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def _config(tmp_path, tiny_dir, task):
    path = tmp_path / f"{task}.toml"
    text = SMOKE.format(model=tiny_dir)
    opts = OPTIONS[task]
    if opts:
        text += "[options]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in opts.items())
    path.write_text(text)
    return path


def _per_item_values(task, r) -> bool:
    def statements_of(entry, n):
        return entry["offset"] == 300 and len(entry["matching"]) == len(entry["nonmatching"]) == n

    if task == "bigfive":
        if r["measure"] == "likert":
            return len(r["items"]) == 2 and all(len(item) == 3 for item in r["items"])
        return statements_of(r["logprobs"], 2) and r["value"] == pytest.approx(
            nanmean(r["logprobs"]["matching"]) - nanmean(r["logprobs"]["nonmatching"]), abs=1e-5)
    if task == "bigfive-generation":
        return r["kind"] == "judges" or all(len(v) == 2 for v in r["judge_items"].values())
    if task == "dialogue":
        return statements_of(r["logprobs_a"], 2) and statements_of(r["logprobs_b"], 2) and len(r["align_b"][0]) == 2
    if task == "persistence":
        return r["kind"] == "history" or statements_of(r["logprobs"], 2)
    if task == "capability":
        return all("id" in row and "correct" in row for row in r["rows"])
    return True


@pytest.mark.real_model
@pytest.mark.parametrize("task", list(TASKS))
def test_smoke_every_task_and_report(tmp_path, tiny_dir, task):
    out = tmp_path / "out"
    result = runner.invoke(app, ["eval", task, "--config", str(_config(tmp_path, tiny_dir, task)), "--limit", "2",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = read_records(out / f"{task}.jsonl")
    assert records and len({r["unit"] for r in records}) == len(records)
    for r in records:  # the per-item values the report's intervals resample
        assert _per_item_values(task, r), (task, r["unit"])
    again = runner.invoke(app, ["eval", task, "--config", str(_config(tmp_path, tiny_dir, task)), "--limit", "2",
                                "--out", str(out)])
    assert again.exit_code == 0 and len(read_records(out / f"{task}.jsonl")) == len(records)  # resumed: nothing redone
    rep = runner.invoke(app, ["report", str(out)])
    assert rep.exit_code == 0, rep.output
    text = (out / "report.md").read_text()
    assert text.count("|---") >= 2  # the index and at least one table of the task's own
    if task in ("hardmath", "physics"):
        for heading in ("Correct answers per cell", "Reference-solution likelihood", "Keyword routing", "KV storage per type"):
            assert heading in text, heading
    for line in text.splitlines():
        if line.startswith("!["):
            assert (out / line[line.index("(") + 1 : -1]).is_file()


@pytest.mark.real_model
def test_interrupted_run_keeps_finished_units_and_resumes(tmp_path, tiny_dir):
    cfg = load_config(_config(tmp_path, tiny_dir, "bigfive"), task="bigfive", methods=["plain", "mi"], limit=1)
    out = tmp_path / "run"

    def stop_after_three(done, total, unit):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_task(TASKS["bigfive"], cfg, out, progress=stop_after_three)
    assert len(read_records(out / "bigfive.jsonl")) == 3
    # a torn last line (killed mid-write) is dropped and redone
    with (out / "bigfive.jsonl").open("a") as f:
        f.write('{"unit": "none|plain|lik')
    records = run_task(TASKS["bigfive"], cfg, out)
    assert len(records) == 2 * 5 + 2 * 2 * 5  # plain once + mi per persona; two measures, five traits each
    assert len(read_records(out / "bigfive.jsonl")) == len(records)
    # another configuration may not append to the same file
    other = load_config(_config(tmp_path, tiny_dir, "bigfive"), task="bigfive", methods=["plain", "mi"], mi={"rho": 9.0})
    with pytest.raises(EvaluationError, match="mi"):
        run_task(TASKS["bigfive"], other, out)
    report = write_report(out)
    assert "Big Five self-report" in report.read_text()
    assert "Big Five self-report" in write_report(out, tasks=["bigfive"]).read_text()
    with pytest.raises(EvaluationError, match="no results for dialogue"):
        write_report(out, tasks=["dialogue"])
    with pytest.raises(EvaluationError, match="unknown task"):
        write_report(out, tasks=["bigsix"])


def test_report_needs_results(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "mi eval" in result.output


def test_regrade_rewrites_stale_verdicts_and_cell_counts() -> None:
    """A cell graded by an older grader: the stale verdict flips, the right one stays, the count follows."""
    record = {"unit": "electro|direct|mi|0", "kind": "cell", "correct": 2, "n": 2, "rows": [
        {"id": "physics/electro/2_15", "reply": "A wire carrying 10 A has drift velocity $10^{-5}$.", "correct": True},
        {"id": "physics/electro/2_15", "reply": r"The drift velocity is $\boxed{10^{-2} \text{ cm/sec}}$.", "correct": True},
    ]}
    storage = {"unit": "storage", "kind": "storage", "storage": {}}
    changed = get_task("physics").regrade([record, storage])
    assert len(changed) == 1 and changed[0].startswith("electro|direct|mi|0 physics/electro/2_15: True -> False")
    assert [r["correct"] for r in record["rows"]] == [False, True] and record["correct"] == 1
    assert all({"extracted", "score", "detail"} <= set(r) for r in record["rows"])
    assert storage == {"unit": "storage", "kind": "storage", "storage": {}}


def _reasoning_cells(rows_by_method: dict[str, list[dict]]) -> list[dict]:
    return [{"unit": f"electro|direct|{m}|0", "kind": "cell", "type": "electro", "mode": "direct", "method": m,
             "rows": rows, "correct": sum(r["correct"] for r in rows), "n": len(rows)} for m, rows in rows_by_method.items()]


def _row(pid: str, correct: bool, status: str = "ok") -> dict:
    return {"id": pid, "routed": "electro", "reply": "r", "extracted": None, "correct": correct,
            "score": float(correct), "detail": "", "status": status, "stated": 0, "step_timeouts": 0}


def test_reasoning_report_counts_show_that_timeouts_and_errors_apart(tmp_path) -> None:
    """A show-that reply, a timed-out grade and a grader error are not in a cell's denominator and are counted."""
    cfg = load_config(task="physics", methods=["plain", "prompting", "mi"], options={"modes": ["direct"], "poolings": ["concat"]})
    show = "physics/electro/5_8"
    cells = _reasoning_cells({
        "plain": [_row("physics/electro/2_15", False), _row(show, False, "show-that")],
        "prompting": [_row("physics/electro/2_15", True), _row(show, False, "show-that")],
        "mi": [_row("physics/electro/2_15", False, "timeout"), _row("physics/electro/2_13", False, "error")],
    })
    text = get_task("physics").report(cells, cfg, tmp_path)
    electro = next(line for line in text.splitlines() if line.startswith("| electro |"))
    assert electro.split(" | ")[1:4] == ["0/1", "1/1", "0/0"], electro  # show-that / timeout / error not counted
    assert "with a verdict: better in 0, tied in 0 (0 of them at zero correct on both sides), worse in 0" in text
    assert "- Correct answers in direct mode: plain 0/1, prompting 1/1, mi 0/0." in text
    assert f"- Left out: 2 replies to 1 show-that problem(s) ({show})" in text
    assert "- Grading timed out on 1 and failed with an error on 1 of 6 replies (counted apart, not as incorrect)." in text
    diag = next(line for line in text.splitlines() if line.startswith("| direct | mi |"))
    assert diag.split(" | ")[2:6] == ["2", "0", "1", "1"], diag  # replies, show-that, timed out, errors


def test_reasoning_report_says_when_every_cell_is_a_tie_at_zero(tmp_path) -> None:
    cfg = load_config(task="physics", methods=["plain", "prompting", "mi"], options={"modes": ["direct"], "poolings": ["concat"]})
    cells = _reasoning_cells({m: [_row("physics/electro/2_15", False)] for m in ("plain", "prompting", "mi")})
    text = get_task("physics").report(cells, cfg, tmp_path)
    assert "- No method answers any graded problem correctly (plain 0/1, prompting 0/1, mi 0/1 in direct mode)" in text
    assert "tied in 1 (1 of them at zero correct on both sides)" in text
    assert "- Grading timed out on 0 and failed with an error on 0 of 3 replies" in text


def test_regrade_records_statuses_and_lists_status_changes() -> None:
    """An echo reply to a show-that problem, once credited, becomes status show-that: listed, out of the count."""
    echo = r"To show that \(E^2 - B^2\) and \(\mathbf{E} \cdot \mathbf{B}\) are invariant"
    record = {"unit": "electro|steps|mi|0", "kind": "cell", "correct": 1, "n": 1,
              "rows": [{"id": "physics/electro/5_8", "reply": echo, "correct": True}]}
    changed = get_task("physics").regrade([record])
    assert len(changed) == 1 and "physics/electro/5_8: True -> False [ok -> show-that]" in changed[0], changed
    row = record["rows"][0]
    assert row["status"] == "show-that" and row["stated"] == 2 and row["step_timeouts"] == 0
    assert record["correct"] == 0 and record["graded"] == 0
    assert get_task("physics").regrade([record]) == []  # graded again: nothing changes


# ---- the held-out statement split, carried-over runs, cached artifacts per dtype ------------------------
def test_scored_statements_overlap_nothing_that_chose_a_default_or_built_a_vector():
    from pathlib import Path

    from memory_inception.datasets.traits import statements
    from memory_inception.evaluation.base import eval_statements, split_note
    from memory_inception.evaluation.config import CAA_STATEMENT_OFFSET, EVAL_STATEMENTS, STATEMENT_USES

    offset, count = EVAL_STATEMENTS
    for who, (lo, hi) in STATEMENT_USES.items():
        assert hi <= offset or lo >= offset + count, who
    # the recorded ranges are the ones the code reads: mi eval's CAA pairs, compare_methods' calibration / CAA
    assert (CAA_STATEMENT_OFFSET, CAA_STATEMENT_OFFSET + load_config(task="bigfive").caa.pairs) in STATEMENT_USES.values()
    source = (Path(__file__).parents[1] / "experiments" / "compare_methods.py").read_text()
    assert "statements(trait, 30, offset=30)" in source and "start: int = 60, count: int = 150" in source
    assert {(0, 30), (30, 60), (60, 210), (475, 500)} <= set(STATEMENT_USES.values())
    for trait in ("extraversion", "agreeableness"):
        yes, no = eval_statements(trait, None)
        assert len(yes) == len(no) == count
        used = set()
        for lo, hi in STATEMENT_USES.values():
            used |= {s for side in statements(trait, hi - lo, offset=lo) for s in side}
        assert not (set(yes) | set(no)) & used
    assert "held out from everything" in split_note(count) and "NOT held out" in split_note(10, offset=20)
    assert "not held out" in split_note(15, offset=None)
    with pytest.raises(EvaluationError, match="use at most"):  # CAA pairs running into the scored statements
        load_config(task="bigfive", caa={"pairs": offset - CAA_STATEMENT_OFFSET + 1})


def _stored_run(out, cfg, records, **identity_changes):
    out.mkdir(parents=True, exist_ok=True)
    identity = {k: v for k, v in cfg.identity().items() if k != "statement_split"} | identity_changes
    (out / f"{cfg.task}.config.json").write_text(json.dumps({"config": identity, "created": "2026-11-22 08:00:29"}))
    (out / f"{cfg.task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_a_new_statement_split_carries_over_only_what_reads_no_statements(tmp_path):
    from memory_inception.evaluation.runner import carry_over, check_config, identity_diff

    cfg = load_config(task="bigfive", methods=["plain", "mi"], personas=["extraversion:high"])
    likert = {"unit": "none|plain|likert|openness", "measure": "likert", "value": 3.0}
    stale = {"unit": "none|plain|statements|openness", "measure": "statements", "value": 0.1}
    _stored_run(tmp_path, cfg, [likert, stale])  # made before the identity recorded the split
    with pytest.raises(EvaluationError, match="statement_split"):
        check_config(tmp_path, cfg)
    assert carry_over(TASKS["bigfive"], cfg, tmp_path) == 1
    kept = read_records(tmp_path / "bigfive.jsonl")
    assert kept == [{**likert, "carried_from": "2026-11-22 08:00:29"}]
    check_config(tmp_path, cfg)  # a resume now redoes exactly the statement units
    assert carry_over(TASKS["bigfive"], cfg, tmp_path) == 1  # nothing changed: nothing dropped
    stored = json.loads((tmp_path / "bigfive.config.json").read_text())
    assert stored["carried_over"] == {"from": "2026-11-22 08:00:29", "records": 1, "changed": ["statement_split"]}
    _stored_run(tmp_path / "other", cfg, [likert], mi={**cfg.identity()["mi"], "rho": 9.0})
    with pytest.raises(EvaluationError, match="mi.rho"):  # another method strength: not carried over
        carry_over(TASKS["bigfive"], cfg, tmp_path / "other")
    # persistence keeps its history (the plain model's replies) across other lengths and a new split
    pcfg = load_config(task="persistence", options={"lengths": [0, 2048]})
    history = {"unit": "history", "kind": "history", "turns": []}
    point = {"unit": "extraversion:high|mi|0", "kind": "point"}
    _stored_run(tmp_path / "p", pcfg, [history, point], options={**pcfg.identity()["options"], "lengths": [0, 512]})
    assert identity_diff(json.loads((tmp_path / "p" / "persistence.config.json").read_text())["config"],
                         pcfg.identity()) == ["options.lengths", "statement_split"]
    assert carry_over(TASKS["persistence"], pcfg, tmp_path / "p", differs_in=("statement_split", "options.lengths")) == 1
    assert [r["unit"] for r in read_records(tmp_path / "p" / "persistence.jsonl")] == ["history"]
    # more lengths alone keep the points already measured (they depend on their own length only)
    more = load_config(task="persistence", options={"lengths": [0, 512, 2048]})
    _stored_run(tmp_path / "q", pcfg, [history, point], statement_split=pcfg.identity()["statement_split"])
    assert carry_over(TASKS["persistence"], more, tmp_path / "q", differs_in=("options.lengths",)) == 2
    assert not TASKS["persistence"].unchanged_by(point, ("options.lengths", "statement_split"))


def test_cached_banks_and_vectors_are_named_per_dtype(tmp_path, tiny_models, tiny_tokenizer):
    from memory_inception.evaluation.base import Context

    fp32 = Context(load_config(task="bigfive", device="cpu"), tmp_path)
    bf16 = Context(load_config(task="bigfive", device="cpu", dtype="bf16"), tmp_path)
    assert fp32.artifact_name("extraversion") == "extraversion"  # as the committed runs' files
    assert bf16.artifact_name("extraversion") == "extraversion-bfloat16"
    model = tiny_models("llama")
    text = "you are a cheerful pirate who loves the sea"
    fp32 = Context(fp32.cfg, tmp_path, model, tiny_tokenizer)
    built = fp32.text_bank("pirate", text)
    assert (tmp_path / "banks" / "pirate.safetensors").is_file()
    bf16 = Context(bf16.cfg, tmp_path, copy.deepcopy(model).to(torch.bfloat16), tiny_tokenizer)  # the shared one stays fp32
    other = bf16.text_bank("pirate", text)
    assert (tmp_path / "banks" / "pirate-bfloat16.safetensors").is_file()  # built anew, not the fp32 file
    assert other.dtype == torch.bfloat16 and built.dtype == torch.float32
    assert bf16.text_bank("pirate", text) is other

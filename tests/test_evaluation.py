"""The evaluation suite: configs, resumable JSONL runs, metrics on hand-made inputs, and a smoke run of every task."""

from __future__ import annotations

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
from memory_inception.evaluation.analysis import control_and_drift, nanmean
from memory_inception.evaluation.tasks.dialogue import aligned, parse_pair, variants
from memory_inception.evaluation.tasks.kv_storage import KVDims, published_dims
from memory_inception.evaluation.tasks.persistence import cut
from memory_inception.evaluation.tasks.personality import control_rows, summary_rows

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


def test_poles_are_reported_separately():
    plain = {"extraversion": 0.0, "openness": 0.0}
    values = {
        ("none", "plain"): plain,
        # mi separates the poles; caa moves both up (steers nothing about the trait)
        ("extraversion:high", "mi"): {"extraversion": 0.5, "openness": 0.1},
        ("extraversion:low", "mi"): {"extraversion": -0.2, "openness": -0.1},
        ("extraversion:high", "caa"): {"extraversion": 0.4, "openness": 0.0},
        ("extraversion:low", "caa"): {"extraversion": 0.3, "openness": 0.0},
    }
    rows = control_rows(values)
    by = {(r["persona"], r["method"]): r for r in rows}
    assert by[("extraversion:low", "caa")]["control"] == pytest.approx(-0.3)
    assert by[("extraversion:low", "mi")]["control"] == pytest.approx(0.2)
    summary = {row[0]: row for row in summary_rows(rows)}
    assert summary["mi"][3:] == ["2/2", "1/1", "1/1"]
    assert summary["caa"][3:] == ["1/2", "1/1", "0/1"]  # high above low, but not opposite ways


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


@pytest.mark.real_model
@pytest.mark.parametrize("task", list(TASKS))
def test_smoke_every_task_and_report(tmp_path, tiny_dir, task):
    out = tmp_path / "out"
    result = runner.invoke(app, ["eval", task, "--config", str(_config(tmp_path, tiny_dir, task)), "--limit", "2",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = read_records(out / f"{task}.jsonl")
    assert records and len({r["unit"] for r in records}) == len(records)
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

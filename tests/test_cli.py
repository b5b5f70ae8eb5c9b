"""The `mi` command line, run for real on the default model."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import memory_inception as mi
from memory_inception.cli import app
from memory_inception.cli.common import parse_device_map, parse_layers

runner = CliRunner()
PERSONA = "You are a pirate captain who talks about the sea, ships and treasure."


def test_parse_layers():
    assert parse_layers("21-23,25") == [21, 22, 23, 25]
    assert parse_layers(None) is None


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("bank", "generate", "chat", "demo", "models", "select", "calibrate"):
        assert command in result.output


@pytest.mark.real_model
def test_bank_build_info_and_generate(tmp_path):
    path = tmp_path / "pirate.safetensors"
    result = runner.invoke(app, ["bank", "build", PERSONA, "-o", str(path), "--layers", "21-26", "--name", "pirate"])
    assert result.exit_code == 0, result.output
    bank = mi.Bank.load(path)
    assert bank.layers == tuple(range(21, 27)) and bank.name == "pirate"
    info = runner.invoke(app, ["bank", "info", str(path)])
    assert info.exit_code == 0 and "pirate" in info.output and "21,22,23,24,25,26" in info.output
    gen = runner.invoke(app, ["generate", "How do I make tea?", "--bank", str(path), "--layers", "21-26", "-n", "12"])
    assert gen.exit_code == 0, gen.output
    # the command prints the library's own greedy reply for the same bank, sites and prompt (and not the plain one)
    model, tok = mi.load_model(device="cpu")
    conversation = [[{"role": "user", "content": "How do I make tea?"}]]
    steering = mi.Steering(target=mi.Bank.load(path, model=model), sites=mi.Sites({layer: None for layer in range(21, 27)}))
    want = mi.generate(model, tok, mi.MI(steering), conversation, max_new_tokens=12)[0]
    assert want and gen.output.strip() == want
    assert want != mi.generate(model, tok, mi.Plain(), conversation, max_new_tokens=12)[0]


@pytest.mark.real_model
def test_errors_are_clear(tmp_path):
    missing = runner.invoke(app, ["bank", "info", str(tmp_path / "nope.safetensors")])
    assert missing.exit_code == 2 and "no bank file" in missing.output
    bad_layers = runner.invoke(app, ["bank", "build", PERSONA, "-o", str(tmp_path / "b.safetensors"), "--layers", "40"])
    assert bad_layers.exit_code == 2 and "out of range" in bad_layers.output
    gap = runner.invoke(app, ["bank", "build", "  ", "-o", str(tmp_path / "c.safetensors")])
    assert gap.exit_code == 2 and "empty" in gap.output


@pytest.mark.real_model
def test_chat_changes_guidance_mid_conversation():
    script = "Hello!\n/bank " + PERSONA + "\n/rho 4\nWhat do you like?\n/bank off\n/quit\n"
    result = runner.invoke(app, ["chat", "-n", "8"], input=script)
    assert result.exit_code == 0, result.output
    assert "guidance: " in result.output and "rho = 4" in result.output and "guidance: none" in result.output
    assert result.output.count("mi>") == 2


@pytest.mark.real_model
def test_demo_runs_side_by_side():
    result = runner.invoke(app, ["demo", "-n", "6"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for word in ("plain", "visible", "hidden", "KV bytes", "ratio"):
        assert word in result.output
    assert "Loading weights" not in result.output


@pytest.mark.real_model
def test_select_writes_a_sites_artifact_that_generate_reads(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What do you do on a Sunday?\nDescribe a good day.\n")
    out = tmp_path / "sites.json"
    result = runner.invoke(
        app,
        ["select", "-t", "You love parties and people.", "-r", "You prefer to be alone.", "-o", str(out),
         "--layers", "18-29", "--num-layers", "3", "--heads-per-layer", "2", "--prompts", f"@{prompts}",
         "--max-new-tokens", "4"],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    sites = mi.Sites.load(out)
    assert len(sites.layers) == 3 and all(18 <= layer <= 29 for layer in sites.layers)
    assert all(len(h) <= 2 for h in sites.heads.values()) and sites.layer_scores
    assert "selected sites" in result.output
    gen = runner.invoke(app, ["generate", "Hi!", "--bank", "You love parties.", "--sites", str(out), "-n", "4"])
    assert gen.exit_code == 0, gen.output


@pytest.mark.real_model
def test_calibrate_prints_the_curve_and_the_choice(tmp_path):
    out = tmp_path / "cal.json"
    result = runner.invoke(
        app,
        ["calibrate", "--bank", "You love parties and meeting people.", "--trait", "extraversion", "--n", "4",
         "--rhos", "0,3", "--max-new-tokens", "8", "--tolerance", "1", "-o", str(out)],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    assert "best rho" in result.output and out.is_file()
    bad = runner.invoke(app, ["calibrate", "--bank", "x"])
    assert bad.exit_code == 2 and "exactly one control" in bad.output
    unknown = runner.invoke(app, ["calibrate", "--bank", "x", "--trait", "grumpiness", "--rhos", "1"])
    assert unknown.exit_code == 2 and "unknown trait" in unknown.output


# ---- devices and dtypes ---------------------------------------------------------------------------------------
def _said(result) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(result.output.split())


MODEL_COMMANDS = (["generate"], ["chat"], ["demo"], ["bank", "build"], ["select"], ["calibrate"], ["eval"], ["serve"])


@pytest.mark.parametrize("command", MODEL_COMMANDS, ids=" ".join)
def test_every_model_command_takes_device_dtype_and_device_map(command):
    result = runner.invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for option in ("--device ", "--dtype ", "--device-map "):
        assert option in result.output, (command, option)


@pytest.mark.parametrize("command", (["generate", "Hi"], ["chat"], ["demo"], ["bank", "build", "x", "-o", "b.safetensors"],
                                     ["select", "-t", "a", "-r", "b", "-o", "s.json"], ["calibrate", "--bank", "x", "--trait", "extraversion"],
                                     ["eval", "bigfive"], ["serve"]), ids=lambda c: c[0])
def test_a_bad_device_or_dtype_exits_with_a_clear_message(command):
    """Refused before any weights are read (the default model is never loaded here)."""
    bad = runner.invoke(app, [*command, "--device", "gpu"], terminal_width=200)
    assert bad.exit_code == 2 and "not a device name" in _said(bad) and "cuda:N" in _said(bad), bad.output
    dtype = runner.invoke(app, [*command, "--dtype", "float13"], terminal_width=200)
    assert dtype.exit_code == 2 and "unknown dtype" in _said(dtype), dtype.output
    both = runner.invoke(app, [*command, "--device", "cpu", "--device-map", "auto"], terminal_width=200)
    assert both.exit_code == 2 and "both given" in _said(both), both.output


def test_an_absent_device_and_a_bad_device_map_are_clear(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for device, words in (("cuda", "CUDA is not available"), ("cuda:1", "CUDA is not available"), ("mps", "MPS is not available")):
        result = runner.invoke(app, ["generate", "Hi", "--device", device], terminal_width=200)
        assert result.exit_code == 2 and words in _said(result) and "This machine has: cpu" in _said(result)
    strategy = runner.invoke(app, ["generate", "Hi", "--device-map", "fastest"], terminal_width=200)
    assert strategy.exit_code == 2 and "not a placement strategy" in _said(strategy)
    malformed = runner.invoke(app, ["generate", "Hi", "--device-map", "{oops"], terminal_width=200)
    assert malformed.exit_code == 2 and "not a JSON object" in _said(malformed)


def test_parse_device_map():
    assert parse_device_map(None) is None and parse_device_map("auto") == "auto"
    assert parse_device_map('{"model": 0, "lm_head": "cpu"}') == {"model": 0, "lm_head": "cpu"}


def test_serve_passes_device_dtype_and_device_map_to_run_server(monkeypatch):
    pytest.importorskip("fastapi")
    import memory_inception.serving.app as serving_app

    seen = {}

    def run_server(model_name=None, *, host, port, bank_dir, api_key, engine, device=None, dtype=None,
                   device_map=None, **options):
        seen.update(model=model_name, device=device, dtype=dtype, device_map=device_map, options=options)

    monkeypatch.setattr(serving_app, "run_server", run_server)
    result = runner.invoke(app, ["serve", "--device", "cpu", "--dtype", "bfloat16", "--port", "9"])
    assert result.exit_code == 0, result.output
    assert seen["device"] == "cpu" and seen["dtype"] == "bfloat16" and seen["device_map"] is None
    assert runner.invoke(app, ["serve", "--device-map", '{"": "cpu"}']).exit_code == 0
    assert seen["device_map"] == {"": "cpu"} and seen["device"] is None


@pytest.mark.real_model
def test_generate_in_bfloat16_on_the_cpu():
    result = runner.invoke(app, ["generate", "--device", "cpu", "--dtype", "bfloat16", "Hi", "-n", "8"])
    assert result.exit_code == 0, result.output
    model, tok = mi.load_model(device="cpu", dtype="bfloat16")
    want = mi.generate(model, tok, mi.Plain(), [[{"role": "user", "content": "Hi"}]], max_new_tokens=8)[0]
    assert want and result.output.strip() == want


@pytest.mark.real_model
def test_eval_in_bfloat16_on_the_cpu_and_a_float32_rerun_is_refused(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text('personas = ["extraversion:high"]\nmethods = ["plain", "mi"]\nbatch_size = 4\n'
                      "[options]\nlikert_per_trait = 1\nstatements = 1\n")
    out = tmp_path / "out"
    args = ["eval", "bigfive", "--config", str(config), "--limit", "1", "--out", str(out)]
    result = runner.invoke(app, [*args, "--device", "cpu", "--dtype", "bfloat16"], terminal_width=200)
    assert result.exit_code == 0, result.output
    stored = json.loads((out / "bigfive.config.json").read_text())["config"]
    assert stored["dtype"] == "bfloat16" and "device" not in stored
    records = (out / "bigfive.jsonl").read_text().splitlines()
    assert records and all(json.loads(r)["unit"] for r in records)
    resumed = runner.invoke(app, [*args, "--dtype", "bf16"], terminal_width=200)  # device may change, dtype may not
    assert resumed.exit_code == 0 and len((out / "bigfive.jsonl").read_text().splitlines()) == len(records)
    refused = runner.invoke(app, [*args, "--dtype", "float32"], terminal_width=200)
    assert refused.exit_code == 2 and "differs in: dtype" in _said(refused)
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0

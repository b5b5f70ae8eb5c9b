"""The `mi` command line, run for real on the default model."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import memory_inception as mi
from memory_inception.cli import app
from memory_inception.cli.common import parse_layers

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
    assert gen.output.strip()


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

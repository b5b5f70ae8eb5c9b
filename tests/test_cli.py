"""The `mi` command line, run for real on the default model."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import memory_inception as mi
from memory_inception.cli import app, parse_layers

runner = CliRunner()
PERSONA = "You are a pirate captain who talks about the sea, ships and treasure."


def test_parse_layers():
    assert parse_layers("21-23,25") == [21, 22, 23, 25]
    assert parse_layers(None) is None


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("bank", "generate", "chat", "demo", "models"):
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

"""`mi serve` wiring, fast: the command's placement options reach `hf.models.load_model` through `run_server`, and
its bounds reach the app `create_app` builds (the loader and uvicorn replaced; a tiny model stands in)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from conftest import make_tiny, make_tiny_tokenizer

pytest.importorskip("fastapi")

import uvicorn  # noqa: E402

import memory_inception.hf.models as hf_models  # noqa: E402
from memory_inception.cli import app as cli  # noqa: E402
from memory_inception.serving.admission import DEFAULT_MAX_QUEUE, DEFAULT_REQUEST_TIMEOUT_S  # noqa: E402
from memory_inception.serving.app import run_server  # noqa: E402
from memory_inception.serving.bank_store import DEFAULT_MAX_BANK_TOKENS, DEFAULT_MAX_MEMORY_SLOTS  # noqa: E402


@pytest.fixture
def served(monkeypatch):
    """Calls to the model loader and the app uvicorn would have served."""
    seen: dict = {"loads": [], "apps": []}

    def load_model(name=None, **placement):
        seen["loads"].append({"name": name, **placement})
        return make_tiny("llama"), make_tiny_tokenizer()

    monkeypatch.setattr(hf_models, "load_model", load_model)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen["apps"].append((app, kw)))
    return seen


def test_run_server_loads_the_model_with_the_placement_it_is_given(served, tmp_path):
    run_server("some-model", bank_dir=tmp_path / "banks", device="cpu", dtype="bfloat16", port=9)
    run_server(bank_dir=tmp_path / "banks", device_map={"": "cpu"})
    assert served["loads"] == [{"name": "some-model", "device": "cpu", "dtype": "bfloat16", "device_map": None},
                               {"name": None, "device": None, "dtype": None, "device_map": {"": "cpu"}}]
    app, options = served["apps"][0]
    assert options["port"] == 9 and app.state.service.model_id == "some-model"


def test_mi_serve_passes_device_dtype_and_every_bound_to_the_app(served, tmp_path):
    db = tmp_path / "state" / "s.db"
    result = CliRunner().invoke(cli, [
        "serve", "--device", "cpu", "--dtype", "float32", "--bank-dir", str(tmp_path / "banks"), "--port", "9",
        "--sessions-db", str(db), "--max-queue", "3", "--request-timeout", "2.5", "--max-bank-tokens", "50",
        "--max-memory-slots", "70", "--max-tokens-limit", "20"])
    assert result.exit_code == 0, result.output
    assert served["loads"] == [{"name": None, "device": "cpu", "dtype": "float32", "device_map": None}]
    service = served["apps"][0][0].state.service
    assert service.sessions_db == db and db.is_file()
    assert service.admission.max_queue == 3 and service.request_timeout_s == 2.5
    assert (service.banks.max_bank_tokens, service.banks.max_memory_slots, service.max_tokens_limit) == (50, 70, 20)

    # --request-timeout 0: no deadline; no bound given: the server's defaults; the DB next to the bank directory
    assert CliRunner().invoke(cli, ["serve", "--bank-dir", str(tmp_path / "b2"), "--request-timeout", "0"]
                              ).exit_code == 0
    default = served["apps"][1][0].state.service
    assert default.request_timeout_s is None and default.sessions_db == tmp_path / "b2.sessions.db"
    assert CliRunner().invoke(cli, ["serve", "--bank-dir", str(tmp_path / "b3")]).exit_code == 0
    other = served["apps"][2][0].state.service
    assert (other.admission.max_queue, other.request_timeout_s, other.banks.max_bank_tokens,
            other.banks.max_memory_slots) == (DEFAULT_MAX_QUEUE, DEFAULT_REQUEST_TIMEOUT_S,
                                           DEFAULT_MAX_BANK_TOKENS, DEFAULT_MAX_MEMORY_SLOTS)


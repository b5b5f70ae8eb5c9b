"""benchmarks/gpu_check.py runs on the CPU at tiny shapes, so the GPU check cannot rot between GPU sessions."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_gpu_check_runs_at_tiny_shapes_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpu_check

    result = gpu_check.main(["--tiny", "--device", "cpu", "--batches", "1", "--out", str(tmp_path / "check")])
    assert result["ok"], result["exactness"]
    assert {r["arch"] for r in result["exactness"]} == {"llama", "mistral", "qwen2", "qwen3", "qwen3_moe"}
    assert {r["dtype"] for r in result["exactness"]} == {"float32", "bfloat16"}
    assert all(r["max_abs_error"] < 1e-4 for r in result["exactness"] if r["dtype"] == "float32")
    assert [c["shape"] for c in result["speed"]] == ["llama8b", "qwen3_30b_a3b"]
    for cell in result["speed"]:
        assert cell["decode"]["tok_s"]["mi"] > 0 and len(cell["prefill"]["times_s"]["mi"]) == 1
    report = (tmp_path / "check.md").read_text()
    assert "tiny shapes: a smoke run" in report and "| qwen3_moe | bfloat16 |" in report
    sys.modules.pop("gpu_check", None)

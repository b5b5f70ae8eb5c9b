"""memory-inception: steer language models with text banks read by selected attention heads.

The layers, lowest first (a lower one never imports a higher one; `pyproject.toml`'s import-linter contracts
hold this): `core` (banks, sites, steering, plans, the operator, storage, per-model defaults), `datasets` (the
shipped data), `hf` (transformers integration), `methods`, `tuning`, `vllm` (the plugin), `evaluation`,
`serving`, `cli`. The names below are the public API; the evaluation ones load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from memory_inception.core.banks import Bank, build_bank
from memory_inception.core.memory import MemoryRead, as_memory, build_memory
from memory_inception.core.quantize import Quantization, QuantizedTensor
from memory_inception.core.sites import Sites
from memory_inception.core.steering import Steering, layer_strengths
from memory_inception.datasets.reasoning_problems import (
    Problem,
    load_hardmath,
    load_physics,
)
from memory_inception.errors import (
    BankError,
    EvaluationError,
    MemoryInceptionError,
    ModelLoadError,
    SiteError,
    SteeringError,
)
from memory_inception.hf.inject import Injection, inject
from memory_inception.hf.models import available_models, load_model
from memory_inception.hf.scoring import continuation_logprobs
from memory_inception.hf.session import Session
from memory_inception.methods.caa.hooks import ActivationAddition
from memory_inception.methods.caa.method import CAA
from memory_inception.methods.caa.pairs import ContrastPair, ab_pairs, statement_pairs
from memory_inception.methods.caa.vectors import SteeringVector, build_steering_vector
from memory_inception.methods.combined import Combined
from memory_inception.methods.interface import Cost, Method, Plain
from memory_inception.methods.mi import MI
from memory_inception.methods.prompting import Prompting
from memory_inception.methods.runners import generate, score, statement_margin
from memory_inception.tuning.calibration import (
    Calibration,
    calibrate,
    calibrate_mi,
    statement_control,
)
from memory_inception.tuning.selection import Selection, select_sites
from memory_inception.tuning.tune import Trial, Tuning, tune

# Names of the evaluation layer, imported on first use (so `import memory_inception` stays light).
_LAZY = {
    "Grade": "memory_inception.evaluation.grading",
    "extract_final_answer": "memory_inception.evaluation.grading",
    "grade": "memory_inception.evaluation.grading",
    "grade_hardmath": "memory_inception.evaluation.grading",
    "grade_physics": "memory_inception.evaluation.grading",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'memory_inception' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "CAA",
    "MI",
    "ActivationAddition",
    "Bank",
    "BankError",
    "Calibration",
    "Combined",
    "ContrastPair",
    "Cost",
    "EvaluationError",
    "Grade",
    "Injection",
    "MemoryInceptionError",
    "MemoryRead",
    "Method",
    "ModelLoadError",
    "Plain",
    "Problem",
    "Prompting",
    "Quantization",
    "QuantizedTensor",
    "Selection",
    "Session",
    "SiteError",
    "Sites",
    "Steering",
    "SteeringError",
    "SteeringVector",
    "Trial",
    "Tuning",
    "ab_pairs",
    "as_memory",
    "available_models",
    "build_bank",
    "build_memory",
    "build_steering_vector",
    "calibrate",
    "calibrate_mi",
    "continuation_logprobs",
    "extract_final_answer",
    "generate",
    "grade",
    "grade_hardmath",
    "grade_physics",
    "inject",
    "layer_strengths",
    "load_hardmath",
    "load_model",
    "load_physics",
    "score",
    "select_sites",
    "statement_control",
    "statement_margin",
    "statement_pairs",
    "tune",
]
__version__ = "0.1.0"

"""memory-inception: steer language models with text banks read by selected attention heads."""

from __future__ import annotations

from .banks import Bank, build_bank
from .caa import ActivationAddition, ContrastPair, SteeringVector, ab_pairs, build_steering_vector, statement_pairs
from .calibration import Calibration, calibrate, calibrate_mi, statement_control
from .errors import BankError, EvaluationError, MemoryInceptionError, ModelLoadError, SiteError, SteeringError
from .grading import Grade, extract_final_answer, grade, grade_hardmath, grade_physics
from .injection import Injection, inject
from .methods import CAA, MI, Combined, Cost, Method, Plain, Prompting, generate, score, statement_margin
from .models import available_models, load_model
from .reasoning import Problem, load_hardmath, load_physics
from .scoring import continuation_logprobs
from .selection import Selection, select_sites
from .session import Session
from .sites import Sites
from .steering import Steering, layer_strengths

__all__ = [
    "CAA",
    "MI",
    "ActivationAddition",
    "Bank",
    "Combined",
    "Cost",
    "Method",
    "Plain",
    "Prompting",
    "Selection",
    "SteeringVector",
    "Calibration",
    "ContrastPair",
    "EvaluationError",
    "Grade",
    "Problem",
    "ab_pairs",
    "build_steering_vector",
    "calibrate",
    "calibrate_mi",
    "extract_final_answer",
    "grade",
    "grade_hardmath",
    "grade_physics",
    "load_hardmath",
    "load_physics",
    "statement_control",
    "statement_pairs",
    "generate",
    "score",
    "select_sites",
    "statement_margin",
    "BankError",
    "Injection",
    "MemoryInceptionError",
    "ModelLoadError",
    "Session",
    "SiteError",
    "Sites",
    "Steering",
    "SteeringError",
    "available_models",
    "build_bank",
    "continuation_logprobs",
    "inject",
    "layer_strengths",
    "load_model",
]
__version__ = "0.1.0"

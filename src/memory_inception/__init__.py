"""memory-inception: steer language models with text banks read by selected attention heads."""

from __future__ import annotations

from .banks import Bank, build_bank
from .errors import BankError, MemoryInceptionError, ModelLoadError, SiteError, SteeringError
from .injection import Injection, inject
from .models import available_models, load_model
from .scoring import continuation_logprobs
from .session import Session
from .sites import Sites
from .steering import Steering, layer_strengths

__all__ = [
    "Bank",
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

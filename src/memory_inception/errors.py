"""One exception base class: every message says what was wrong and how to fix it."""

from __future__ import annotations


class MemoryInceptionError(Exception):
    """Base class of every error the library raises on purpose."""


class BankError(MemoryInceptionError, ValueError):
    """A bank could not be built, loaded or used (bad text, file, layers or model)."""


class SiteError(MemoryInceptionError, ValueError):
    """Sites do not fit the model or the banks (layer or head out of range, missing bank layers)."""


class SteeringError(MemoryInceptionError, ValueError):
    """A steering configuration is invalid or cannot be applied to this model."""


class ModelLoadError(MemoryInceptionError, ValueError):
    """A model name or path could not be resolved or loaded."""


class EvaluationError(MemoryInceptionError, ValueError):
    """An evaluation input is invalid (unknown trait, mismatched prompts and replies, missing judge model)."""


class CAAError(SteeringError):
    """A CAA dataset, steering vector or vector file is invalid or does not fit the model."""


class DataError(MemoryInceptionError, ValueError):
    """A benchmark name, kind or subject is unknown, or a shipped data file is unreadable."""


class MissingExtraError(MemoryInceptionError, ImportError):
    """An optional feature's dependencies are not installed (the message names the pip command)."""

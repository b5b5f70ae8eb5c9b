"""The request bodies the server accepts (pydantic; unknown fields refused; no NaN or infinity in any number) and
OpenAI's error body (`ApiError`)."""

from __future__ import annotations

import re
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from memory_inception.core.sites import parse_layers

# ============================================================================ errors


class ApiError(Exception):
    """An error answered as OpenAI's `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.headers = status, message, type_, code, headers


def error_body(message: str, type_: str = "invalid_request_error", code: str | None = None) -> dict:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def error_response(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """OpenAI's error object as a JSON response with `status`."""
    return JSONResponse(error_body(message, type_, code), status_code=status, headers=headers)


def describe_validation(errors: list[dict]) -> str:
    """One message for pydantic's validation errors: which field, and what was wrong with it."""
    parts = []
    for err in errors:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        where = ".".join(loc) or "body"
        if err.get("type") == "extra_forbidden":
            parts.append(f"unknown field {where!r} (not accepted here; check the spelling)")
        elif err.get("type") == "json_invalid":
            parts.append("the body is not valid JSON")
        elif not loc and err.get("type") in ("model_attributes_type", "dict_type", "missing"):
            parts.append("the body must be a JSON object (Content-Type: application/json)")
        else:
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


# ============================================================================ request models


MAX_GAIN = 100.0  # |rho| and |gain| bounds: beyond them a bank's evidence swamps (or erases) the prompt's
MAX_LAYER_INDEX = 9999  # layer numbers a request may name (the model's own range is checked later)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _layers_field(value: list[int] | str | None) -> list[int] | None:
    """`parse_layers`, refusing layer numbers no model has before a range like '0-999999999' is expanded."""
    numbers = re.findall(r"\d+", value) if isinstance(value, str) else value or []
    if len(numbers) > 1024 or any(int(n) > MAX_LAYER_INDEX for n in numbers):
        raise ValueError(f"layers names layer numbers above {MAX_LAYER_INDEX} (or more than 1024 of them)")
    return parse_layers(value)


class BankRef(_Strict):
    name: str | None = None
    text: str | None = None
    role: Literal["target", "reference", "auxiliary"] = "target"
    gain: float = Field(default=1.0, ge=-MAX_GAIN, le=MAX_GAIN)

    @model_validator(mode="after")
    def _one_source(self) -> BankRef:
        if (self.name is None) == (self.text is None):
            raise ValueError("a memory bank needs exactly one of 'name' (a saved bank) or 'text' (built on the fly)")
        if self.text is not None and not self.text.strip():
            raise ValueError("a memory bank's 'text' is empty")
        return self


class MemorySpec(_Strict):
    banks: list[BankRef] = Field(default_factory=list, max_length=16)
    layers: list[int] | str | None = None
    rho: float | None = Field(default=None, ge=-MAX_GAIN, le=MAX_GAIN)

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: list[int] | str | None) -> list[int] | None:
        return _layers_field(value)

    @model_validator(mode="after")
    def _roles(self) -> MemorySpec:
        for role in ("target", "reference"):
            if sum(b.role == role for b in self.banks) > 1:
                raise ValueError(f"memory has more than one {role!r} bank; use role 'auxiliary' for the others")
        return self


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class Sampling(_Strict):
    """The sampling fields a chat completion, a text completion and a session turn share."""

    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)  # what torch.manual_seed takes
    stop: str | list[str] | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if len(stops) > 4 or any(not s or len(s) > 256 for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings of at most 256 characters")
        return stops or None

    def generation_options(self, max_tokens: int) -> dict[str, Any]:
        """transformers' `generate` options for these fields (greedy at temperature 0; OpenAI's defaults)."""
        options: dict[str, Any] = {"max_new_tokens": max_tokens}
        temperature = 1.0 if self.temperature is None else self.temperature
        if temperature == 0:
            options["do_sample"] = False
        else:
            options.update(do_sample=True, temperature=temperature, top_p=1.0 if self.top_p is None else self.top_p)
        return options


class _Generation(Sampling):
    """What a chat and a text completion share besides sampling: the model, streaming, n=1 and `memory`."""

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    user: str | None = None
    memory: MemorySpec | None = None

    @field_validator("n")
    @classmethod
    def _n(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported")
        return value


MAX_TOP_LOGPROBS = 20


class ChatRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _logprobs(self) -> ChatRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def top_logprobs_asked(self) -> int | None:
        """How many alternatives each token's logprobs list (None: no logprobs asked)."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Generation):
    """`POST /v1/completions`: a prompt text continued as it is (no chat template)."""

    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=5)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str | list[str]) -> str:
        prompts = [value] if isinstance(value, str) else value
        if len(prompts) != 1:
            raise ValueError("send one prompt (a string, or a list of one string)")
        if not prompts[0]:
            raise ValueError("the prompt is empty")
        return prompts[0]

    def top_logprobs_asked(self) -> int | None:
        """How many alternatives each token's logprobs list (None: no logprobs asked)."""
        return self.logprobs


class BankCreate(_Strict):
    name: str
    text: str = Field(min_length=1)
    layers: list[int] | str | None = None

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: list[int] | str | None) -> list[int] | None:
        return _layers_field(value)


class SessionCreate(_Strict):
    memory: MemorySpec | None = None
    system: str | None = None


class SessionMessage(Sampling):
    content: str
    stream: bool = False
    stream_options: StreamOptions | None = None


class SessionPatch(_Strict):
    memory: MemorySpec | None

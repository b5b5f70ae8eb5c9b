"""The request bodies the server accepts (pydantic; unknown fields refused) and OpenAI's error body (`ApiError`)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from memory_inception.core.sites import parse_layers

# ============================================================================ errors


class ApiError(Exception):
    """An error answered as OpenAI's `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code


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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BankRef(_Strict):
    name: str | None = None
    text: str | None = None
    role: Literal["target", "reference", "auxiliary"] = "target"
    gain: float = 1.0

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
    rho: float | None = Field(default=None, ge=-100, le=100)

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: list[int] | str | None) -> list[int] | None:
        return parse_layers(value)

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
    """The sampling fields a chat completion and a session turn share."""

    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
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


class ChatRequest(Sampling):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
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


class BankCreate(_Strict):
    name: str
    text: str = Field(min_length=1)
    layers: list[int] | str | None = None

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: list[int] | str | None) -> list[int] | None:
        return parse_layers(value)


class SessionCreate(_Strict):
    memory: MemorySpec | None = None
    system: str | None = None


class SessionMessage(Sampling):
    content: str


class SessionPatch(_Strict):
    memory: MemorySpec | None

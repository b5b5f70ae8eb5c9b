"""A small typed front end: `MIEngine` (a vLLM `LLM` with the plugin), `steering_params` and `steered_prompt`."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from memory_inception.core.plan import plan_layers
from memory_inception.errors import MemoryInceptionError, ModelLoadError
from memory_inception.hf.text import render_prompt
from memory_inception.vllm.bankdir import BankDirectory
from memory_inception.vllm.checkpoint import Checkpoint
from memory_inception.vllm.spec import EXTRA_ARGS_KEY, RequestSteering

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]
PLUGIN_NAME = "memory_inception"
DEFAULT_KV_CACHE_BYTES = 512 << 20


@dataclass(frozen=True)
class Generation:
    """One request's result: generated token ids, their text, vLLM's finish reason and prefix-cache hits."""

    token_ids: tuple[int, ...]
    text: str
    finish_reason: str | None
    cached_tokens: int = 0


def steering_params(steering: RequestSteering | None = None, **sampling: Any):
    """`vllm.SamplingParams(**sampling)` carrying `steering` in `extra_args` (None or no banks: a plain request)."""
    from vllm import SamplingParams

    extra = dict(sampling.pop("extra_args", None) or {})
    if steering is not None and steering.banks:
        extra[EXTRA_ARGS_KEY] = steering.to_extra_args()
    return SamplingParams(**sampling, extra_args=extra or None)


def steered_prompt(token_ids: Sequence[int], steering: RequestSteering | None = None) -> dict[str, Any]:
    """A vLLM tokens prompt; a steered one gets its own `cache_salt`, so it never shares prefix-cache blocks.

    Steered tokens have steered keys and values at later layers, and the plugin's key copy must see every
    position, so a steered request neither reuses nor leaves cache blocks for others (docs/vllm.md).
    """
    prompt: dict[str, Any] = {"prompt_token_ids": [int(t) for t in token_ids]}
    if steering is not None and steering.banks:
        prompt["cache_salt"] = "memory-inception-" + secrets.token_hex(16)
    return prompt


def checkpoint_dir(model: str | Path | None) -> Path:
    """The transformers checkpoint directory vLLM loads: the core's converted GGUF entry, or a directory."""
    from memory_inception.hf.models import (
        DEFAULT_MODEL,
        available_models,
        cache_entry,
        gguf_path,
        load_model,
    )

    name = DEFAULT_MODEL if model is None else str(model)
    if name.lower() in available_models():
        entry = cache_entry(gguf_path(name.lower()))
        if not (entry / "config.json").is_file():
            load_model(name)  # converts the GGUF once (cached); the same weights as the transformers path
        return entry
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return path
    raise ModelLoadError(f"{name!r} is neither a model name nor a checkpoint directory with config.json")


def check_plugin_installed() -> None:
    """Raise unless the package's vLLM entry points are installed (they load the plugin in every vLLM process)."""
    for group in ("vllm.general_plugins", "vllm.logits_processors"):
        if PLUGIN_NAME not in {ep.name for ep in entry_points(group=group)}:
            raise MemoryInceptionError(
                f"the memory-inception vLLM plugin is not installed (no {group!r} entry point); install the "
                "package into vLLM's environment: pip install -e '.[vllm]' (see `make test-vllm`)"
            )


class MIEngine:
    """A vLLM engine with Memory Inception: plain and steered requests share its batches.

    `bank_dir` holds the banks requests name (`Bank.save` files). fp32, eager mode and a small KV cache by
    default, to match the transformers path on a CPU; other keywords go to `vllm.LLM`.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        bank_dir: str | Path,
        dtype: str = "float32",
        max_model_len: int = 2048,
        kv_cache_bytes: int = DEFAULT_KV_CACHE_BYTES,
        enforce_eager: bool = True,
        seed: int = 0,
        **llm_options: Any,
    ) -> None:
        from transformers import AutoTokenizer
        from vllm import LLM

        check_plugin_installed()
        self.path = checkpoint_dir(model)
        self.checkpoint = Checkpoint(self.path)
        self.bank_dir = BankDirectory(bank_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        options = dict(
            model=str(self.path), dtype=dtype, seed=seed, max_model_len=max_model_len, enforce_eager=enforce_eager,
            gpu_memory_utilization=0.25, kv_cache_memory_bytes=kv_cache_bytes,
            additional_config={EXTRA_ARGS_KEY: {"bank_dir": str(Path(bank_dir).resolve())}},
        )
        options.update(llm_options)
        self.llm = LLM(**options)

    def close(self) -> None:
        """Shut the engine's processes down (also done at interpreter exit)."""
        core = getattr(self.llm.llm_engine, "engine_core", None)
        if core is not None:
            core.shutdown()

    def check(self, steering: RequestSteering | None) -> None:
        """Raise a clear error now (unknown bank, foreign bank, bad sites) rather than inside the engine."""
        if steering is None or not steering.banks:
            return
        fingerprint = self.checkpoint.fingerprint
        plan_layers(steering.resolve(self.bank_dir, fingerprint), self.checkpoint.geometry, fingerprint=fingerprint)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        steering: RequestSteering | None | Sequence[RequestSteering | None] = None,
        *,
        max_tokens: int = 64,
        temperature: float = 0.0,
        **sampling: Any,
    ) -> list[Generation]:
        """Generate for token-id prompts, each with its own steering (one value applies to all); greedy by default."""
        steerings = list(steering) if isinstance(steering, (list, tuple)) else [steering] * len(prompts)
        if len(steerings) != len(prompts):
            raise MemoryInceptionError(f"got {len(prompts)} prompts but {len(steerings)} steerings")
        for s in {s.cache_key(): s for s in steerings if s is not None}.values():
            self.check(s)
        params = [steering_params(s, max_tokens=max_tokens, temperature=temperature, **sampling) for s in steerings]
        inputs = [steered_prompt(ids, s) for ids, s in zip(prompts, steerings)]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        return [Generation(tuple(o.outputs[0].token_ids), o.outputs[0].text, o.outputs[0].finish_reason,
                           o.num_cached_tokens or 0) for o in outputs]

    def chat(
        self,
        conversations: Sequence[Messages],
        steering: RequestSteering | None | Sequence[RequestSteering | None] = None,
        **options: Any,
    ) -> list[Generation]:
        """`generate` on conversations rendered with the chat template exactly as `methods.generate` renders them."""
        prompts = [render_prompt(self.tokenizer, conv)[0] for conv in conversations]
        return self.generate(prompts, steering, **options)

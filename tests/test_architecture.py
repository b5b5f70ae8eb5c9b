"""The package's shape: layers (import-linter contracts), no import cycles, no private names across modules,
unique module names, modules under 700 lines, a light `import memory_inception`, clear errors for missing extras."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import pytest

import memory_inception.extras as extras
from memory_inception.errors import MissingExtraError

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "memory_inception"
MAX_LINES = 700


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, module: str, modules: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in the file: top-level, function-local and
    TYPE_CHECKING ones alike. `from pkg import sub` counts as importing the submodule."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [alias.name for alias in node.names]
            subs = [n for n in names if f"{target}.{n}" in modules]
            found += [(f"{target}.{n}", [], node.lineno) for n in subs]
            rest = [n for n in names if n not in subs]
            if rest or not subs:
                found.append((target, rest, node.lineno))
    return [(t, names, line) for t, names, line in found if t == "memory_inception" or t.startswith("memory_inception.")]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        for target, _names, _line in _imports(path, module, modules):
            if target in modules and target != module:
                graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_import_linter_contracts_are_kept():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    result = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout and "3 kept, 0 broken" in result.stdout


def test_the_layers_contract_fails_on_an_upward_import(tmp_path):
    # the same contracts on a copy of the package with core importing the CLI must break
    copy = tmp_path / "src"
    shutil.copytree(PACKAGE, copy / "memory_inception", ignore=shutil.ignore_patterns("data", "__pycache__"))
    (copy / "memory_inception" / "core" / "upward.py").write_text("from memory_inception.cli import app\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    env = {"PYTHONPATH": str(copy), "PATH": str(Path(sys.executable).parent)}
    result = subprocess.run([lint, "--no-cache"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode != 0 and "memory_inception.core.upward -> memory_inception.cli" in result.stdout


def test_no_import_cycles_between_modules():
    graph = _graph()
    assert graph["memory_inception.hf.inject"], "the graph reads imports"  # a module that imports others
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_name_is_imported_across_modules():
    modules = _modules()
    crossing = []
    for module, path in modules.items():
        for target, names, line in _imports(path, module, modules):
            crossing += [f"{path.relative_to(ROOT)}:{line} imports {target}.{n}" for n in names
                         if n.startswith("_") and not n.startswith("__") and target != module]
    assert crossing == []


def test_module_basenames_are_unique_and_modules_short():
    names = defaultdict(list)
    for path in PACKAGE.rglob("*.py"):
        if path.name != "__init__.py":
            names[path.name].append(str(path.relative_to(PACKAGE)))
    assert {n: p for n, p in names.items() if len(p) > 1} == {}
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_import_memory_inception_loads_no_optional_dependency():
    # what transformers and torch load for the pieces the library uses is the baseline; the library adds nothing
    code = textwrap.dedent("""
        import sys
        OPTIONAL = ["fastapi", "uvicorn", "starlette", "pydantic", "sentence_transformers", "sklearn", "math_verify",
                    "latex2sympy2_extended", "matplotlib", "yaml", "vllm", "openai", "httpx", "sympy", "scipy"]
        import torch, transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, AttentionInterface
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        from transformers.masking_utils import eager_mask, sdpa_mask
        from transformers.models.llama.modeling_llama import eager_attention_forward
        before = {m for m in OPTIONAL if m in sys.modules}
        import memory_inception as mi
        mi.Steering, mi.build_bank, mi.inject, mi.load_model
        print(sorted({m for m in OPTIONAL if m in sys.modules} - before))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_a_missing_extra_names_the_pip_command(monkeypatch):
    assert "fastapi" in extras.extra_requirements("serve") and "matplotlib" in extras.extra_requirements("eval")
    extras.require_extra("serve", "the server")  # installed here: no error
    real = extras.importlib.metadata.version

    def version(name: str) -> str:
        if name == "fastapi":
            raise extras.importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(extras.importlib.metadata, "version", version)
    with pytest.raises(MissingExtraError, match=r"pip install 'memory-inception\[serve\]'") as err:
        extras.require_extra("serve", "the server")
    assert "fastapi" in str(err.value) and isinstance(err.value, ImportError)

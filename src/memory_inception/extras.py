"""Optional features and their pip extras: a missing extra is a clear error naming the command that installs it.

What each extra holds is read from the installed package's metadata (pyproject.toml's
`[project.optional-dependencies]`), so the list lives in one place.
"""

from __future__ import annotations

import importlib.metadata
import re

from memory_inception.errors import MissingExtraError

DISTRIBUTION = "memory-inception"
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([\w.-]+)["']""")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def extra_requirements(extra: str) -> list[str]:
    """Distribution names the extra `extra` requires (empty when the package metadata is not installed)."""
    try:
        requires = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    names = []
    for requirement in requires:
        marker = _EXTRA_MARKER.search(requirement)
        name = _NAME.match(requirement)
        if marker and marker.group(1) == extra and name and name.group(1) != DISTRIBUTION:
            names.append(name.group(1))
    return names


def missing(extra: str) -> list[str]:
    """The distributions of `extra` that are not installed."""
    out = []
    for name in extra_requirements(extra):
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out.append(name)
    return out


def require_extra(extra: str, feature: str) -> None:
    """Raise `MissingExtraError` unless every distribution of `extra` is installed."""
    absent = missing(extra)
    if absent:
        raise MissingExtraError(
            f"{feature} needs the [{extra}] extra ({', '.join(absent)} not installed); install it with "
            f"pip install 'memory-inception[{extra}]'"
        )

"""`mi`: the command line (one module per command group)."""

from memory_inception.cli.commands import app

__all__ = ["app"]

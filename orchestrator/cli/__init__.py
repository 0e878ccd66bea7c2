"""The ``orchestrator`` command."""

from orchestrator.cli.commands import main

__all__ = ["main"]

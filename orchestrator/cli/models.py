"""The ``models`` commands: build models that need no download (``models tiny``)."""

from __future__ import annotations

import argparse

from orchestrator.cli.render import say


def cmd_models_tiny(args: argparse.Namespace) -> int:
    """Build a tiny random Llama-style chat model with tokenizer and chat template (offline); prints its folder."""
    from orchestrator.models.tiny import build_tiny_model, default_tiny_dir

    say(str(build_tiny_model(args.out or default_tiny_dir())))
    return 0

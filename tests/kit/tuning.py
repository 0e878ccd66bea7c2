"""What the fine-tuning tests share: a tiny chat dataset and the pools it trains on (a light pool ``llm`` on the
offline tiny model, and the ``heavy`` pool in this venv)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

WORDS = ["apple", "river", "stone", "cloud", "green", "north"]
CHATS = [
    {"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": f"{w} {w} {w}"}]}
    for w in WORDS
]


def pools(tiny: Path) -> dict[str, Any]:
    """``llm`` serving ``tiny`` as ``llm/tiny``, and ``heavy`` (the pool the fine-tuning routes submit to)."""
    small = {"num_cpus": 0.25}
    return {
        "llm": {
            "worker": "workers.light:Light",
            "resources": small,
            "options": {"model": str(tiny), "name": "tiny", "threads": 1},
        },
        "heavy": {
            "worker": "workers.heavy:Heavy",
            "env_manager": "none",  # this venv: a pool named heavy would otherwise build envs/heavy with pip
            "resources": small,
            "health": {"period_s": 0.5, "timeout_s": 10},
            "options": {"model": "llm/tiny"},
        },
    }

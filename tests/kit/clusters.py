"""What the multi-node drills (``node_loss``, ``multinode``) share: report what was seen, then stop everything."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import ray
from ray.cluster_utils import Cluster

import orchestrator


@contextlib.contextmanager
def reporting(out: dict[str, Any], orch: orchestrator.Orchestrator, cluster: Cluster) -> Iterator[None]:
    """Print ``out`` as one JSON line however the drill ends (the test asserts on it), then shut down the
    orchestrator, Ray and the cluster."""
    try:
        yield
    finally:
        print(json.dumps(out), flush=True)
        try:
            orch.shutdown(drain_s=1.0)
        finally:
            ray.shutdown()
            cluster.shutdown()

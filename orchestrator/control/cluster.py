"""The control plane's view of Ray: bounded awaits on actors, the named actors it may adopt,
alive nodes' resources and the demands Ray could not place yet, and the code it ships to nodes.

The supervisor asks the last two to tell "waiting for resources" (and which) from
"building its env or running its constructor" for an actor that is not ready.
"""

from __future__ import annotations

import asyncio
import tempfile
from typing import Any

import ray

from orchestrator.config.envs import CODE_EXCLUDES

ADMIN_TIMEOUT_S = 10.0  # an admin answer (open a session, restore, validate, export) takes longer only if stuck


async def ask(ref: Any, timeout_s: float = ADMIN_TIMEOUT_S) -> Any:
    """Await an actor call's answer for at most ``timeout_s`` (then TimeoutError): no await on an actor is unbounded."""
    return await asyncio.wait_for(_awaited(ref), timeout_s)


async def _awaited(ref: Any) -> Any:
    return await ref


def named_actors(namespace: str) -> list[str]:
    """Names of the live named actors in a Ray namespace."""
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == namespace]


def nodes() -> list[dict[str, dict[str, float]]]:
    """Each alive node's ``total`` and ``available`` resources."""
    from ray._private.state import available_resources_per_node

    available = available_resources_per_node()
    return [
        {"total": node["Resources"], "available": available.get(node["NodeID"], {})}
        for node in ray.nodes()
        if node["Alive"]
    ]


def pending_demands() -> list[dict[str, float]]:
    """Resource shapes Ray has not been able to place (its autoscaler's view)."""
    from ray.autoscaler.v2.sdk import get_cluster_status

    try:
        status = get_cluster_status(ray.get_runtime_context().gcs_address)
    except Exception:  # an older or unusual cluster: fall back to "no known demand"
        return []
    return [
        dict(by_count.bundle)
        for demand in status.resource_demands.ray_task_actor_demand
        for by_count in demand.bundles_by_count
    ]


def ship(paths: list[str]) -> list[str]:
    """Upload local code folders (or ``.py`` files) to the cluster; their ``gcs://`` URIs for ``py_modules``.

    Ray takes local paths in ``py_modules`` only at ``ray.init``, not in an actor's options, so the
    coordinator uploads them itself. Content-addressed: an unchanged folder is not sent again, and one
    Ray garbage-collected after its actors ended is sent again at the next launch.
    """
    if not paths:
        return []
    from ray._private.runtime_env.py_modules import upload_py_modules_if_needed

    with tempfile.TemporaryDirectory(prefix="orchestrator-code-") as scratch:
        shipped = upload_py_modules_if_needed(
            {"py_modules": list(paths), "excludes": list(CODE_EXCLUDES)}, include_gitignore=True, scratch_dir=scratch
        )
    return list(shipped["py_modules"])

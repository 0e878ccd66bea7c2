"""The OpenAPI document (``/openapi.json``, ``/docs``) with a path for each op of each running pool.

FastAPI describes the generic ``POST /v1/pools/{pool}/ops/{op}``; this adds
``POST /v1/pools/<pool>/ops/<op>`` for every stateless op in the routing table,
with the op's argument schema (the same pydantic model that validates the call)
as its request body, so ``/docs``, client generators and fuzzers see what
each op takes. Session ops are called through ``/v1/sessions/{id}/ops/{op}``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from orchestrator.dataplane.handles import Orchestrator

DEFS = "#/$defs/"


def publish_ops(app: FastAPI, orch: Orchestrator) -> None:
    """Make ``app.openapi()`` add the ops of the pools as they are now (FastAPI caches only its own part)."""
    base: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        document = copy.deepcopy(base())
        add_ops(document, orch.router.table.get("pools", {}))
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def add_ops(document: dict[str, Any], pools: dict[str, Any]) -> None:
    """Add one path per stateless op, its argument schema's ``$defs`` moved into ``components``."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for pool, entry in sorted(pools.items()):
        for name, info in sorted((entry.get("ops") or {}).items()):
            if info.get("session") is True:  # "optional" ops are called outside sessions too
                continue
            prefix = f"{pool}.{name}."
            params = copy.deepcopy(info.get("params") or {"type": "object"})
            for def_name, definition in params.pop("$defs", {}).items():
                schemas[prefix + def_name] = _rewrite_refs(definition, prefix)
            params = _rewrite_refs(params, prefix)
            document["paths"][f"/v1/pools/{pool}/ops/{name}"] = {"post": _operation(pool, name, info, params)}


def _operation(pool: str, name: str, info: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    stream = " With `Accept: text/event-stream` it streams Server-Sent Events." if info["stream"] else ""
    return {
        "tags": [f"pool {pool}"],
        "summary": f"{pool}.{name}",
        "description": f"Run op `{name}` of pool `{pool}`; the body is its arguments.{stream}",
        "operationId": f"op_{pool}_{name}".replace("-", "_"),
        "requestBody": {
            "required": bool(params.get("required")),
            "content": {"application/json": {"schema": params}},
        },
        "responses": {
            "200": {
                "description": "The op's result.",
                "content": {"application/json": {"schema": {"type": "object", "properties": {"result": {}}}}},
            },
            "422": {"description": "An argument is invalid; `detail` names each field."},
        },
    }


def _rewrite_refs(node: Any, prefix: str) -> Any:
    """``#/$defs/X`` -> ``#/components/schemas/<prefix>X``, everywhere in ``node``."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(DEFS):
            node = {**node, "$ref": "#/components/schemas/" + prefix + ref[len(DEFS) :]}
        return {key: _rewrite_refs(value, prefix) for key, value in node.items()}
    if isinstance(node, list):
        return [_rewrite_refs(item, prefix) for item in node]
    return node

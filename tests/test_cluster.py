"""Pools on a real multi-node Ray (``ray.cluster_utils.Cluster``, in its own process: tests/kit/multinode.py).

Code reaches every node through the runtime env, pools spread over worker nodes, a pool scales up
under load onto free nodes, waits ``pending`` when none has room, takes a node added mid-run, and
scales back down when the load stops.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def seen() -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "tests.kit.multinode"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, result.stdout[-3000:] + result.stderr[-3000:]
    return dict(json.loads(lines[-1]))


def test_pool_code_reaches_worker_nodes_through_the_runtime_env(seen: dict[str, Any]) -> None:
    assert seen["driver_can_import_probe"] is False, "the probe must be importable only from pools.yaml's folder"
    [code] = seen["code"]
    assert "/runtime_resources/py_modules_files/" in code, f"the worker's code came from {code}, not the runtime env"


def test_a_pool_spreads_over_worker_nodes(seen: dict[str, Any]) -> None:
    assert len(seen["spread_nodes"]) == 2 and seen["head"] not in seen["spread_nodes"], seen
    assert seen["spread_nodes"] == seen["spread_actor_nodes"], "calls reached both actors, each on its own node"


def test_a_pool_scales_up_under_load_and_waits_pending_for_a_node(seen: dict[str, Any]) -> None:
    assert len(set(seen["ready_before_new_node"])) == 2, "the second actor went to the other worker node"
    assert seen["pending"]["state"] == "pending", seen
    assert seen["pending"]["reason"].startswith("waiting for resources: needs CPU=1"), seen["pending"]


def test_a_node_added_mid_run_receives_the_pending_actor_and_serves_calls(seen: dict[str, Any]) -> None:
    assert seen["new_node"] in seen["elastic_actor_nodes"], seen
    assert seen["new_node_served"] is True, "calls reached the actor on the new node"


def test_the_pool_scales_down_to_min_when_the_load_stops_and_says_why(seen: dict[str, Any]) -> None:
    assert seen["scaled_down_to"] == 1
    assert seen["events"] == [
        ["scale_up", "elastic-1"],
        ["scale_up", "elastic-2"],
        ["scale_down", "elastic-2"],
        ["scale_down", "elastic-1"],
    ], "newest first on the way down"
    assert seen["reasons"][0] == "load 1 per actor >= target 1 for 0.5s"
    assert "cool-down 3s" in seen["reasons"][-1]
    assert seen["after_scale_down"] is True, "the remaining actor serves"

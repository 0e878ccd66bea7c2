"""Cluster drill on a real multi-node Ray (``ray.cluster_utils.Cluster``), run as its own process.

A head with no CPUs (the coordinator and its store live there) and two worker nodes with one CPU
each. The pools' worker is a package written to a temporary folder that only pools.yaml's folder
holds: no node can import it but through the runtime env the orchestrator ships. Then:

- ``spread``: two actors, one per worker node (a custom resource each node has one of);
- ``elastic``: 1..3 actors of one CPU each under steady load: it scales up onto the second node,
  its third actor waits ``pending`` (no CPU left) until a node added mid-run takes it, and it
  scales back down when the load stops.

Prints one JSON line with what was observed; ``tests/test_cluster.py`` asserts on it.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import ray
from ray.cluster_utils import Cluster

import orchestrator
from orchestrator.config import parse_config
from tests.kit.clusters import reporting

PROBE = '''
import os
import time

import ray

from orchestrator import Worker, op


class Probe(Worker):
    @op
    def where(self, seconds: float = 0.0) -> dict:
        time.sleep(seconds)
        import orchestrator

        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "code": __file__,
            "orchestrator": orchestrator.__file__,
        }
'''


def probe_package(folder: Path) -> str:
    """Write the probe worker as a package only ``folder`` holds; its import name."""
    name = f"probe_{uuid.uuid4().hex[:8]}"
    (folder / name).mkdir()
    (folder / name / "__init__.py").write_text(PROBE)
    return name


def wait_for(predicate: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    return None


def main() -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=1, resources={"spread": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="cluster-drill", log_to_driver=False)
    head = ray.get_runtime_context().get_node_id()
    folder = Path(tempfile.mkdtemp(prefix="cluster-drill-"))
    probe = probe_package(folder)
    health = {"period_s": 0.3, "timeout_s": 10.0}
    config = {
        "ray": {"namespace": "cluster-drill", "address": cluster.address},
        "state_dir": str(folder / "state"),
        "pools": {
            "spread": {
                "worker": f"{probe}:Probe",
                "size": 2,
                "resources": {"num_cpus": 0, "custom": {"spread": 1}},
                "health": health,
            },
            "elastic": {
                "worker": f"{probe}:Probe",
                "size": {"min": 1, "max": 3},
                "resources": {"num_cpus": 1},
                "limits": {"concurrency": 1},
                "autoscale": {"up_after_s": 0.5, "down_after_s": 3},
                "health": health,
            },
        },
    }
    out: dict[str, Any] = {"head": head, "driver_can_import_probe": importlib.util.find_spec(probe) is not None}
    orch = orchestrator.start(parse_config(config, base_dir=folder))
    with reporting(out, orch, cluster):
        seen = [orch.call("spread", "where") for _ in range(8)]
        out["spread_nodes"] = sorted({s["node_id"] for s in seen})
        out["spread_actor_nodes"] = sorted(a["node_id"] for a in orch.status()["spread"]["actors"])
        out["code"] = sorted({s["code"] for s in seen})
        out["orchestrator_code"] = sorted({s["orchestrator"] for s in seen})

        served: list[str] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                served.append(orch.call("elastic", "where", seconds=0.3)["node_id"])

        threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
        for thread in threads:
            thread.start()

        def third_pending() -> Any:
            actors = orch.status()["elastic"]["actors"]
            return len(actors) == 3 and actors[2]["state"] == "pending" and actors[2]

        pending = wait_for(third_pending, 60)
        out["pending"] = pending and {"state": pending["state"], "reason": pending["reason"]}
        out["ready_before_new_node"] = sorted(
            a["node_id"] for a in orch.status()["elastic"]["actors"] if a["state"] == "ready"
        )
        new_node = cluster.add_node(num_cpus=1)
        out["new_node"] = new_node.node_id
        out["new_node_served"] = bool(wait_for(lambda: new_node.node_id in served[-20:], 60))
        out["elastic_actor_nodes"] = sorted(a["node_id"] for a in orch.status()["elastic"]["actors"])
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        out["scaled_down_to"] = wait_for(
            lambda: (n := len(orch.status()["elastic"]["actors"])) == 1 and n, 60
        ) or len(orch.status()["elastic"]["actors"])
        status = orch.status()["elastic"]
        out["events"] = [(e["kind"], e["actor"]) for e in status["events"] if e["kind"].startswith("scale_")]
        out["reasons"] = [e["reason"] for e in status["events"] if e["kind"].startswith("scale_")]
        out["after_scale_down"] = orch.call("elastic", "where")["node_id"] != ""


if __name__ == "__main__":
    sys.exit(main())

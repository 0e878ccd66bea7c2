"""Node-loss drill on a real multi-node Ray (``ray.cluster_utils.Cluster``), run as its own process.

A head with no CPUs (the coordinator and its store live there) and two worker
nodes. A session with after-call checkpoints and a job running in it sit on
one node; that node is removed. Prints one JSON line with what was observed;
``tests/test_drills.py`` asserts on it.
"""

from __future__ import annotations

import sys
import tempfile
import time
from typing import Any

import ray
from ray.cluster_utils import Cluster

import orchestrator
from orchestrator.config import parse_config
from tests.kit.clusters import reporting


def main() -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="drill", log_to_driver=False)
    pool = {
        "worker": "tests.kit:Toolbox",
        "size": 2,
        "resources": {"num_cpus": 1},
        "health": {"period_s": 0.5, "timeout_s": 5.0},
        "sessions": {"checkpoint": "after_call"},
    }
    config = {
        "ray": {"namespace": "drill", "address": cluster.address},
        "state_dir": tempfile.mkdtemp(prefix="node-loss-"),
        "pools": {"p": pool},
        "jobs": {"max_retries": 3},
    }
    orch = orchestrator.start(parse_config(config, base_dir="."))
    out: dict[str, Any] = {}
    with reporting(out, orch, cluster):
        session = orch.session("p")
        out["before"] = session.call("incr", by=5)
        actor = orch.status()["p"]["actors"][session.slot]
        doomed = next(node for node in workers if node.node_id == actor["node_id"])
        job = orch.submit("p", "trials", _session=session, n=80, interval=0.05, checkpoint_every=3)
        deadline = time.monotonic() + 60
        while job.status()["events"] < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        cluster.remove_node(doomed)
        killed_at = time.monotonic()
        out["job"] = job.result(timeout=180)
        out["after"] = session.call("incr", by=1)
        out["events"] = [seq for seq, _ in job.events()]
        out["trials"] = [e["trial"] for _, e in job.events() if "trial" in e]
        out["attempts"] = job.status()["attempts"]

        def full() -> bool:
            actors = orch.status()["p"]["actors"]
            return all(a["state"] == "ready" and a["node_id"] != doomed.node_id for a in actors)

        while not full() and time.monotonic() - killed_at < 120:
            time.sleep(0.2)
        actors = orch.status()["p"]["actors"]
        out["pool"] = [{"state": a["state"], "off_lost_node": a["node_id"] != doomed.node_id} for a in actors]
        out["session_actor_moved"] = actors[session.slot]["node_id"] != doomed.node_id


if __name__ == "__main__":
    sys.exit(main())

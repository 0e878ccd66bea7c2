"""The container files in docker/, read without building anything: compose, KubeRay, Dockerfiles, scripts.

docker/build.sh builds and smoke-tests the image itself (buildah, minutes); these checks guard what a
reader of the files relies on: the head runs `orchestrator up`, workers join the head, the gateway is
reachable, the image runs as a non-root user.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

DOCKER = Path(__file__).resolve().parent.parent / "docker"
GATEWAY_PORT = 8000


def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def kuberay() -> dict[str, dict[str, Any]]:
    """The manifests of docker/kuberay.yaml by kind."""
    docs = [doc for doc in yaml.safe_load_all((DOCKER / "kuberay.yaml").read_text()) if doc]
    return {doc["kind"]: doc for doc in docs}


def instructions(dockerfile: str, stage: int = -1) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of one stage of a Dockerfile (default: the last), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DOCKER / dockerfile).read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    stages: list[list[tuple[str, str]]] = [[]]
    for line in lines:
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), rest.strip()))
    return stages[stage]


def test_compose_head_runs_orchestrator_up_and_publishes_the_gateway() -> None:
    head = compose()["services"]["head"]
    assert head["entrypoint"] == ["orchestrator-node"] and head["command"] == ["head"]
    assert any(str(port).split(":")[-1] == str(GATEWAY_PORT) for port in head["ports"])
    assert "ORCHESTRATOR_TOKEN" in head["environment"]
    assert any(volume.endswith(":/var/lib/orchestrator") for volume in head["volumes"])
    assert head.get("shm_size")
    # the head mode of the entrypoint is what runs `orchestrator up` on the Ray head it starts
    entrypoint = (DOCKER / "entrypoint.sh").read_text()
    head_mode = entrypoint[entrypoint.index("head)") : entrypoint.index(";;")]
    assert "ray start --head" in head_mode and "orchestrator up" in head_mode


def test_compose_workers_join_the_heads_ray_port() -> None:
    services = compose()["services"]
    worker = services["worker"]
    assert worker["command"] == ["worker"]
    host, _, port = worker["environment"]["RAY_HEAD_ADDRESS"].partition(":")
    assert host == "head" and port == "6379" and "head" in services
    assert worker["deploy"]["replicas"] == 2
    assert "ray start --address=" in (DOCKER / "entrypoint.sh").read_text()


def test_kuberay_head_runs_orchestrator_up_and_workers_autoscale() -> None:
    manifests = kuberay()
    cluster = manifests["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]["template"]
    assert head["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    container = head["spec"]["containers"][0]
    assert "orchestrator-node head" in " ".join(container["args"])
    assert GATEWAY_PORT in [port["containerPort"] for port in container["ports"]]
    assert {env["name"] for env in container["env"]} >= {"ORCHESTRATOR_TOKEN"}
    (group,) = spec["workerGroupSpecs"]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (2, 1, 4)
    for template in (head, group["template"]):
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True
        assert template["spec"]["containers"][0]["resources"]["limits"]


def test_kuberay_service_exposes_the_gateway_of_the_head() -> None:
    manifests = kuberay()
    service = manifests["Service"]
    assert service["spec"]["selector"] == {"ray.io/cluster": "orchestrator", "ray.io/node-type": "head"}
    assert manifests["RayCluster"]["metadata"]["name"] == "orchestrator"
    (port,) = service["spec"]["ports"]
    assert port["port"] == GATEWAY_PORT and port["targetPort"] == "gateway"


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_image_runs_orchestrator_as_a_non_root_user(dockerfile: str) -> None:
    text = (DOCKER / dockerfile).read_text()
    assert re.search(r"^ARG BASE_IMAGE=\S+", text, re.M), "the base image is a build arg"
    final = instructions(dockerfile)
    assert final[0] == ("FROM", "${BASE_IMAGE}")
    users = [args for word, args in final if word == "USER"]
    assert users, "the image sets a USER"
    user = users[-1].split(":")[0]
    args = dict(arg.split("=", 1) for word, arg in final if word == "ARG" and "=" in arg)
    resolved = args.get(user.strip("${}"), user)
    assert re.fullmatch(r"\d+|[a-z_][a-z0-9_-]*", resolved), f"USER {users[-1]}: {resolved!r}"
    assert resolved not in ("root", "0"), f"USER {users[-1]} is root"
    assert ("ENTRYPOINT", '["orchestrator"]') in final
    exposed = {port for word, ports in final if word == "EXPOSE" for port in ports.split()}
    assert {"8000", "8265", "6379"} <= exposed


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_the_image_holds_the_code_pools_yaml_ships(dockerfile: str) -> None:
    """pools.yaml's ``code:`` packages must be in the app folder: ``up`` refuses to start without them."""
    code = yaml.safe_load((DOCKER.parent / "pools.yaml").read_text()).get("code") or []
    builder = instructions(dockerfile, stage=-2)
    workdir = [args for word, args in builder if word == "WORKDIR"][-1]
    copied = {args.split()[-1].rstrip("/") for word, args in builder if word == "COPY"}
    assert workdir.endswith("/app") and code, (workdir, code)
    missing = [package for package in code if package not in copied]
    assert not missing, f"{dockerfile} does not copy {missing} (pools.yaml's code:) into {workdir}"


def test_build_context_leaves_out_local_state() -> None:
    ignored = (DOCKER.parent / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".orchestrator"} <= set(ignored)


@pytest.mark.parametrize("script", ["build.sh", "entrypoint.sh", "smoke.sh"])
def test_scripts_parse(script: str) -> None:
    shell = "bash" if script == "build.sh" else "sh"
    if shutil.which(shell) is None:
        pytest.skip(f"no {shell}")
    result = subprocess.run([shell, "-n", str(DOCKER / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

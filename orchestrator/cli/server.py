"""The server commands: ``up`` (Ray, the pools and a supervised gateway) and ``gateway`` (the HTTP server alone).

They need the server install (Ray, FastAPI, uvicorn, yaml): each imports those
parts inside its function, so the client commands never load them.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from orchestrator.cli.envs import EnvLines
from orchestrator.cli.render import StartupLines, say, status_table

if TYPE_CHECKING:
    from orchestrator.config.schema import GatewayOptions


def dashboard_url() -> str | None:
    """The Ray dashboard of the cluster this process joined, if it runs one."""
    from ray._private import worker

    node = getattr(worker.global_worker, "node", None)
    url = node.address_info.get("webui_url") if node is not None else None
    return f"http://{url}" if url and not str(url).startswith("http") else url


def cmd_up(args: argparse.Namespace) -> int:
    """Start Ray (or join --address), the pools and the HTTP gateway; Ctrl-C or SIGTERM drains and stops.

    The gateway runs in a child process this one supervises: it can crash or be
    restarted without touching Ray, the pools, sessions or running jobs.
    """
    import ray

    from orchestrator.config import load_config
    from orchestrator.control.launch import start
    from orchestrator.gateway.guard import check_bind

    config = load_config(args.config)
    gateway = config.gateway
    config.ray.address = args.address or config.ray.address
    host, port = args.host or gateway.host, gateway.port if args.port is None else args.port
    check_bind(host, bool(gateway.credentials()))  # refuse before starting anything
    say(f"starting {len(config.pools)} pool(s) from {args.config}")
    orch = start(config, on_progress=StartupLines(), on_env_progress=EnvLines())  # builds missing venv envs first
    say(status_table(orch.status().values()))
    dashboard = dashboard_url()
    if dashboard:
        say(f"Ray dashboard: {dashboard}")
    address = ray.get_runtime_context().gcs_address
    say(f"in Python: orchestrator.connect({address!r}, namespace={orch.namespace!r})")

    stop = {"now": False}
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    command = [sys.executable, "-m", "orchestrator", "gateway", "--address", address]
    command += ["--namespace", orch.namespace, "--config", args.config, "--host", host, "--port", str(port)]
    command += ["--stop-parent"]
    child: subprocess.Popen[bytes] | None = None

    def forward_hangup(*_: object) -> None:  # SIGHUP: the gateway re-reads its tokens
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGHUP)

    signal.signal(signal.SIGHUP, forward_hangup)
    try:
        while not stop["now"]:
            if child is None or child.poll() is not None:
                if child is not None:
                    say(f"the gateway exited ({child.returncode}); restarting it")
                child = subprocess.Popen(command)
                say(f"gateway: http://{host}:{port}  (docs: /docs; Ctrl-C or `orchestrator down` stops)")
            time.sleep(0.2)
    finally:
        if child is not None and child.poll() is None:
            child.terminate()
            child.wait(timeout=30)
        say("shutting down: draining calls and checkpointing sessions...")
        summary = orch.shutdown()
        say(f"stopped {summary['actors_stopped']} actor(s), checkpointed {summary['sessions_checkpointed']} session(s)")
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    """Serve only the HTTP gateway for an orchestrator already running on a Ray cluster.

    Its settings are the ``gateway`` section of ``--config`` (defaults without
    one), then the flags; ``ORCHESTRATOR_TOKEN`` is a token too; the ``files``
    section sizes uploads. SIGHUP re-reads the tokens from ``--config``.
    """
    from orchestrator.config import load_config
    from orchestrator.dataplane.handles import connect
    from orchestrator.gateway import check_bind, serve

    def options() -> GatewayOptions:
        return gateway_options(args)

    settings = options()
    check_bind(settings.host, bool(settings.credentials()))
    orch = connect(args.address or "auto", namespace=args.namespace)

    def ready(url: str) -> None:
        say(f"gateway: {url}")

    def stop_parent() -> None:  # under `orchestrator up`: POST /v1/shutdown stops everything
        os.kill(os.getppid(), signal.SIGTERM)

    try:
        serve(
            orch,
            settings,
            on_ready=ready,
            on_shutdown=stop_parent if args.stop_parent else None,
            reload=options if args.config else None,
            uploads=load_config(args.config).files if args.config else None,
        )
    finally:
        orch.close()
    return 0


def gateway_options(args: argparse.Namespace) -> GatewayOptions:
    """The gateway section of ``--config`` (or the defaults), the flags over it, and ``ORCHESTRATOR_TOKEN``."""
    from orchestrator.config import load_config
    from orchestrator.config.schema import GatewayOptions

    options = load_config(args.config).gateway if args.config else GatewayOptions()
    overrides = {"host": args.host, "port": args.port, "max_body": args.max_body}
    options = options.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    env_token = os.environ.get("ORCHESTRATOR_TOKEN") or None
    if env_token and env_token not in options.credentials().values():
        options.tokens = {**options.tokens, "env": env_token}
    return options

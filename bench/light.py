"""Light pool throughput: generated tokens/s through the pool vs bare ``transformers`` ``generate``.

Run from the repository root (with the project's venv active; needs torch and transformers):

    python bench/light.py                 # writes bench/results/light.json
    python bench/light.py --quick         # fewer tokens and repeats (a smoke run)

Same model (a random Llama built locally: no download), same prompts, greedy
decoding, same end-of-sequence tokens, same count (a row's tokens up to and
including its EOS), same torch thread count on both sides, in one run:

- batch 1: one client, requests one after another. Bare: ``model.generate`` on
  one prompt at a time. Pool: ``orch.call("bench", "generate")`` in-process, and
  POST /v1/completions through a real gateway subprocess. Goal: >= 0.95 of bare.
- 8 clients: eight threads calling at once (in-process, and through the
  gateway), so the worker batches them into shared ``generate`` calls. Anchor:
  bare ``generate`` on padded batches of the same 8 prompts, the ceiling
  batching can reach. Goal: >= 0.9 of it. Bare ``generate`` serving the same
  requests one after another (what a server without batching does) is shown as
  a reference row.

The sides take turns (request by request at batch 1, burst by burst with 8
clients), in orders where each side follows each other side equally often, so
load drift on a shared machine, and whatever one side leaves running for the
next, hit them alike. Every path is warmed up the way it is measured (two lone
calls; then one burst of 8 clients for the concurrent paths: the first burst
after lone calls starts with one request alone, since the worker expects the
company its last batch had, a one-off cost of a change of load that a
steady-state throughput leaves out).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import ray
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as `python bench/light.py`: bench.common must import

import orchestrator  # noqa: E402
from bench.common import machine, write_report  # noqa: E402
from orchestrator.config import parse_config  # noqa: E402
from orchestrator.models.tiny import build_tiny_model  # noqa: E402

BATCH1_GOAL = 0.95
CONCURRENT_GOAL = 0.9  # of the ceiling: bare padded batches of the same prompts
CLIENTS = 8
PROMPTS = [
    "The quick brown fox",
    "Question: What is the capital of France? Answer:",
    "def add(a, b):",
    "Ray actors run Python workers",
    "Hello, world! How are",
    "Numbers: 0 1 2 3",
    "A language model predicts",
    "user assistant system",
]


class Bare:
    """transformers on its own: the anchor."""

    def __init__(self, model_dir: Path, threads: int, device: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        self.torch = torch
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).to(device).eval()
        eos = self.model.generation_config.eos_token_id
        eos_ids = [*(eos if isinstance(eos, list) else [eos]), self.tokenizer.eos_token_id]
        self.eos = {int(e) for e in eos_ids if e is not None}  # as the worker: the config's and the tokenizer's

    def generate(self, prompts: list[str], max_tokens: int) -> int:
        """Greedy-generate for a padded batch of prompts; returns the tokens generated (each row's up to its EOS)."""
        inputs = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        with self.torch.inference_mode():
            out = self.model.generate(
                **inputs, max_new_tokens=max_tokens, do_sample=False, eos_token_id=sorted(self.eos)
            )
        rows = out[:, inputs["input_ids"].shape[1] :].tolist()
        return sum(next((i + 1 for i, t in enumerate(row) if t in self.eos), len(row)) for row in rows)


def balanced_orders(n: int) -> list[list[int]]:
    """Orders of ``n`` sides in which each side comes right after each other side equally often.

    A Williams Latin square: one side can leave the machine busy for the next
    (threads winding down in the actor or the gateway), so no side may always
    follow the same one.
    """
    first, low, high = [0], 1, n - 1
    while len(first) < n:
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    orders = [[(x + shift) % n for x in first] for shift in range(n)]
    return orders if n % 2 == 0 else orders + [order[::-1] for order in orders]


def interleaved(sides: dict[str, Callable[[int], int]], n: int) -> dict[str, float]:
    """Tokens/s of each side over ``n`` turns, the sides taking turns (``fn(i)`` returns tokens made)."""
    names = list(sides)
    orders = balanced_orders(len(names))
    tokens = dict.fromkeys(sides, 0)
    seconds = dict.fromkeys(sides, 0.0)
    for i in range(n):
        for name in (names[k] for k in orders[i % len(orders)]):
            start = time.perf_counter()
            tokens[name] += sides[name](i % len(PROMPTS))
            seconds[name] += time.perf_counter() - start
    return {name: tokens[name] / seconds[name] for name in sides}


def concurrently(fn: Callable[[int], int], clients: int, rounds: int) -> int:
    """``clients`` threads, each making ``rounds`` calls of ``fn(i)``; returns the tokens they got."""
    counts = [0] * clients

    def client(c: int) -> None:
        for r in range(rounds):
            counts[c] += fn((c + r) % len(PROMPTS))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts)


def start_gateway(namespace: str) -> tuple[subprocess.Popen[bytes], str]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = ray.get_runtime_context().gcs_address
    command = [sys.executable, "-m", "orchestrator", "gateway", "--address", address, "--namespace", namespace]
    process = subprocess.Popen(
        [*command, "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the gateway did not start")


def row(name: str, bare: float, pool: float, goal: float | None, anchor: str) -> dict[str, Any]:
    """One line of the table: ``pool`` tokens/s against ``bare`` (``goal`` None: a reference line)."""
    return {
        "name": name,
        "anchor": anchor,
        "bare_tokens_s": bare,
        "pool_tokens_s": pool,
        "ratio": pool / bare,
        "goal": "-" if goal is None else f">= {goal}",
        "meets": goal is None or pool / bare >= goal,
    }


def measure(model_dir: Path, p: dict[str, int], threads: int, namespace: str, state: Path) -> list[dict[str, Any]]:
    max_tokens = p["max_tokens"]
    bare = Bare(model_dir, threads, "cpu")
    pool = {
        "worker": "workers.light:Light",
        "size": 1,
        "resources": {"num_cpus": 1},
        "limits": {"concurrency": CLIENTS * 2, "call_timeout_s": 600},
        "health": {"period_s": 5, "timeout_s": 120},
        "options": {"model": str(model_dir), "name": "bench", "threads": threads, "max_batch": CLIENTS},
    }
    config = parse_config(
        {"ray": {"namespace": namespace}, "state_dir": str(state), "pools": {"bench": pool}}, base_dir=ROOT
    )
    orch = orchestrator.start(config)
    gateway, url = start_gateway(namespace)
    http = httpx.Client(base_url=url, timeout=600, limits=httpx.Limits(max_connections=CLIENTS * 2))

    def pool_call(i: int) -> int:
        result = orch.call("bench", "generate", prompt=PROMPTS[i], max_tokens=max_tokens, temperature=0)
        return int(result["usage"]["completion_tokens"])

    def http_call(i: int) -> int:
        body = {"model": "bench/bench", "prompt": PROMPTS[i], "max_tokens": max_tokens, "temperature": 0}
        response = http.post("/v1/completions", json=body)
        response.raise_for_status()
        return int(response.json()["usage"]["completion_tokens"])

    def bare_one(i: int) -> int:
        return bare.generate([PROMPTS[i]], max_tokens)

    def burst(fn: Callable[[int], int]) -> Callable[[int], int]:
        return lambda _: concurrently(fn, CLIENTS, p["rounds"])

    try:
        for fn in (bare_one, pool_call, http_call):  # warm up every path
            fn(0)
            fn(1)
        # Interleaved in balanced orders, so load drift on a shared machine hits every side alike.
        single = interleaved({"bare1": bare_one, "pool1": pool_call, "http1": http_call}, p["batch1_requests"])
        for fn in (pool_call, http_call):  # warm up the concurrent paths (see the module docstring)
            concurrently(fn, CLIENTS, 1)
        many = interleaved(
            {
                "bareseq": lambda _: sum(bare_one(i % len(PROMPTS)) for i in range(CLIENTS * p["rounds"])),
                "pool8": burst(pool_call),
                "http8": burst(http_call),
                "bare8": lambda _: sum(bare.generate(PROMPTS, max_tokens) for _ in range(p["rounds"])),
            },
            p["bursts"],
        )
        sizes = orch.call("bench", "stats")["batch_sizes"]
    finally:
        http.close()
        gateway.terminate()
        gateway.wait(timeout=30)
        orch.shutdown(drain_s=5.0)
    best = {**single, **many}
    ceiling = f"bare padded batch of {CLIENTS}"
    rows = [
        row("batch 1, in-process", best["bare1"], best["pool1"], BATCH1_GOAL, "bare generate, batch 1"),
        row("batch 1, via gateway", best["bare1"], best["http1"], BATCH1_GOAL, "bare generate, batch 1"),
        row(f"{CLIENTS} clients, in-process", best["bare8"], best["pool8"], CONCURRENT_GOAL, ceiling),
        row(f"{CLIENTS} clients, via gateway", best["bare8"], best["http8"], CONCURRENT_GOAL, ceiling),
        row(f"bare sequential, {CLIENTS} clients' requests (reference)", best["bare8"], best["bareseq"], None, ceiling),
    ]
    for r, side in zip(rows[2:4], ("pool8", "http8"), strict=True):
        r["vs_bare_sequential"] = best[side] / best["bareseq"]
    rows[0]["batch_sizes_seen"] = sorted(set(sizes))
    return rows


def show(rows: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="light pool: generated tokens/s vs bare transformers (CPU)")
    for column in ("measure", "anchor", "anchor tok/s", "pool tok/s", "ratio", "goal", "verdict"):
        table.add_column(column, justify="right" if "tok" in column or column == "ratio" else "left")
    for r in rows:
        verdict = "-" if r["goal"] == "-" else ("[green]meets goal[/]" if r["meets"] else "[red]misses goal[/]")
        table.add_row(
            r["name"],
            r["anchor"],
            f"{r['bare_tokens_s']:,.1f}",
            f"{r['pool_tokens_s']:,.1f}",
            f"{r['ratio']:.2f}",
            r["goal"],
            verdict,
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer tokens and repeats (a smoke run)")
    parser.add_argument("--model", type=Path, default=None, help="a local model folder (default: a random bench model)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "light.json")
    args = parser.parse_args()
    p = {"max_tokens": 32, "batch1_requests": 6, "bursts": 2, "rounds": 1}
    if not args.quick:
        p = {"max_tokens": 64, "batch1_requests": 24, "bursts": 4, "rounds": 2}
    console = Console(width=None if sys.stdout.isatty() else 140)
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="light-bench-") as tmp:
        model_dir = args.model or build_tiny_model(Path(tmp) / "model", hidden_size=256, layers=4, context=1024)
        ray.init(num_cpus=4, include_dashboard=False, namespace=namespace, log_to_driver=False)
        try:
            rows = measure(model_dir, p, args.threads, namespace, Path(tmp) / "state")
        finally:
            ray.shutdown()
    show(rows, console)
    report = {
        "benchmark": "light",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "machine": machine(load_avg_1m=os.getloadavg()[0]),
        "model": str(args.model or "random Llama, hidden 256, 4 layers (build_tiny_model)"),
        "params": {**p, "threads": args.threads, "clients": CLIENTS, "prompts": len(PROMPTS)},
        "goals": {"batch1_ratio_min": BATCH1_GOAL, "concurrent_ratio_of_ceiling_min": CONCURRENT_GOAL},
        "results": rows,
        "all_goals_met": all(r["meets"] for r in rows),
    }
    write_report(args.out, report)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

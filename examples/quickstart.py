"""The in-process API against the default pools.yaml: a call, a session and a stream.

python examples/quickstart.py
"""

from __future__ import annotations

import orchestrator


def main() -> None:
    orch = orchestrator.start("pools.yaml")
    try:
        print("pools:", orch.pools())
        print("call  :", orch.call("demo", "greet", name="world"))

        with orch.session("demo") as session:  # pinned to one actor, state kept between calls
            counts = [session.call("incr", by=2) for _ in range(3)]
            print("session counter:", counts)

        stream = orch.stream("demo", "ticker", n=5, interval=0.1)
        for event in stream:
            print("event :", event)
        print("result:", stream.result)

        try:
            orch.call("demo", "add", a="not a number")
        except orchestrator.InvalidArguments as exc:
            print("error :", exc.code, exc.detail)
    finally:
        print("shutdown:", orch.shutdown())


if __name__ == "__main__":
    main()

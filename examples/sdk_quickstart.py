"""The Python SDK against a running gateway: a call, a session and a stream.

orchestrator up                    # in one terminal
python examples/sdk_quickstart.py  # in another ($ORCHESTRATOR_URL, $ORCHESTRATOR_TOKEN if set)
"""

from __future__ import annotations

import asyncio

from orchestrator import AsyncClient, Client, InvalidArguments


def main() -> None:
    with Client.from_env() as client:
        print("pools :", [p["name"] for p in client.pools()])
        print("call  :", client.call("demo", "greet", name="world"))

        with client.session("demo") as session:  # pinned to one actor; closed on exit
            print("session counter:", [session.call("incr", by=2) for _ in range(3)])

        with client.stream("demo", "ticker", n=5, interval=0.1) as stream:
            for event in stream:
                print("event :", event)
        print("result:", stream.result)

        try:
            client.call("demo", "add", a="not a number")
        except InvalidArguments as exc:
            print("error :", exc.code, exc.detail)

    async def concurrently() -> list[int]:
        async with AsyncClient.from_env() as client:
            return list(await asyncio.gather(*(client.call("demo", "add", a=i, b=i) for i in range(5))))

    print("async :", asyncio.run(concurrently()))


if __name__ == "__main__":
    main()

"""The gateway's request metrics (``orchestrator.metrics``): requests by route and status, latency, open streams.

The outermost middleware, so refusals by the guards are counted too. Routes
are labelled by their template (``/v1/pools/{pool}/ops/{op}``), never by the
raw path, so a client cannot grow the label set; a request no route matched
is ``(none)``. Latency runs to the response's first byte, so a stream counts
its set-up, not how long the client listened.
"""

from __future__ import annotations

import time
from collections import Counter

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator import metrics

SSE = b"text/event-stream"


class Metered:
    """ASGI middleware recording ``http_requests``, ``http_seconds`` and ``sse_open``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.open_streams: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status, streaming = 500, False

        async def metered_send(message: Message) -> None:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = message["status"]
                metrics.http_seconds().observe(time.perf_counter() - started, tags={"route": _route(scope)})
                headers = dict(message.get("headers", []))
                if headers.get(b"content-type", b"").startswith(SSE):
                    streaming = True
                    self._streams(scope, +1)
            await send(message)

        try:
            await self.app(scope, receive, metered_send)
        finally:
            if streaming:
                self._streams(scope, -1)
            tags = {"route": _route(scope), "method": scope["method"], "status": str(status)}
            metrics.http_requests().inc(tags=tags)

    def _streams(self, scope: Scope, change: int) -> None:
        route = _route(scope)
        self.open_streams[route] += change
        metrics.sse_open().set(self.open_streams[route], tags={"route": route})


def _route(scope: Scope) -> str:
    route = scope.get("route")
    return str(getattr(route, "path", "(none)"))

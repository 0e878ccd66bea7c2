"""The gateway's guard: bearer token, body size, and the refusal to bind beyond loopback without a token.

It runs in front of the app (ASGI middleware), so nothing else runs for a
request it refuses; its errors are the DESIGN body with their status.
"""

from __future__ import annotations

import hmac
import ipaddress

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.errors import InvalidConfig, OrchestratorError, Overloaded, PayloadTooLarge, Unauthorized

OPEN_PATHS = {"/healthz"}


def error_response(exc: OrchestratorError) -> JSONResponse:
    """An OrchestratorError as its HTTP status and DESIGN body (429 carries Retry-After)."""
    headers = {"Retry-After": "1"} if isinstance(exc, Overloaded) else None
    return JSONResponse({"error": exc.to_dict()}, status_code=exc.http_status, headers=headers)


class Guard:
    """ASGI middleware: bearer token (constant-time) on every path but /healthz, then the body limit.

    The limit is enforced on Content-Length before the app runs, and on the
    bytes actually received for chunked bodies, so a large body is never read whole.
    """

    def __init__(self, app: ASGIApp, token: str | None, max_body: int) -> None:
        self.app, self.token, self.max_body = app, token, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authorization, length = b"", None
        for name, value in scope["headers"]:  # only the two headers we need; no dict of them all
            lowered = name.lower()
            if lowered == b"authorization":
                authorization = value
            elif lowered == b"content-length":
                length = value
        if not self._authorized(scope["path"], authorization):
            message = "missing or wrong bearer token" if authorization else "missing Authorization: Bearer header"
            await error_response(Unauthorized(message))(scope, receive, send)
            return
        if length is not None and length.isdigit():
            if int(length) > self.max_body:
                await self._too_large(scope, receive, send)
            else:  # the server never delivers more than Content-Length: nothing to count
                await self.app(scope, receive, send)
            return
        await self._counted(scope, receive, send)

    def _authorized(self, path: str, authorization: bytes) -> bool:
        if self.token is None or path in OPEN_PATHS:
            return True
        return hmac.compare_digest(authorization, f"Bearer {self.token}".encode())

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A body without Content-Length (chunked): count the bytes as they arrive."""
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = PayloadTooLarge(f"request body over the limit of {self.max_body} bytes")
        await error_response(error)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token."""
    if token:
        return
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise InvalidConfig(
            f"refusing to bind the gateway to {host} without a token: set ORCHESTRATOR_TOKEN "
            "(or gateway.token in pools.yaml), or bind 127.0.0.1"
        )

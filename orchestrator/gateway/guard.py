"""The gateway's guards: what every request must pass before a route runs.

Two ASGI middlewares, outermost first (CORS sits between them, so a browser's
preflight from an allowed origin is answered without a token):

- ``Origins``: the ``Host`` header must name a host this gateway serves
  (loopback, the bound address, ``gateway.allowed_hosts``; else 421, which stops
  DNS rebinding), and a request carrying a cross-origin ``Origin`` is refused
  (403) unless the origin is in ``gateway.cors_origins``. Admin routes are
  same-origin only.
- ``Guard``: a bearer token (any of the named ones, compared in constant time)
  on every path but /healthz; bodies must be JSON (415 otherwise: a web page can
  send text/plain or a form cross-site without asking); admin routes take JSON
  only, so a browser cannot reach them without a preflight; the body is read
  against ``max_body`` (413) and its nesting against ``max_json_depth`` (422).
  One exception: ``POST /v1/files`` (OpenAI's upload) takes multipart/form-data
  too, up to ``max_file`` (``files.max_bytes``) plus the form's envelope, and
  still only with the token; a body of known length streams on to the route.

Refusals are the DESIGN error body with their status, and nothing behind a
guard runs for a refused request.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import re
import socket
from collections.abc import Iterable

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.errors import (
    Forbidden,
    InvalidArguments,
    InvalidConfig,
    MisdirectedRequest,
    OrchestratorError,
    Overloaded,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)

OPEN_PATHS = {"/healthz"}
UPLOAD_PATHS = {"/v1/files"}  # the only routes that take multipart/form-data (POST)
UPLOAD_ENVELOPE = 64 * 1024  # what a multipart body may add to the file: boundaries, part headers, `purpose`
ADMIN_PATH = re.compile(r"^/v1/(shutdown|pools/[^/]+/restart)/?$")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
OPENAI_PATHS = ("/v1/chat/", "/v1/completions", "/v1/embeddings", "/v1/models", "/v1/files", "/v1/fine_tuning")
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


def error_response(exc: OrchestratorError, path: str = "") -> JSONResponse:
    """An OrchestratorError as its HTTP status and DESIGN body, or OpenAI's on OpenAI's routes (429: Retry-After)."""
    if path.startswith(OPENAI_PATHS):
        first = exc.detail[0] if isinstance(exc.detail, list) and exc.detail else {}
        param = first.get("field") if isinstance(first, dict) else None
        return openai_error(exc.http_status, exc.message, str(param) if param else None, exc.code)
    headers = {"Retry-After": "1"} if isinstance(exc, Overloaded) else None
    return JSONResponse({"error": exc.to_dict()}, status_code=exc.http_status, headers=headers)


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    """OpenAI's error body."""
    kind = {401: "authentication_error", 429: "rate_limit_error"}.get(status)
    kind = kind or ("invalid_request_error" if status < 500 else "server_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    headers = {"Retry-After": "1"} if status == 429 else None
    return JSONResponse(body, status_code=status, headers=headers)


def _headers(scope: Scope, *wanted: bytes) -> dict[bytes, bytes]:
    """Only the named headers (lower-case names), without building a dict of them all."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        lowered = name.lower()
        if lowered in wanted:
            found[lowered] = value
    return found


# ------------------------------------------------------------------ Origins
def host_name(header: str) -> str:
    """The host part of a Host header or an origin's netloc: ``[::1]:8000`` -> ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def served_hosts(bind: str, extra: Iterable[str]) -> list[str]:
    """Host names this gateway answers for: loopback, the bound address (the machine's names on 0.0.0.0), extra."""
    names = {*LOOPBACK_NAMES, *(h.lower() for h in extra)}
    if bind in ("0.0.0.0", "::", ""):
        hostname = socket.gethostname()
        names |= {hostname.lower(), socket.getfqdn().lower()}
        with contextlib.suppress(OSError):
            names |= {str(info[4][0]).lower() for info in socket.getaddrinfo(hostname, None)}
    else:
        names.add(host_name(bind))
    return sorted(names)


def host_allowed(host: str, served: list[str]) -> bool:
    for pattern in served:
        if pattern == "*" or host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


class Origins:
    """ASGI middleware: the Host allowlist and the Origin check (see the module docstring)."""

    def __init__(self, app: ASGIApp, served: list[str], cors_origins: list[str]) -> None:
        self.app, self.served = app, served
        self.cors_origins = {o.rstrip("/").lower() for o in cors_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        found = _headers(scope, b"host", b"origin")
        host_header = found.get(b"host", b"").decode("latin-1")
        if host_header and not host_allowed(host_name(host_header), self.served):
            message = (
                f"Host {host_header!r} is not served here; add it to gateway.allowed_hosts "
                f"(served: {', '.join(self.served)})"
            )
            await error_response(MisdirectedRequest(message), scope["path"])(scope, receive, send)
            return
        origin = found.get(b"origin")
        if origin is not None:
            refusal = self._refusal(origin.decode("latin-1").rstrip("/").lower(), host_header, scope["path"])
            if refusal is not None:
                await error_response(Forbidden(refusal), scope["path"])(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, origin: str, host_header: str, path: str) -> str | None:
        same = "://" in origin and origin.split("://", 1)[1] == host_header.lower()
        if same:
            return None
        if ADMIN_PATH.match(path):
            return f"admin routes are same-origin only; Origin {origin!r} is not this gateway"
        if origin in self.cors_origins or "*" in self.cors_origins:
            return None
        return f"requests from the web origin {origin!r} are refused; add it to gateway.cors_origins to allow it"


# -------------------------------------------------------------------- Guard
class Tokens:
    """The named bearer tokens; ``replace`` swaps them at once (SIGHUP)."""

    def __init__(self, named: dict[str, str]) -> None:
        self.replace(named)

    def replace(self, named: dict[str, str]) -> None:
        self.expected = [(name, f"Bearer {token}".encode()) for name, token in named.items()]

    def __bool__(self) -> bool:
        return bool(self.expected)

    def match(self, authorization: bytes) -> str | None:
        """The name of the token presented, or None; every token is compared, in constant time."""
        found = None
        for name, expected in self.expected:
            if hmac.compare_digest(authorization, expected) and found is None:
                found = name
        return found


def is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


def is_multipart(content_type: bytes) -> bool:
    """Whether the body is a form with files (what OpenAI's clients send to upload)."""
    return content_type.split(b";", 1)[0].strip().lower() == b"multipart/form-data"


def json_too_deep(raw: bytes, limit: int) -> bool:
    """Whether the JSON text nests deeper than ``limit`` (brackets inside strings do not count)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False  # the common case, without looking further
    import numpy as np  # Ray's own dependency; only bodies with many brackets get here

    codes = np.frombuffer(_JSON_STRING.sub(b'""', raw), dtype=np.uint8)
    opens = (codes == ord("[")) | (codes == ord("{"))
    closes = (codes == ord("]")) | (codes == ord("}"))
    return bool(np.cumsum(opens.astype(np.int32) - closes).max() > limit)


class Guard:
    """ASGI middleware: token, JSON-only bodies, body size and depth (see the module docstring)."""

    def __init__(
        self, app: ASGIApp, tokens: Tokens, max_body: int, max_json_depth: int = 64, max_file: int = 0
    ) -> None:
        self.app, self.tokens, self.max_body, self.max_json_depth = app, tokens, max_body, max_json_depth
        self.max_file = max_file  # 0: no uploads (every body must be JSON)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal, replay = await self._check(scope, receive)
        if refusal is not None:
            await error_response(refusal, scope["path"])(scope, receive, send)
            return
        await self.app(scope, replay or receive, send)

    async def _check(self, scope: Scope, receive: Receive) -> tuple[OrchestratorError | None, Receive | None]:
        path, method = scope["path"], scope["method"]
        found = _headers(scope, b"authorization", b"content-length", b"content-type", b"transfer-encoding")
        if self.tokens and path not in OPEN_PATHS and self.tokens.match(found.get(b"authorization", b"")) is None:
            given = b"authorization" in found
            return Unauthorized("wrong bearer token" if given else "missing Authorization: Bearer header"), None
        if method not in BODY_METHODS:
            return None, None
        length = found.get(b"content-length")
        has_body = b"transfer-encoding" in found or (length is not None and length.strip() not in (b"", b"0"))
        content_type = found.get(b"content-type", b"")
        upload = self.max_file > 0 and method == "POST" and path in UPLOAD_PATHS and is_multipart(content_type)
        if (has_body or content_type or ADMIN_PATH.match(path)) and not (is_json(content_type) or upload):
            sent = content_type.decode("latin-1") or "none"
            what = "admin routes take" if ADMIN_PATH.match(path) else "request bodies must be"
            return UnsupportedMediaType(f"{what} Content-Type: application/json (got {sent})"), None
        if not has_body:
            return None, None
        limit = self.max_file + UPLOAD_ENVELOPE if upload else self.max_body
        if length is not None and length.isdigit() and int(length) > limit:
            return self._too_large(upload), None
        if upload and length is not None and length.isdigit():
            return None, None  # the server delivers no more than Content-Length: the form parser spools it to disk
        body = await self._read(receive, limit)
        if body is None:
            return self._too_large(upload), None
        if not upload and json_too_deep(body, self.max_json_depth):
            message = f"JSON nested deeper than {self.max_json_depth} levels (gateway.max_json_depth)"
            return InvalidArguments(f"body: {message}", detail=[{"field": "body", "message": message}]), None
        return None, _replay(body, receive)

    async def _read(self, receive: Receive, limit: int) -> bytes | None:
        """The whole body, or None past ``limit`` (read no further)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away; the route sees an empty body and the server drops the reply
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _too_large(self, upload: bool = False) -> PayloadTooLarge:
        if upload:
            message = f"upload over the limit of {self.max_file} bytes (files.max_bytes; the form may add "
            message += f"{UPLOAD_ENVELOPE} more)"
            return PayloadTooLarge(message, detail=[{"field": "file", "message": message}])
        return PayloadTooLarge(f"request body over the limit of {self.max_body} bytes (gateway.max_body)")


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the body already read, then the real channel (disconnects reach streams)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def check_bind(host: str, secured: bool) -> None:
    """Refuse to listen beyond loopback without a token."""
    if secured:
        return
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise InvalidConfig(
            f"refusing to bind the gateway to {host} without a token: set ORCHESTRATOR_TOKEN "
            "(or gateway.token / gateway.tokens in pools.yaml), or bind 127.0.0.1"
        )

"""The gateway's JSON writer, for responses and Server-Sent Events: numpy arrays in an op's result or
events become JSON lists here, at the HTTP boundary.

Ops may return numpy arrays (the retrieval pool's embeddings): in-process
callers get them through Ray's object store without copies, and only the
gateway turns them into text. orjson writes arrays natively (float32 at its
shortest exact form) and is ~20x faster than ``json`` on float lists; a value
orjson refuses (an int past 64 bits) falls back to ``json``.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.responses import Response

OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _arrays(value: Any) -> Any:
    """Array-likes orjson cannot write directly (non-contiguous, other dtypes) as lists; anything else is refused."""
    if hasattr(value, "tolist") and hasattr(value, "shape"):
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _arrays_or_str(value: Any) -> Any:
    try:
        return _arrays(value)
    except TypeError:
        return str(value)


def dumps(value: Any, lenient: bool = False) -> bytes:
    """``value`` as compact JSON; TypeError when some part of it has no JSON form (``lenient``: its str)."""
    default = _arrays_or_str if lenient else _arrays
    try:
        return orjson.dumps(value, default=default, option=OPTIONS)
    except orjson.JSONEncodeError as exc:
        if isinstance(exc.__cause__, TypeError) and "not JSON serializable" in str(exc.__cause__):
            raise TypeError(str(exc.__cause__)) from None
        return json.dumps(value, default=default, separators=(",", ":")).encode()


# Characters orjson leaves raw that end a line for str.splitlines (so for httpx's iter_lines, which the SDK
# reads SSE with): escaped, they stay inside the JSON string they belong to.
LINE_ENDS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def sse_message(event_id: int, event: str, data: Any) -> str:
    """One Server-Sent Events message: an id, an event type and one line of JSON data (a part without a JSON
    form is written as its str: a stream already under way cannot turn into an error status)."""
    line = dumps(data, lenient=True).decode().translate(LINE_ENDS)
    return f"id: {event_id}\nevent: {event}\ndata: {line}\n\n"


class JSONBody(Response):
    """A JSON response written by :func:`dumps`."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)

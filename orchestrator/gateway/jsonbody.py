"""The gateway's JSON writer: numpy arrays in an op's result become JSON lists here, at the HTTP boundary.

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


def dumps(value: Any) -> bytes:
    """``value`` as compact JSON; TypeError when some part of it has no JSON form."""
    try:
        return orjson.dumps(value, default=_arrays, option=OPTIONS)
    except orjson.JSONEncodeError as exc:
        if isinstance(exc.__cause__, TypeError) and "not JSON serializable" in str(exc.__cause__):
            raise TypeError(str(exc.__cause__)) from None
        return json.dumps(value, default=_arrays, separators=(",", ":")).encode()


class JSONBody(Response):
    """A JSON response written by :func:`dumps`."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)

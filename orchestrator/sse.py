"""Server-Sent Events, both ends: how the gateway writes a message and how the SDK reads one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


def sse_message(event_id: int, event: str, data: Any) -> str:
    """One message as the gateway writes it: an id, an event type and one line of JSON data."""
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'), default=_plain)}\n\n"


def _plain(value: Any) -> Any:
    """Arrays (numpy, in an op's events or result) as lists; anything else without a JSON form as its str."""
    return value.tolist() if hasattr(value, "tolist") and hasattr(value, "shape") else str(value)


@dataclass(frozen=True)
class ServerSentEvent:
    """One Server-Sent Events message: its type (``message`` when unnamed), data and the last event id."""

    event: str
    data: str
    id: str | None = None


class SSEDecoder:
    """Server-Sent Events parsing per the WHATWG spec, one line (without its line ending) at a time."""

    def __init__(self) -> None:
        self.event = ""
        self.data: list[str] = []
        self.last_id: str | None = None  # kept across messages, as the spec says (for Last-Event-ID)

    def decode(self, line: str) -> ServerSentEvent | None:
        """Feed one line; returns the message a blank line completes, else None."""
        if not line:
            if not self.data:  # nothing to dispatch: drop a dangling event name
                self.event = ""
                return None
            message = ServerSentEvent(self.event or "message", "\n".join(self.data), self.last_id)
            self.event, self.data = "", []
            return message
        if line.startswith(":"):  # a comment or keep-alive
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self.data.append(value)
        elif name == "event":
            self.event = value
        elif name == "id" and "\0" not in value:
            self.last_id = value
        return None  # "retry" and unknown fields are ignored

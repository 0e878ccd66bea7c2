"""Server-Sent Events as the SDK reads them (the gateway writes them: ``orchestrator.gateway.jsonbody``)."""

from __future__ import annotations

from dataclasses import dataclass


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

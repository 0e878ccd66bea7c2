"""Reading Server-Sent Events, without I/O: a streaming op's events and a job's event log, as steps.

``EventStream`` decodes one streaming op (``event``... then ``result`` or
``error``); ``Stream`` and ``AsyncStream`` only iterate it. ``job_events`` reads
a job's log and, when the connection drops, reconnects with ``Last-Event-ID``
(the last seq it yielded), waiting ``backoff_delay`` between tries and giving
up after ``RECONNECT_S`` without any event.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from orchestrator.client.core import (
    EVENT_STREAM,
    BaseClient,
    backoff_delay,
    decode_error,
    is_event_stream,
    response_field,
)
from orchestrator.client.steps import Close, Drive, Emit, Feed, Handle, Lines, Steps
from orchestrator.errors import OrchestratorError
from orchestrator.sse import SSEDecoder

RECONNECT_S = 60.0  # how long a job's event stream keeps reconnecting without getting anything
NO_EVENT: Any = object()


class EventStream(Handle):
    """The events of one streaming op, decoded from Server-Sent Events.

    After the last event, ``result`` holds the op's return value; an ``error``
    event raises its OrchestratorError after the events before it. ``events``
    counts the events so far; ``done`` is set once nothing more will come.
    """

    def __init__(self, client: Any, response: httpx.Response, pool: str, op: str) -> None:
        self.client, self.response, self.pool, self.op = client, response, pool, op
        self.result: Any = None
        self.done = False
        self.events = 0
        self.decoder = SSEDecoder()
        if not is_event_stream(response):  # a plain JSON answer (already read): a result, no events
            self.done = True
            self.result = response_field(response, "result")
        self._events: Any = client._iterate(Drive(self._decode(), holding=[response]))

    def _decode(self) -> Feed[Any]:
        """Read lines until the result (or error): emit each event; the response is closed at the end."""
        lines = Lines(self.response)
        while not self.done:
            try:
                line = yield lines
            except httpx.RequestError as exc:
                self.done = True
                message = f"lost the gateway's stream after {self.events} events: {type(exc).__name__}: {exc}"
                raise OrchestratorError(message, pool=self.pool, op=self.op) from exc
            event = self._on_line(line)
            if event is not NO_EVENT:
                yield Emit(event)
        yield Close(self.response)

    def _on_line(self, line: str | None) -> Any:
        """The event this line completes, else NO_EVENT; sets ``result`` or raises at the stream's end."""
        if line is None:
            self.done = True
            raise OrchestratorError("the gateway closed the stream before its result", pool=self.pool, op=self.op)
        message = self.decoder.decode(line)
        if message is None or message.event not in ("event", "result", "error"):
            return NO_EVENT  # unknown event types are skipped, so the gateway can add some
        try:
            data = json.loads(message.data)
        except ValueError:
            data = NO_EVENT
        if message.event == "event" and data is not NO_EVENT:
            self.events += 1
            return data
        self.done = True
        if not isinstance(data, dict) or not isinstance(data.get("error", {}), dict) or message.event not in data:
            raise OrchestratorError(f"the gateway sent a malformed {message.event!r} event: {message.data[:200]}")
        if message.event == "error":
            raise OrchestratorError.from_dict(data["error"])
        self.result = data["result"]
        return NO_EVENT

    def _closing(self) -> Steps[None]:
        """Stop reading; the gateway sees the disconnect."""
        self.done = True
        yield Close(self.response)


def parse_job_event(decoder: SSEDecoder, line: str) -> tuple[str, int, Any] | None:
    """``("event", seq, data)``, ``("end", seq, status)`` or None for a line that completes nothing."""
    message = decoder.decode(line)
    if message is None or message.event not in ("event", "end"):
        return None
    data = json.loads(message.data)
    seq = int(message.id or 0)
    return ("end", seq, data.get("status")) if message.event == "end" else ("event", seq, data)


def job_events(client: BaseClient[Any, Any, Any, Any], job_id: str, after: int, follow: bool) -> Feed[tuple[int, Any]]:
    """Emit ``(seq, event)`` from a job's log after seq ``after``, until its end (with ``follow``, as it grows).

    A dropped connection is opened again from the last seq emitted, after ``backoff_delay``;
    ``RECONNECT_S`` without an event and the transport still failing is an OrchestratorError.
    """
    patience = time.monotonic() + RECONNECT_S
    attempt = 0
    while True:
        decoder = SSEDecoder()
        params = {"follow": "true" if follow else "false"}
        request = client.build_request("GET", "v1", "jobs", job_id, "events", params=params, accept=EVENT_STREAM)
        request.headers["Last-Event-ID"] = str(after)
        response: httpx.Response | None = None
        try:
            response = yield request
            if not response.is_success:
                raise decode_error(response.status_code, response.content)
            lines = Lines(response)
            while (line := (yield lines)) is not None:
                parsed = parse_job_event(decoder, line)
                if parsed is None:
                    continue
                kind, seq, data = parsed
                if kind == "end":
                    yield Close(response)
                    return
                after, attempt, patience = seq, 0, time.monotonic() + RECONNECT_S
                yield Emit((seq, data))
        except httpx.TransportError:
            if response is not None:
                yield Close(response)
            if time.monotonic() > patience:
                raise OrchestratorError(f"lost the event stream of job {job_id} and could not reconnect") from None
        yield backoff_delay(attempt)
        attempt += 1

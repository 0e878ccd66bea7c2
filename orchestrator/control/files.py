"""Uploaded files (OpenAI's Files API), kept by the coordinator in the store.

An upload is checked before anything is stored, and a refused one stores
nothing: ``purpose`` must be one of OpenAI's, the size at most
``files.max_bytes`` (413), and a ``fine-tune`` file must be UTF-8 JSONL whose
every non-empty line is one training example, either chat
(``{"messages": [{"role", "content"}, ...]}``) or ``{"prompt", "completion"}``.
The first bad line is named in the message and the field (``file.line 3``),
as OpenAI's own validation does, so a fine-tuning job never starts on a file
it would fail on hours later.

Records are OpenAI's file object (``{"id": "file-…", "object": "file", ...}``).
Every method does blocking I/O (SQLite, the file's bytes, parsing a large
file): the coordinator runs them on a worker thread.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from orchestrator.config.schema import FileOptions
from orchestrator.control.store import Store
from orchestrator.errors import FileNotFound, InvalidArguments, OrchestratorError, PayloadTooLarge
from orchestrator.types import Failure

PURPOSES = ("assistants", "batch", "evals", "fine-tune", "user_data", "vision")
ROLES = ("system", "user", "assistant", "tool")
MAX_FILENAME = 255


class FileTable:
    """Uploads, listing, reading and deleting files; answers are file objects or Failures."""

    def __init__(self, store: Store, options: FileOptions) -> None:
        self.store = store
        self.options = options

    def put(self, filename: str, purpose: str, data: bytes) -> Any:
        """Check and store an upload; its file object, or a Failure naming what is wrong."""
        problem = check_upload(filename, purpose, data, self.options.max_bytes)
        if problem is not None:
            return Failure(problem.to_dict())
        file_id = f"file-{secrets.token_hex(12)}"
        record = {"id": file_id, "filename": filename, "purpose": purpose, "created": time.time()}
        self.store.put_file(record, data)
        return file_object({**record, "bytes": len(data)})

    def list(self, purpose: str | None = None, limit: int = -1, after: str | None = None) -> Any:
        """File objects, newest first (of one purpose when given): at most ``limit`` (-1: all), after file
        ``after`` (the last id of the previous page)."""
        if purpose is not None and purpose not in PURPOSES:
            return Failure(_invalid("purpose", f"must be one of {', '.join(PURPOSES)}, got {purpose!r}").to_dict())
        try:
            return [file_object(row) for row in self.store.list_files(purpose, limit, after)]
        except KeyError:
            return Failure(_invalid("after", f"no file {after} to list after (an id from the previous page)").to_dict())

    def get(self, file_id: str) -> Any:
        """One file object, or file_not_found."""
        row = self.store.get_file(file_id)
        return file_object(row) if row else _missing(file_id)

    def content(self, file_id: str) -> Any:
        """A file's bytes, or file_not_found."""
        data = self.store.read_file(file_id)
        return data if data is not None else _missing(file_id)

    def delete(self, file_id: str) -> Any:
        """Forget a file; OpenAI's deletion answer, or file_not_found."""
        if not self.store.delete_file(file_id):
            return _missing(file_id)
        return {"id": file_id, "object": "file", "deleted": True}


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row as OpenAI's file object."""
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": int(row["created"]),
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
    }


def check_upload(filename: str, purpose: str, data: bytes, max_bytes: int) -> OrchestratorError | None:
    """What is wrong with an upload (the first problem), or None."""
    if purpose not in PURPOSES:
        return _invalid("purpose", f"must be one of {', '.join(PURPOSES)}, got {purpose!r}")
    if not filename or len(filename) > MAX_FILENAME:
        return _invalid("file", f"the file needs a name of 1 to {MAX_FILENAME} characters")
    if len(data) > max_bytes:
        message = f"{len(data)} bytes is over the limit of {max_bytes} bytes (files.max_bytes)"
        return PayloadTooLarge(f"file: {message}", detail=[{"field": "file", "message": message}])
    if not data:
        return _invalid("file", "is empty")
    if purpose == "fine-tune":
        found = check_training_jsonl(data)
        if found is not None:
            line, message = found
            return _invalid(f"file.line {line}" if line else "file", message)
    return None


def check_training_jsonl(data: bytes) -> tuple[int, str] | None:
    """The first problem of a fine-tuning file as ``(line number, message)`` (line 0: the whole file), or None."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return data.count(b"\n", 0, exc.start) + 1, f"not valid UTF-8 (byte {exc.start})"
    examples = 0
    for number, line in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            return number, f"not valid JSON ({exc.msg} at column {exc.colno})"
        problem = _example_problem(row)
        if problem is not None:
            return number, problem
        examples += 1
    return None if examples else (0, "no training examples: every line is empty")


def _example_problem(row: Any) -> str | None:
    """What keeps one decoded line from being a training example, or None."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {_kind(row)}"
    if "messages" in row:
        return _chat_problem(row["messages"])
    if "prompt" in row or "completion" in row:
        if not (isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str)):
            return "prompt and completion must both be strings"
        return None
    return 'expected "messages" (a chat example) or "prompt" and "completion" (strings)'


def _chat_problem(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list of {role, content} objects"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{i}] must be an object with role and content, got {_kind(message)}"
        role = message.get("role")
        if role not in ROLES:
            return f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}"
        content = message.get("content")
        calls_tools = role == "assistant" and bool(message.get("tool_calls") or message.get("function_call"))
        if not (isinstance(content, str) or (isinstance(content, list) and content) or calls_tools):
            return f"messages[{i}].content must be a string (or a list of content parts), got {_kind(content)}"
    if not any(message["role"] == "assistant" for message in messages):
        return "messages has no assistant message to learn from"
    return None


def _kind(value: Any) -> str:
    """A JSON value's type in JSON's words."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _invalid(field: str, message: str) -> InvalidArguments:
    return InvalidArguments(f"{field}: {message}", detail=[{"field": field, "message": message}])


def _missing(file_id: str) -> Failure:
    return Failure(FileNotFound(f"no file {file_id!r}").to_dict())

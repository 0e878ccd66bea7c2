"""OpenAI-compatible ``/v1/files``: upload, list, read, download and delete files.

The files live with the coordinator (its store in ``state_dir`` on the head
node), which checks each upload before storing it: see
``orchestrator.control.files``. An upload is ``multipart/form-data`` with
``file`` and ``purpose``, as the official clients send it; this is the one
route the guard lets a form through (``guard.UPLOAD_PATHS``), still with the
token, up to ``files.max_bytes`` plus the form's envelope.

Errors are OpenAI's body ``{"error": {"message", "type", "param", "code"}}``:
an unknown id is 404 ``file_not_found``, a bad ``purpose`` or training line
422 naming it (``param``: ``purpose``, ``file.line 3``), a file over the limit 413.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from orchestrator.dataplane.handles import Orchestrator
from orchestrator.dataplane.router import unwrap
from orchestrator.errors import InvalidArguments, OrchestratorError
from orchestrator.gateway.guard import error_response, openai_error

FILES = "/v1/files"
PURPOSE_TEXT = "One of fine-tune, batch, assistants, user_data, evals, vision."
UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "The file's bytes and name."},
                        "purpose": {"type": "string", "description": PURPOSE_TEXT},
                    },
                }
            }
        },
    }
}


def failed(exc: OrchestratorError) -> JSONResponse:
    """An error in OpenAI's body; ``param`` is the field the error names."""
    return error_response(exc, FILES)


def router(orch: Orchestrator) -> APIRouter:
    """The file routes over ``orch``'s coordinator."""
    api = APIRouter(tags=["openai"])

    @api.post(FILES, openapi_extra=UPLOAD_BODY)
    async def create_file(request: Request) -> Response:
        """Upload a file (``file`` and ``purpose`` as multipart/form-data); its file object."""
        try:
            form = await request.form(max_files=1, max_fields=8)
        except HTTPException as exc:  # the form itself is broken: no boundary, cut short, two files...
            message = f"file: not a valid multipart/form-data body ({exc.detail})"
            return openai_error(400, message, "file", "invalid_multipart")
        try:
            upload, purpose = form.get("file"), form.get("purpose")
            if not isinstance(upload, UploadFile):
                return failed(_missing("file", "a file part named `file` is required (multipart/form-data)"))
            if not isinstance(purpose, str) or not purpose:
                return failed(_missing("purpose", f"is required: {PURPOSE_TEXT}"))
            data = await upload.read()
        finally:
            await form.close()
        try:
            record = unwrap(await orch.coordinator.put_file.remote(upload.filename or "", purpose, data))
        except OrchestratorError as exc:
            return failed(exc)
        return JSONResponse(record)

    @api.get(FILES)
    async def list_files(
        purpose: str | None = Query(None, description="Only files of this purpose."),
        limit: int = Query(10_000, ge=1, le=10_000, description="Files per page (OpenAI's default: 10,000)."),
        after: str | None = Query(None, description="The last file id of the previous page."),
    ) -> Response:
        """Uploaded files, newest first, a page at a time (OpenAI's ``after``, ``limit``, ``has_more``)."""
        try:
            found = unwrap(await orch.coordinator.list_files.remote(purpose, limit + 1, after))
        except OrchestratorError as exc:
            return failed(exc)
        data = found[:limit]
        ids = [record["id"] for record in data]
        page = {"object": "list", "data": data, "has_more": len(found) > limit}
        return JSONResponse({**page, "first_id": ids[0] if ids else None, "last_id": ids[-1] if ids else None})

    @api.get(FILES + "/{file_id}")
    async def retrieve_file(file_id: str) -> Response:
        """One file's object."""
        try:
            return JSONResponse(unwrap(await orch.coordinator.get_file.remote(file_id)))
        except OrchestratorError as exc:
            return failed(exc)

    @api.get(FILES + "/{file_id}/content")
    async def file_content(file_id: str) -> Response:
        """The file's bytes, as uploaded."""
        try:
            data = unwrap(await orch.coordinator.file_content.remote(file_id))
        except OrchestratorError as exc:
            return failed(exc)
        return Response(content=data, media_type="application/octet-stream")

    @api.delete(FILES + "/{file_id}")
    async def delete_file(file_id: str) -> Response:
        """Delete a file: ``{"id", "object": "file", "deleted": true}``."""
        try:
            return JSONResponse(unwrap(await orch.coordinator.delete_file.remote(file_id)))
        except OrchestratorError as exc:
            return failed(exc)

    return api


def _missing(field: str, message: str) -> InvalidArguments:
    return InvalidArguments(f"{field}: {message}", detail=[{"field": field, "message": message}])

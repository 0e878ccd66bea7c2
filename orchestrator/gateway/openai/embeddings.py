"""OpenAI-compatible ``POST /v1/embeddings``, routed to the retrieval pool.

``model`` picks the pool and checks the model, so a client can never get
vectors from a model it did not ask for:

- ``"<pool>/<model>"`` or ``"<pool>"``, where ``<pool>`` is a pool that has the
  ``embeddings`` op (``"retrieval/all-MiniLM-L6-v2"``, ``"retrieval"``);
- any other name goes to the default pool (``router(orch, pool=...)``,
  ``"retrieval"`` unless the gateway says otherwise) and must be one of its
  model's names (``"all-MiniLM-L6-v2"``, ``"minilm"``,
  ``"sentence-transformers/all-MiniLM-L6-v2"``; ``info`` lists them).

Errors are OpenAI's body ``{"error": {"message", "type", "param", "code"}}``
with a 4xx status for anything the request got wrong (``param`` names the
field: ``input``, ``model``, ``encoding_format``), 5xx for the pool's failures.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.dataplane.handles import Orchestrator
from orchestrator.errors import InvalidArguments, OrchestratorError
from orchestrator.gateway.jsonbody import JSONBody

EMBED_OP = "embeddings"
# The worker's argument names as OpenAI calls them.
PARAMS = {"texts": "input"}
ERROR_TYPES = {401: "authentication_error", 404: "invalid_request_error", 429: "rate_limit_exceeded"}


class EmbeddingsRequest(BaseModel):
    """Body of POST /v1/embeddings (OpenAI's fields; ``user`` and unknown extras are accepted and ignored)."""

    model_config = ConfigDict(extra="ignore")
    input: str | list[str] = Field(description="A text, or a list of texts, to embed.")
    model: str = Field(description='"<pool>/<model>", "<pool>", or a model name of the default pool.')
    encoding_format: Literal["float", "base64"] = Field("float", description="Floats, or base64 little-endian float32.")
    dimensions: int | None = Field(None, gt=0, description="Accepted only when it is the model's dimension.")
    user: str | None = Field(None, description="Ignored.")


class OpenAIError(Exception):
    """An error answered in OpenAI's format."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        """The status and ``{"error": {"message", "type", "param", "code"}}``."""
        kind = ERROR_TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        body = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)

    @classmethod
    def from_orchestrator(cls, exc: OrchestratorError) -> OpenAIError:
        """An OrchestratorError as OpenAI sees it: same status and code; ``param`` from the field it names."""
        param = None
        if isinstance(exc, InvalidArguments) and isinstance(exc.detail, list) and exc.detail:
            field = str(exc.detail[0].get("field", "")).split(".")[0]
            param = PARAMS.get(field, field) or None
        field, sep, rest = exc.message.partition(":")
        message = f"{PARAMS[field]}:{rest}" if sep and field in PARAMS else exc.message
        return cls(exc.http_status, message, param, exc.code)


def parse_body(raw: bytes) -> EmbeddingsRequest:
    """The request, or an OpenAIError naming the first bad field."""
    try:
        data = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OpenAIError(400, f"the body is not valid JSON: {exc}", None, "invalid_json") from None
    if not isinstance(data, dict):
        raise OpenAIError(400, "the body must be a JSON object with `input` and `model`", None, "invalid_request")
    try:
        body = EmbeddingsRequest.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = [str(p) for p in error["loc"] if not str(p).startswith(("str", "list["))]
        field = loc[0] if loc else "body"
        message = error["msg"]
        if field == "input" and isinstance(data.get("input"), list):
            bad = next((i for i, item in enumerate(data["input"]) if not isinstance(item, str)), None)
            if bad is not None:
                message = f"item {bad} is {type(data['input'][bad]).__name__}: every item must be a string"
                message += " (token arrays are not supported)"
        elif field == "input":
            message = "must be a string or a list of strings"
        raise OpenAIError(400, f"{field}: {message}", field, "invalid_value") from None
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        raise OpenAIError(400, "input: must not be an empty list", "input", "invalid_value")
    if any(not text for text in texts):
        raise OpenAIError(400, "input: must not contain empty strings", "input", "invalid_value")
    return body


def embedding_pools(orch: Orchestrator) -> set[str]:
    """The pools whose worker has the ``embeddings`` op."""
    return {name for name, entry in orch.router.table["pools"].items() if EMBED_OP in entry.get("ops", {})}


async def served_models(orch: Orchestrator) -> list[dict[str, Any]]:
    """Each embeddings pool's model as /v1/models lists it: ``<pool>/<model>``, a name this route accepts."""
    found = []
    for name in sorted(embedding_pools(orch)):
        try:
            info = await orch.acall(name, "info")
        except OrchestratorError:  # a failed or starting pool lists nothing
            continue
        created = int(time.time())
        found.append({"id": f"{name}/{info['model']}", "object": "model", "created": created, "owned_by": name})
    return found


def router(orch: Orchestrator, pool: str = "retrieval") -> APIRouter:
    """The embeddings route; names outside ``"<pool>/..."`` go to ``pool``."""
    api = APIRouter(tags=["openai"])
    models: dict[str, dict[str, Any]] = {}  # pool -> its `info` (the model's names and dimension)

    async def resolve(name: str) -> tuple[str, dict[str, Any]]:
        """(the pool, its model info) for the request's ``model``."""
        head, _, tail = name.partition("/")
        target, wanted = (head, tail) if head in embedding_pools(orch) else (pool, name)
        try:
            info = models.get(target) or await orch.acall(target, "info")
        except OrchestratorError as exc:
            if exc.code in ("pool_not_found", "op_not_found"):
                raise OpenAIError(
                    404, f"model: no embeddings pool serves {name!r}", "model", "model_not_found"
                ) from None
            raise
        models[target] = info
        if wanted and wanted not in info["names"]:
            served = ", ".join(f"{target}/{n}" for n in info["names"])
            message = f"model: the model {name!r} does not exist (pool {target!r} serves {served})"
            raise OpenAIError(404, message, "model", "model_not_found")
        return target, info

    @api.post("/v1/embeddings")
    async def create_embeddings(request: Request) -> Response:
        """Embed ``input`` with the pool's model; OpenAI's request and response format."""
        try:
            body = parse_body(await request.body())
            target, info = await resolve(body.model)
            if body.dimensions is not None and body.dimensions != info["dim"]:
                message = f"dimensions: {info['model']} makes {info['dim']}-dimensional vectors, got {body.dimensions}"
                raise OpenAIError(400, message, "dimensions", "invalid_value")
            texts = [body.input] if isinstance(body.input, str) else body.input
            out = await orch.acall(target, EMBED_OP, texts=texts)
        except OrchestratorError as exc:
            return OpenAIError.from_orchestrator(exc).response()
        except OpenAIError as exc:
            return exc.response()
        vectors = out["embeddings"]  # a float32 array: written here as floats or base64, nowhere earlier
        if body.encoding_format == "base64":
            rows: Any = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in vectors]
        else:
            rows = list(vectors)
        data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(rows)]
        usage = {"prompt_tokens": out["tokens"], "total_tokens": out["tokens"]}
        return JSONBody({"object": "list", "data": data, "model": f"{target}/{out['model']}", "usage": usage})

    return api

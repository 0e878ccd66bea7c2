"""Program routes (``/v1/programs...``): register versions, list and show them, run, batch, stream, promote.

The registry is the coordinator's (``orchestrator/control/programs.py``); runs go straight to the
programs pool's actors through the same Router as every op call. ``POST /v1/programs/{name}/run``
takes ``forward``'s inputs as its JSON body (a boolean ``"trace"`` key asks for each predictor's
inputs and outputs, unless ``forward`` takes an input of that name) and answers ``{"name", "version",
"outputs"}``; with ``Accept: text/event-stream`` it streams a status event per module, then the
outputs as the ``result`` event.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.dataplane import programs
from orchestrator.dataplane.handles import Orchestrator
from orchestrator.dataplane.router import unwrap
from orchestrator.gateway.calls import OP_BODY, op_arguments, run_call

VERSION = Query(None, ge=1, description="Run this version instead of the live one.")


class ProgramRegister(BaseModel):
    """Body of POST /v1/programs: a new version of ``name`` from a program or a finished optimize job."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="The program's name (a letter or digit, then up to 63 of: letters, digits, _ . -).")
    program: dict[str, Any] | None = Field(None, description='{"class", "init", "state"} (or a signature program).')
    job_id: str | None = Field(None, description="A succeeded optimize job: its program, score and task model.")
    model: str | dict[str, Any] | None = Field(
        None,
        description='The model this version calls: a pool model ("light/ft:...") or {model, api_base, api_key_env}.',
    )


class ProgramBatch(BaseModel):
    """Body of POST /v1/programs/{name}/batch."""

    model_config = ConfigDict(extra="forbid")
    inputs: list[Any] = Field(description="forward's inputs, one object per run; outputs come back in this order.")


class ProgramPromote(BaseModel):
    """Body of POST /v1/programs/{name}/promote."""

    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1, description="The version to make live (an older one rolls back).")


def router(orch: Orchestrator, pool: str = programs.POOL) -> APIRouter:
    """The program routes; versions are loaded on, and runs go to, ``pool`` (workers.programs:Programs)."""
    router = APIRouter()
    coordinator = orch.coordinator

    @router.post("/v1/programs", tags=["programs"], status_code=201)
    async def register_program(body: ProgramRegister) -> JSONResponse:
        """Register a new immutable version (the first one is live at once): ``{"name", "version", "live"}``."""
        answer = await coordinator.register_program.remote(pool, body.name, body.program, body.job_id, body.model)
        return JSONResponse(unwrap(answer), status_code=201)

    @router.get("/v1/programs", tags=["programs"])
    async def list_programs() -> dict[str, Any]:
        """Every program: name, live version, how many versions, the latest."""
        return {"programs": await coordinator.list_programs.remote()}

    @router.get("/v1/programs/{name}", tags=["programs"])
    async def get_program(name: str, states: bool = Query(False, description="Include each version's state.")) -> Any:
        """One program: its versions (class, init, digest, model, score, source job, created) and the live one."""
        return unwrap(await coordinator.get_program.remote(name, states))

    @router.post("/v1/programs/{name}/run", tags=["programs"], openapi_extra=OP_BODY)
    async def run_program(name: str, request: Request, version: int | None = VERSION) -> Response:
        """Run the program on ``forward``'s inputs (the JSON body): ``{"name", "version", "outputs"}``."""
        inputs = await op_arguments(request, pool, "run")
        args = {"name": name, "inputs": inputs, "version": version}
        return await run_call(orch, pool, "run", args, None, request, stream_op="run_stream", wrap=False)

    @router.post("/v1/programs/{name}/batch", tags=["programs"])
    async def batch_program(name: str, body: ProgramBatch, version: int | None = VERSION) -> dict[str, Any]:
        """Run many inputs, spread over the pool's actors: ``{"name", "version", "outputs": [...in order]}``."""
        record = programs.pick_version(unwrap(await coordinator.get_program.remote(name, False)), version)
        actors = len(orch.router.pool(pool)["actors"])
        calls = programs.batch_calls(record, name, body.inputs, actors)
        router_ = orch.router
        answers = await asyncio.gather(*(router_.arun(router_.call_steps(pool, "run_many", c)) for c in calls))
        return programs.batch_answer(record, name, list(answers))

    @router.post("/v1/programs/{name}/promote", tags=["programs"])
    async def promote_program(name: str, body: ProgramPromote) -> dict[str, Any]:
        """Make ``version`` live on every actor (rollback: promote an older one): ``{"name", "live", "previous"}``."""
        return dict(unwrap(await coordinator.promote_program.remote(pool, name, body.version)))

    return router

"""The program registry: named programs with immutable numbered versions, one of them live (the coordinator's part).

A version is ``{class, init, state, digest, model, score, job_id, created}`` (or a signature program's
``{signature, module, instructions, state, ...}``), stored in the store's ``programs`` table, so it survives
the coordinator's death and restarts on the same ``state_dir``. Registering one first has one programs actor
check it (``program_check``: the class imports from deployed code, builds, its state fits, the model is
served), refusing it with the actor's 4xx naming the field, so nothing is registered; then runs the
pool-wide ``program_load`` (remembered: actors that start later load every version before they take calls).
Promoting runs the remembered ``program_live`` on every actor, then moves the live pointer. Versions are
numbered under one lock per coordinator, so two registrations never share a number.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Collection
from typing import Any

from orchestrator.control.poolcalls import PoolCalls
from orchestrator.control.store import Store
from orchestrator.errors import InvalidArguments, PoolNotFound, ProgramNotFound
from orchestrator.types import Failure

PROGRAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)


def invalid(field: str, message: str) -> Failure:
    """An invalid_arguments Failure naming ``field``."""
    return Failure(InvalidArguments(f"{field}: {message}", detail=[{"field": field, "message": message}]).to_dict())


class ProgramRegistry:
    """Register, list, show, resolve and promote program versions; answers are plain dicts or Failures."""

    def __init__(
        self,
        store: Store,
        pools: Collection[str],
        calls: PoolCalls,
        get_job: Callable[[str], Any],
    ) -> None:
        self.store = store
        self.pools = pools  # the configured pools' names (a live view)
        self.calls = calls  # one actor's check, then the pool-wide (remembered) load
        self.get_job = get_job
        self.lock = asyncio.Lock()

    async def register(
        self,
        pool: str,
        name: str,
        program: dict[str, Any] | None = None,
        job_id: str | None = None,
        model: Any = None,
    ) -> Any:
        """A new version of ``name`` from ``program`` or a finished optimize job: ``{"name", "version", "live"}``."""
        if pool not in self.pools:
            return self._no_pool(pool)
        if not isinstance(name, str) or not PROGRAM_NAME.fullmatch(name):
            return invalid("name", f"{name!r} is not a program name (a letter or digit, then up to 63 of: _ . -)")
        if (program is None) == (job_id is None):
            field = "program" if program is None else "job_id"
            return invalid(
                field, "give program ({class, init, state}) or job_id (a finished optimize job), exactly one"
            )
        if model is not None and not isinstance(model, str | dict):
            return invalid("model", "a pool model ('light/tiny') or an endpoint {model, api_base, api_key_env}")
        source: dict[str, Any] = {}
        if job_id is not None:
            found = self._from_job(job_id)
            if isinstance(found, Failure):
                return found
            program, source = found
        if not isinstance(program, dict):
            return invalid("program", "a JSON object: {class, init, state} or {signature, module, state}")
        job_model = source.pop("model", None)
        # the model it calls: the override, else the one the result is bound to, else the job's task model
        bound = model if model is not None else (program.get("model") or job_model)
        spec = {k: v for k, v in program.items() if k not in ("digest", "model")}  # what the actors build
        checked = await self.calls.one(pool, "program_check", {"program": spec, "model": bound})
        if isinstance(checked, Failure):
            return checked
        async with self.lock:
            version = await asyncio.to_thread(self.store.next_program_version, name)
            args = {"name": name, "version": version, "program": spec, "model": bound}
            answer = await self.calls.run(pool, "program_load", args)
            if isinstance(answer, Failure):
                return answer
            _, live = await asyncio.to_thread(self.store.program_versions, name)
            record = {**spec, "model": bound, **source}
            record |= {key: checked.get(key) for key in ("digest", "inputs", "required", "predictors")}
            if live is None:  # a program's first version is live at once
                answer = await self.calls.run(pool, "program_live", {"name": name, "version": version})
                if isinstance(answer, Failure):
                    return answer
            await asyncio.to_thread(self.store.add_program_version, name, version, record, live is None)
        return {"name": name, "version": version, "live": live or version}

    def _from_job(self, job_id: str) -> tuple[dict[str, Any], dict[str, Any]] | Failure:
        """The program an optimize job returned and what the version keeps of the job."""
        job = self.get_job(job_id)
        if isinstance(job, Failure):
            return job
        if job["op"] != "optimize":
            return invalid("job_id", f"job {job_id} is a {job['op']} job of pool {job['pool']!r}, not an optimize job")
        if job["status"] != "succeeded":
            return invalid("job_id", f"job {job_id} is {job['status']}: only a succeeded optimize job has a program")
        result = job["result"] or {}
        program = result.get("program")
        if not isinstance(program, dict):
            return invalid("job_id", f"job {job_id}'s result holds no program")
        if "class" not in program:  # a signature program's result is its dspy state: the job's args say the rest
            given = job["args"].get("program")
            given = given.model_dump(by_alias=True, exclude_none=True) if hasattr(given, "model_dump") else given
            program = {k: v for k, v in dict(given or {}).items() if k in ("signature", "module", "instructions")}
            program["state"] = result["program"]
        model = job["args"].get("model")
        model = model.model_dump(exclude_none=True) if hasattr(model, "model_dump") else model
        return program, {"job_id": job_id, "score": result.get("score"), "model": model}

    def listing(self) -> list[dict[str, Any]]:
        """Every program: ``{"name", "live", "versions", "latest", "created"}``."""
        return self.store.program_names()

    def show(self, name: str, states: bool = False) -> Any:
        """One program: ``{"name", "live", "versions": [...]}`` (each version without its state unless ``states``)."""
        versions, live = self.store.program_versions(name)
        if not versions:
            return Failure(ProgramNotFound(f"no program {name!r} (register one: POST /v1/programs)").to_dict())
        shown = versions if states else [{k: v for k, v in row.items() if k != "state"} for row in versions]
        return {"name": name, "live": live, "versions": shown}

    def resolve(self, name: str, version: int | None = None) -> Any:
        """The version number a run of ``name`` uses: ``version`` if it exists, else the live one."""
        versions, live = self.store.program_versions(name)
        if not versions:
            return Failure(ProgramNotFound(f"no program {name!r}").to_dict())
        if version is None:
            return live
        if not any(row["version"] == version for row in versions):
            known = ", ".join(str(row["version"]) for row in versions)
            return Failure(ProgramNotFound(f"program {name!r} has no version {version} (versions: {known})").to_dict())
        return version

    async def promote(self, pool: str, name: str, version: Any) -> Any:
        """Make ``version`` live (rolling back is promoting an older one): ``{"name", "live", "previous"}``."""
        if pool not in self.pools:
            return self._no_pool(pool)
        if isinstance(version, bool) or not isinstance(version, int):
            return invalid("version", f"expected a version number, got {version!r}")
        async with self.lock:
            found = await asyncio.to_thread(self.resolve, name, version)
            if isinstance(found, Failure):
                return found
            _, previous = await asyncio.to_thread(self.store.program_versions, name)
            answer = await self.calls.run(pool, "program_live", {"name": name, "version": version})
            if isinstance(answer, Failure):
                return answer
            await asyncio.to_thread(self.store.set_live_program, name, version)
        return {"name": name, "live": version, "previous": previous}

    def _no_pool(self, pool: str) -> Failure:
        known = ", ".join(sorted(self.pools)) or "none"
        message = f"no pool {pool!r} serves programs (pools: {known}): add one with worker workers.programs:Programs"
        return Failure(PoolNotFound(message, pool=pool).to_dict())

"""The programs pool's worker: the registered versions of optimized DSPy programs, served.

Every actor holds every registered version: the registry (``orchestrator/control/programs.py``) sends
``program_load`` and ``program_live`` pool-wide and remembered, so an actor that starts later (after a
crash, a recycle or a restart) loads them all before it takes a call. A version is built once from
deployed code (``{"class", "init", "state"}``, nothing unpickled) and run by many threads at once; its
LM calls go to a pool model through ``PoolLM`` (the version's ``model``, else ``options.model``) and
its retrieval through ``PoolRetriever``, as it did while it was optimized (DSPy's JSONAdapter).

``run`` answers ``{"name", "version", "outputs"}`` (and ``trace``: each predictor's inputs and outputs),
``run_many`` a chunk of a batch, ``run_stream`` a status event per module as it starts (DSPy's
``streamify`` status messages) and then the outputs. Inputs are checked against ``forward``'s
parameters before any LM call: a missing or unknown one is a 422 naming it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from orchestrator import Worker, metrics, op
from orchestrator.contract.paths import deployed_packages
from orchestrator.dataplane.handles import current
from orchestrator.dataplane.programs import check_inputs
from orchestrator.dspy import lm_for
from orchestrator.errors import ProgramNotFound
from orchestrator.runtime import logs
from workers.heavy import programs
from workers.heavy.programs import Endpoint, Program, dspy
from workers.heavy.worker import check_models

log = logging.getLogger("workers.programs")


@dataclass(frozen=True)
class Version:
    """One registered version, built and ready to run."""

    name: str
    version: int
    loaded: programs.Loaded
    module: Any  # the built dspy.Module with the version's state (shared by the threads that run it)
    lm: Any
    names: dict[int, str]  # id(predictor or module) -> its name in the program ("respond.predict", "retrieve")

    def trace_flag(self, inputs: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The inputs without a boolean ``"trace"`` key, and its value (unless ``forward`` takes ``trace``)."""
        flag = inputs.get("trace")
        if not isinstance(flag, bool) or "trace" in self.loaded.inputs:
            return inputs, False
        return {k: v for k, v in inputs.items() if k != "trace"}, flag

    def check(self, inputs: dict[str, Any], where: str = "") -> None:
        """Every required input of ``forward`` given and nothing else (before any LM call)."""
        what = self.loaded.program.class_ or "the signature"
        check_inputs(inputs, list(self.loaded.inputs), list(self.loaded.required), what, where)


class Programs(Worker):
    """Serves registered program versions. Options: ``model`` (the pool model a version without its own
    calls, e.g. ``light/tiny``), ``programs`` (top-level packages installed in this pool's env whose
    classes may be registered, besides pools.yaml's ``code:``) and ``threads`` (runs of one batch chunk
    at once on an actor)."""

    def __init__(self, model: str = "light", programs: list[str] | None = None, threads: int = 8) -> None:
        self.model = model
        self.allowed = deployed_packages() | frozenset(programs or ())
        self.threads = max(1, threads)
        self.versions: dict[tuple[str, int], Version] = {}
        self.live: dict[str, int] = {}
        self.lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        """What ``orchestrator status`` shows of this actor: the versions it has loaded, and the live ones."""
        with self.lock:
            loaded: dict[str, list[int]] = {}
            for name, version in sorted(self.versions):
                loaded.setdefault(name, []).append(version)
            return {"programs": {name: {"versions": v, "live": self.live.get(name)} for name, v in loaded.items()}}

    # ------------------------------------------------------------- the registry's ops
    @op(idempotent=True)
    def program_check(self, program: Program, model: str | Endpoint | None = None) -> dict[str, Any]:
        """What the registry asks one actor before it registers a version: the class imports from deployed code,
        builds and has predictors, the state fits, the model (``model``, the program's, else ``options.model``)
        is served. Returns its digest, ``forward``'s inputs (and the required ones) and its predictors."""
        loaded = programs.load(program, self.allowed)
        check_models({"model": model or loaded.program.model or self.model}, current)
        predictors = [name for name, _ in loaded.make().named_predictors()]
        inputs, required = list(loaded.inputs), list(loaded.required)
        return {"digest": loaded.digest, "inputs": inputs, "required": required, "predictors": predictors}

    @op(remember="program:{name}:{version}", idempotent=True)
    def program_load(
        self, name: str, version: int, program: Program, model: str | Endpoint | None = None
    ) -> dict[str, Any]:
        """Build version ``version`` of ``name`` here (the registry calls it on every actor, now and on later
        ones, after ``program_check``), ready to run."""
        loaded = programs.load(program, self.allowed)
        module = loaded.build()
        chosen = model or loaded.program.model or self.model
        lm = lm_for(chosen if isinstance(chosen, str) else chosen.model_dump(exclude_none=True), None, "model")
        with self.lock:
            self.versions[(name, version)] = Version(name, version, loaded, module, lm, _names(module))
        return {"name": name, "version": version}

    @op(remember="live:{name}", idempotent=True)
    def program_live(self, name: str, version: int) -> dict[str, Any]:
        """Runs of ``name`` without a version use ``version`` (the registry checked that it exists)."""
        with self.lock:
            self.live[name] = version
        return {"name": name, "live": version}

    # ------------------------------------------------------------------------------ running
    @op(idempotent=True)
    def run(
        self, name: str, inputs: dict[str, Any], version: int | None = None, trace: bool | None = None
    ) -> dict[str, Any]:
        """Run ``name`` (its live version, or ``version``) on ``inputs`` (``forward``'s parameters):
        ``{"name", "version", "outputs"}``, with ``trace`` each predictor's ``{"predictor", "inputs", "outputs"}``.
        ``trace`` None: a boolean ``"trace"`` key of ``inputs`` is the flag, unless ``forward`` takes ``trace``."""
        served = self._version(name, version)
        inputs, flag = served.trace_flag(inputs)
        served.check(inputs)
        return self._run(served, inputs, flag if trace is None else trace)

    @op(idempotent=True)
    def run_many(
        self, name: str, inputs: list[dict[str, Any]], version: int | None = None, first: int = 0
    ) -> dict[str, Any]:
        """A chunk of a batch (rows ``first``... of it): every row checked first (``inputs.3.question``), then
        ``options.threads`` at a time; ``{"name", "version", "outputs": [...in order]}``."""
        served = self._version(name, version)
        for i, row in enumerate(inputs):
            served.check(row, f"inputs.{first + i}.")
        with ThreadPoolExecutor(max_workers=min(self.threads, max(1, len(inputs)))) as pool:
            outputs = list(pool.map(lambda row: self._run(served, row, False)["outputs"], inputs))
        return {"name": name, "version": served.version, "outputs": outputs}

    @op()
    def run_stream(
        self, name: str, inputs: dict[str, Any], version: int | None = None
    ) -> Generator[dict[str, Any], None, dict[str, Any]]:
        """``run`` as a stream: ``{"status": ..., "module": ...}`` as each module starts (DSPy's ``streamify``
        status messages), then returns ``{"name", "version", "outputs"}``."""
        served = self._version(name, version)
        inputs, _ = served.trace_flag(inputs)  # a stream's events are its trace
        served.check(inputs)
        streamed = dspy.streamify(served.module, status_message_provider=_Status(served.names), async_streaming=False)
        started = time.perf_counter()
        prediction = None
        with self._measured(served, started), dspy.context(lm=served.lm, adapter=dspy.JSONAdapter()):
            for item in streamed(**inputs):
                if isinstance(item, dspy.Prediction):
                    prediction = item
                elif isinstance(item, dspy.streaming.StatusMessage):
                    module, _, message = item.message.partition("\t")
                    yield {"status": message, "module": module}
        outputs = _jsonable(dict(prediction.items())) if prediction is not None else {}
        return {"name": name, "version": served.version, "outputs": outputs}

    def _version(self, name: str, version: int | None) -> Version:
        with self.lock:
            chosen = version if version is not None else self.live.get(name)
            served = self.versions.get((name, chosen)) if chosen is not None else None
            known = sorted(v for n, v in self.versions if n == name)
        if served is not None:
            return served
        if not known:
            raise ProgramNotFound(f"no program {name!r} is registered (GET /v1/programs lists them)")
        listed = ", ".join(map(str, known))
        raise ProgramNotFound(f"program {name!r} has no version {chosen} (versions: {listed})")

    def _run(self, served: Version, inputs: dict[str, Any], trace: bool) -> dict[str, Any]:
        started = time.perf_counter()
        with self._measured(served, started), dspy.context(lm=served.lm, adapter=dspy.JSONAdapter(), trace=[]):
            prediction = served.module(**inputs)
            steps = list(dspy.settings.trace) if trace else []
        out: dict[str, Any] = {
            "name": served.name,
            "version": served.version,
            "outputs": _jsonable(dict(prediction.items())),
        }
        if trace:
            out["trace"] = [
                {
                    "predictor": served.names.get(id(p), type(p).__name__),
                    "inputs": _jsonable(i),
                    "outputs": _jsonable(dict(o.items())),
                }
                for p, i, o in steps
            ]
        return out

    @contextmanager
    def _measured(self, served: Version, started: float) -> Iterator[None]:
        """Counted and timed per program and version; log lines within name them."""
        tags = {"program": served.name, "version": str(served.version)}
        outcome = "error"
        with logs.naming(program=served.name, version=served.version):
            try:
                yield
                outcome = "ok"
            finally:
                seconds = time.perf_counter() - started
                metrics.program_runs().inc(tags={**tags, "outcome": outcome})
                metrics.program_run_seconds().observe(seconds, tags=tags)
                log.info("run %s in %.3f s", outcome, seconds)


def _names(module: Any) -> dict[int, str]:
    """Each part of the program by id: its modules and predictors by path (``answer.predict``), the program by its
    class, and other parts a module holds that have a ``forward`` (a ``PoolRetriever``) by attribute path."""
    names: dict[int, str] = {}
    for path, sub in module.named_sub_modules():
        prefix = "" if path == "self" else path.removeprefix("self.") + "."
        for attr, value in vars(sub).items():
            if callable(getattr(value, "forward", None)) and not isinstance(value, type):
                names.setdefault(id(value), prefix + attr)
    names |= {id(m): n.removeprefix("self.") for n, m in module.named_sub_modules() if n != "self"}
    return names | {id(p): n for n, p in module.named_predictors()} | {id(module): type(module).__name__}


class _Status(dspy.streaming.StatusMessageProvider):
    """A status message as each module of the program starts, naming it (``retrieve``, ``respond.predict``)."""

    def __init__(self, names: dict[int, str]) -> None:
        self.names = names

    def module_start_status_message(self, instance: Any, inputs: dict[str, Any]) -> str:
        name = self.names.get(id(instance), type(instance).__name__)
        return f"{name}\t{name} ({type(instance).__name__}) running"


def _jsonable(value: Any) -> Any:
    """``value`` as JSON can carry it: itself when it serializes, else its ``str``."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)

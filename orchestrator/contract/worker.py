"""The worker contract: ``Worker``, ``@op`` and ``OpSpec`` (what ``@op`` records), and loading a worker class.

A pool's worker is a subclass of :class:`Worker` whose ``@op`` methods are the
only things callable from outside. Arguments are validated from the type hints
(pydantic) before the method runs. An op that takes a parameter named ``ctx``
receives the call's ``Context`` (``contract/context.py``).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from orchestrator.errors import InvalidArguments, InvalidConfig

F = TypeVar("F", bound=Callable[..., Any])
# ``@op(session=...)``: True runs only inside a session, "optional" inside one or not (``ctx.session_id`` says which).
SessionMode = bool | Literal["optional"]


class Worker:
    """Base class of pool workers. The constructor receives the pool's ``options``."""

    def close(self) -> None:
        """Called once when the actor stops gracefully; release resources here."""

    def describe(self) -> dict[str, Any] | None:
        """What this actor holds, for ``orchestrator status`` (e.g. the program versions it has loaded): a small
        JSON object, asked for at each health ping from the admin thread (keep it quick and thread-safe)."""
        return None


@dataclass(frozen=True)
class OpSpec:
    """What ``@op`` records about a method."""

    name: str
    session: SessionMode = False
    stream: bool = False
    idempotent: bool = False
    is_async: bool = False
    takes_ctx: bool = False
    batch_param: bool = False
    args_model: type[BaseModel] | None = None
    check: Callable[[Any, dict[str, Any], Callable[[], Any]], None] | None = None  # (worker, args, orchestrator)
    pool_wide: bool = False  # runs on every actor of the pool (through the coordinator)
    remember: str | None = None  # pool-wide, replayed on actors that start later: key template, e.g. "adapter:{name}"
    forget: str | None = None  # pool-wide, and drops the remembered call of this key
    unresolved: str | None = None  # why the type hints did not resolve when @op ran (retried by ops_of)

    def info(self) -> dict[str, Any]:
        """The public description (routing table, status, HTTP)."""
        schema = self.args_model.model_json_schema() if self.args_model else {"type": "object", "properties": {}}
        return {
            "name": self.name,
            "session": self.session,
            "stream": self.stream,
            "idempotent": self.idempotent,
            "pool_wide": self.pool_wide,
            "remember": self.remember,
            "forget": self.forget,
            "params": schema,
        }

    def validate(self, args: dict[str, Any], pool: str | None = None) -> dict[str, Any]:
        """Validate and coerce ``args``; raise InvalidArguments naming each bad field."""
        if self.args_model is None:  # the op takes no arguments: any is refused, by name
            if args:
                problems = [{"field": str(name), "message": "unexpected argument"} for name in args]
                text = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
                raise InvalidArguments(text, pool=pool, op=self.name, detail=problems)
            return args
        try:
            model = self.args_model.model_validate(args)
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                name = ".".join(str(p) for p in error["loc"]) or "(arguments)"
                message = "unexpected argument" if error["type"] == "extra_forbidden" else error["msg"]
                problems.append({"field": name, "message": message})
            text = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
            raise InvalidArguments(text, pool=pool, op=self.name, detail=problems) from None
        return dict(model)


@overload
def op(fn: F) -> F: ...
@overload
def op(
    *,
    session: SessionMode = False,
    idempotent: bool = False,
    check: Callable[..., None] | None = None,
    pool_wide: bool = False,
    remember: str | None = None,
    forget: str | None = None,
) -> Callable[[F], F]: ...
def op(
    fn: Any = None,
    *,
    session: SessionMode = False,
    idempotent: bool = False,
    check: Any = None,
    pool_wide: bool = False,
    remember: str | None = None,
    forget: str | None = None,
) -> Any:
    """Mark a Worker method as callable from outside.

    Plain, ``async def`` and generator (streaming: each ``yield`` is an event,
    the ``return`` value is the result) methods are all supported.
    ``session=True`` ops run only inside a session (``ctx.state`` is its state);
    ``session="optional"`` ops run inside one (with its state) or outside (no
    session state: ``ctx.session_id`` is None); ``idempotent=True`` ops are
    retried once on another actor when theirs crashes. ``check(worker, args, orchestrator)``
    checks the validated arguments beyond their types (e.g. that a model another pool
    serves exists; ``orchestrator()`` gives the in-cluster handle) and raises
    InvalidArguments naming the field: jobs are checked at submit, calls before they run.

    ``pool_wide=True`` ops run on every ready actor of the pool (e.g. loading an
    adapter every actor must serve); the caller gets the first actor's result, and
    an actor that fails while others succeed is replaced. ``remember="adapter:{name}"``
    (a key formatted from the arguments) also makes the coordinator keep the call,
    durably, and replay it on every actor that starts later, a later call of the
    same key replacing it; ``forget="adapter:{name}"`` drops it. Such ops must be
    idempotent: an actor starting during the call may get it twice.
    """
    if session not in (True, False, "optional"):
        raise TypeError(f"@op: session must be True, False or 'optional', got {session!r}")
    if session and (pool_wide or remember or forget):
        raise TypeError("@op: a session op runs on its session's actor; it cannot be pool-wide")

    def mark(method: F) -> F:
        spec = _build_spec(method, session=session, idempotent=idempotent)
        spec = replace(spec, check=check, pool_wide=bool(pool_wide or remember or forget), remember=remember)
        if spec.stream and spec.pool_wide:
            raise TypeError(f"@op {spec.name}: a streaming op cannot be pool-wide")
        method.__orchestrator_op__ = replace(spec, forget=forget)  # type: ignore[attr-defined]
        return method

    return mark(fn) if fn is not None else mark


def _build_spec(method: Callable[..., Any], *, session: SessionMode, idempotent: bool) -> OpSpec:
    signature = inspect.signature(method)
    try:
        hints = get_type_hints(method, include_extras=True)  # keep Annotated[..., Field(...)] bounds
    except Exception as exc:  # a name defined later in the module: ops_of tries again once it is loaded
        return OpSpec(name=method.__name__, session=session, idempotent=idempotent, unresolved=f"{exc!r}")
    fields: dict[str, Any] = {}
    takes_ctx = False
    for i, (name, param) in enumerate(signature.parameters.items()):
        if i == 0 and name == "self":
            continue
        if name == "ctx":
            takes_ctx = True
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"@op {method.__name__}: *args/**kwargs are not supported; name each argument")
        annotation = hints.get(name, Any)
        default = ... if param.default is param.empty else param.default
        fields[name] = (annotation, default)
    model = None
    if fields:
        model = create_model(
            f"{method.__name__}_args",
            __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
            **fields,
        )
    return OpSpec(
        name=method.__name__,
        session=session,
        stream=inspect.isgeneratorfunction(method) or inspect.isasyncgenfunction(method),
        idempotent=idempotent,
        is_async=inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method),
        takes_ctx=takes_ctx,
        batch_param="batch_size" in fields,
        args_model=model,
    )


def ops_of(cls: type) -> dict[str, OpSpec]:
    """The ``@op`` methods of a worker class, by name.

    An op whose type hints still cannot be resolved is an InvalidConfig naming
    it: its arguments would otherwise go unvalidated.
    """
    found: dict[str, OpSpec] = {}
    for name in dir(cls):
        method = getattr(cls, name, None)
        spec = getattr(method, "__orchestrator_op__", None)
        if not isinstance(spec, OpSpec):
            continue
        if spec.unresolved is not None:
            assert method is not None
            marked = spec  # what @op recorded beside the arguments (check, pool_wide...) carries over
            spec = _build_spec(method, session=spec.session, idempotent=spec.idempotent)
            spec = replace(spec, check=marked.check, pool_wide=marked.pool_wide, remember=marked.remember)
            spec = replace(spec, forget=marked.forget)
            if spec.unresolved is not None:
                raise InvalidConfig(
                    f"{cls.__name__}.{name}: @op {name}'s type hints cannot be resolved ({spec.unresolved}); "
                    "its arguments could not be validated",
                    op=name,
                )
            method.__orchestrator_op__ = spec
        found[name] = spec
    return found


def load_worker_class(entry: str, pool: str, options: dict[str, Any], env_file: str | None = None) -> type[Worker]:
    """Import ``"pkg.module:Class"`` and check it is a Worker that accepts ``options``.

    Raises InvalidConfig naming the pool and the problem; a module the worker's code imports that is not
    installed also names ``env_file`` (the pool's requirements file), where it belongs.
    """
    where = f"pools.{pool}.worker"
    module_name, _, class_name = entry.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = exc.name or ""
        if env_file and isinstance(exc, ModuleNotFoundError) and missing and not _contains(missing, module_name):
            raise InvalidConfig(
                f"{where}: {module_name!r} imports {missing!r} but {env_file} does not provide it",
                pool=pool,
                detail={"module": missing, "env_file": env_file},
            ) from None
        raise InvalidConfig(f"{where}: cannot import {module_name!r}: {exc}", pool=pool) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise InvalidConfig(f"{where}: module {module_name!r} has no {class_name!r}", pool=pool)
    if not (isinstance(cls, type) and issubclass(cls, Worker)):
        raise InvalidConfig(f"{where}: {entry} is not a subclass of orchestrator.Worker", pool=pool)
    try:
        ops = ops_of(cls)
    except InvalidConfig as exc:
        raise InvalidConfig(f"{where}: {exc.message}", pool=pool, op=exc.op) from None
    if not ops:
        raise InvalidConfig(f"{where}: {entry} has no @op methods", pool=pool)
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as exc:
        raise InvalidConfig(f"pools.{pool}.options: {entry} does not accept these options: {exc}", pool=pool) from None
    return cls


def _contains(package: str, module: str) -> bool:
    """Whether ``package`` is ``module`` or one of its parents (the worker's own code, not a dependency)."""
    return module == package or module.startswith(package + ".")

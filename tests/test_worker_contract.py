"""The worker contract without Ray: @op specs, argument validation, class checks, error wire form."""

from __future__ import annotations

import pickle
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field

import orchestrator
from orchestrator import Context, Worker, op
from orchestrator.contract import load_worker_class, ops_of
from orchestrator.errors import InvalidArguments, InvalidConfig, OrchestratorError, Overloaded, SessionLost


class Sample(Worker):
    def __init__(self, scale: int = 1) -> None:
        self.scale = scale

    @op
    def embed(self, texts: list[str], normalize: bool = True) -> int:
        return len(texts) * self.scale

    @op(session=True)
    def add(self, ctx: Context, docs: list[str]) -> int:
        return len(docs)

    @op
    def gen(self, n: int) -> Any:
        yield from range(n)

    def helper(self) -> None:
        """Not an op: not callable from outside."""


def test_only_op_methods_are_exposed() -> None:
    specs = ops_of(Sample)
    assert set(specs) == {"embed", "add", "gen"}
    assert specs["add"].session and specs["add"].takes_ctx
    assert specs["gen"].stream and not specs["embed"].stream


def test_validation_names_the_bad_field() -> None:
    spec = ops_of(Sample)["embed"]
    with pytest.raises(InvalidArguments) as info:
        spec.validate({"texts": "not a list"}, pool="retrieval")
    assert info.value.detail[0]["field"] == "texts"
    assert info.value.pool == "retrieval" and info.value.op == "embed"
    with pytest.raises(InvalidArguments, match="bogus: unexpected argument"):
        spec.validate({"texts": ["a"], "bogus": 1})
    with pytest.raises(InvalidArguments, match="texts: Field required"):
        spec.validate({})
    assert spec.validate({"texts": ["a"]}) == {"texts": ["a"], "normalize": True}


def test_an_op_without_arguments_refuses_any_by_name() -> None:
    class NoArgs(Worker):
        @op
        def ping(self) -> str:
            return "pong"

    spec = ops_of(NoArgs)["ping"]
    assert spec.validate({}) == {}
    with pytest.raises(InvalidArguments, match="bogus: unexpected argument") as info:
        spec.validate({"bogus": 1}, pool="p")
    assert info.value.detail == [{"field": "bogus", "message": "unexpected argument"}] and info.value.op == "ping"


def test_load_worker_class_checks_entry_class_and_options() -> None:
    assert load_worker_class("tests.kit:Toolbox", "p", {"greeting": "yo"}).__name__ == "Toolbox"
    with pytest.raises(InvalidConfig, match="pools.p.worker: cannot import 'workers.nope'"):
        load_worker_class("workers.nope:Toolbox", "p", {})
    with pytest.raises(InvalidConfig, match="has no 'Nope'"):
        load_worker_class("tests.kit:Nope", "p", {})
    with pytest.raises(InvalidConfig, match="not a subclass of orchestrator.Worker"):
        load_worker_class("tests.kit:NotAWorker", "p", {})
    with pytest.raises(InvalidConfig, match="pools.p.options: .* does not accept"):
        load_worker_class("tests.kit:Toolbox", "p", {"colour": "red"})


def test_errors_round_trip_as_dicts_and_pickles() -> None:
    error = SessionLost("gone", pool="heavy", op="step", detail={"x": 1})
    again = OrchestratorError.from_dict(error.to_dict())
    assert type(again) is SessionLost and again.to_dict() == error.to_dict()
    unpickled = pickle.loads(pickle.dumps(Overloaded("full", pool="light")))
    assert isinstance(unpickled, Overloaded) and unpickled.retryable and unpickled.pool == "light"
    assert SessionLost.http_status == 410 and Overloaded.http_status == 429


def test_public_api_is_explicit() -> None:
    assert {"Worker", "op", "Context", "start", "connect", "OrchestratorError"} <= set(orchestrator.__all__)
    for name in orchestrator.__all__:
        assert hasattr(orchestrator, name), name
    public = {n for n in vars(orchestrator) if not n.startswith("_") and n[0].isupper()}
    assert public <= set(orchestrator.__all__) | {"TYPE_CHECKING"}, public - set(orchestrator.__all__)


class Bounded(Worker):
    @op
    def search(self, k: Annotated[int, Field(gt=0)] = 10) -> int:
        return k


def test_annotated_bounds_are_enforced() -> None:
    spec = ops_of(Bounded)["search"]
    with pytest.raises(InvalidArguments, match="k: Input should be greater than 0"):
        spec.validate({"k": 0})
    assert spec.validate({"k": 3}) == {"k": 3}


class LaterRef(Worker):
    @op
    def take(self, item: DefinedLater) -> int:
        return item.size


class DefinedLater(BaseModel):
    size: int


def test_hints_naming_a_class_defined_later_still_validate() -> None:
    spec = ops_of(LaterRef)["take"]  # @op ran before DefinedLater existed; ops_of resolves it now
    assert spec.validate({"item": {"size": "3"}})["item"].size == 3
    with pytest.raises(InvalidArguments, match="item.size"):
        spec.validate({"item": {"size": "x"}})


def test_hints_that_never_resolve_are_an_error_naming_the_op() -> None:
    from tests.kit.unresolved import Unresolved

    with pytest.raises(InvalidConfig, match="@op lookup's type hints cannot be resolved"):
        ops_of(Unresolved)

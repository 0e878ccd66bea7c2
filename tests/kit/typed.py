"""A worker of instant ops with many kinds of typed arguments: the fuzzer's target for argument validation."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from orchestrator import Context, Worker, op


class Point(BaseModel):
    """A nested model (its schema lands in the OpenAPI components)."""

    x: float
    y: float = 0.0
    label: Annotated[str, Field(max_length=20)] | None = None


class Typed(Worker):
    """Every op answers at once; what matters is how its arguments are checked."""

    @op
    def scalars(
        self,
        count: Annotated[int, Field(ge=0, le=100)],
        ratio: float = 0.5,
        name: Annotated[str, Field(min_length=1, max_length=50)] = "x",
        flag: bool = False,
        mode: Literal["fast", "exact"] = "fast",
    ) -> dict[str, Any]:
        """Bounded scalars and an enum."""
        return {"count": count, "ratio": ratio, "name": name, "flag": flag, "mode": mode}

    @op
    def collections(
        self,
        items: Annotated[list[str], Field(max_length=20)],
        weights: dict[str, float] | None = None,
        tags: set[str] | None = None,
    ) -> int:
        """A bounded list, a mapping, a set."""
        return len(items) + len(weights or {}) + len(tags or ())

    @op
    def shapes(self, points: Annotated[list[Point], Field(min_length=1, max_length=10)], scale: float = 1.0) -> float:
        """Nested models."""
        return sum(p.x * scale for p in points)

    @op
    def anything(self, value: Any = None, extra: dict[str, Any] | None = None) -> Any:
        """Free-form JSON, echoed."""
        return value

    @op
    def stream(self, ctx: Context, n: Annotated[int, Field(ge=0, le=5)] = 2) -> Any:
        """A short stream."""
        for i in range(n):
            yield {"i": i}
        return n

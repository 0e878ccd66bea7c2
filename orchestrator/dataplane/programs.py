"""Running registered programs from a caller (the gateway, the in-process API): input checks and batches.

A batch is checked whole against the version's ``forward`` inputs before any row runs, then split into
one contiguous chunk per actor of the programs pool; each chunk is one ``run_many`` call (Ray's per-call
cost paid per chunk, as ``call_many`` pays it), retried elsewhere if its actor dies (the op is idempotent).
"""

from __future__ import annotations

from typing import Any

from orchestrator.errors import InvalidArguments, ProgramNotFound

POOL = "programs"  # the pool whose worker is workers.programs:Programs


def invalid(field: str, message: str) -> InvalidArguments:
    return InvalidArguments(f"{field}: {message}", detail=[{"field": field, "message": message}])


def check_inputs(inputs: Any, known: list[str], required: list[str], what: str, where: str = "") -> None:
    """``inputs`` is an object holding every ``required`` input and nothing outside ``known`` (field: the input)."""
    if not isinstance(inputs, dict):
        raise invalid(
            where.rstrip(".") or "body", f"expected a JSON object of {what}'s inputs, got {type(inputs).__name__}"
        )
    for key in inputs:
        if key not in known:
            raise invalid(f"{where}{key}", f"not an input of {what} (its inputs: {', '.join(known)})")
    for key in required:
        if key not in inputs:
            raise invalid(f"{where}{key}", f"missing: {what} needs input {key!r}")


def pick_version(program: dict[str, Any], version: int | None) -> dict[str, Any]:
    """The version record a run uses (``version``, else the live one) from ``GET /v1/programs/{name}``'s answer."""
    wanted = program["live"] if version is None else version
    for row in program["versions"]:
        if row["version"] == wanted:
            return row
    known = ", ".join(str(row["version"]) for row in program["versions"])
    raise ProgramNotFound(f"program {program['name']!r} has no version {wanted} (versions: {known})")


def batch_calls(record: dict[str, Any], name: str, rows: Any, actors: int) -> list[dict[str, Any]]:
    """``run_many`` arguments covering ``rows`` in order, one chunk per actor; every row checked first."""
    if not isinstance(rows, list):
        raise invalid("inputs", f"expected a list of input objects, got {type(rows).__name__}")
    what = record.get("class") or "the signature"
    for i, row in enumerate(rows):
        check_inputs(row, record.get("inputs") or [], record.get("required") or [], what, f"inputs.{i}.")
    parts = max(1, min(actors, len(rows)))
    size, extra = divmod(len(rows), parts)
    calls, start = [], 0
    for part in range(parts):
        end = start + size + (1 if part < extra else 0)
        calls.append({"name": name, "inputs": rows[start:end], "version": record["version"], "first": start})
        start = end
    return calls


def batch_answer(record: dict[str, Any], name: str, answers: list[dict[str, Any]]) -> dict[str, Any]:
    """The chunks' outputs joined in order: ``{"name", "version", "outputs"}``."""
    return {"name": name, "version": record["version"], "outputs": [o for a in answers for o in a["outputs"]]}

"""The light pool without Ray: stop strings and text deltas (on a toy vocabulary and on the tiny model's real
tokenizer), what a job's caller receives from the transformers backend on the tiny model, request limits, the
micro-batcher on a fake backend, vLLM's parameter mapping, and the OpenAI route helpers."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.responses import JSONResponse

from orchestrator.errors import InvalidArguments, InvalidConfig, OpNotFound, PoolNotFound, Timeout
from orchestrator.gateway.openai.chat import from_orchestrator_error, openai_error, split_model
from workers.light.batching import Batcher, Job
from workers.light.params import (
    Row,
    TextAccumulator,
    check_messages,
    check_sampling,
    normalize_stop,
    resolve_max_tokens,
    row_seed,
)
from workers.light.vllm_backend import engine_args, finish_reason, gpu_share, sampling_args
from workers.light.worker import ADAPTER_NAME, Light, looks_like_path

VOCAB = {1: "Hel", 2: "lo", 3: " wor", 4: "ld", 5: "!", 6: "\xe2", 7: "\x82\xac"}  # 6+7: "€" split in two


def decode(ids: list[int]) -> str:
    raw = "".join(VOCAB[i] for i in ids).encode("latin-1")
    return raw.decode("utf-8", errors="replace")


def feed(stop: list[str], tokens: list[int]) -> tuple[list[str], str, bool]:
    return stream_text(decode, tokens, stop)


def test_deltas_add_up_to_the_text_without_stops() -> None:
    deltas, text, _ = feed([], [1, 2, 3, 4, 5])
    assert deltas[:5] == ["Hel", "lo", " wor", "ld", "!"] and "".join(deltas) == text == "Hello world!"


def test_stop_string_ends_the_text_before_it_even_across_tokens() -> None:
    deltas, text, stopped = feed(["o w"], [1, 2, 3, 4, 5])
    assert stopped and "".join(deltas) == text == "Hell"
    deltas, _, stopped = feed(["zz"], [1, 2, 3])  # a possible stop start is held back, then released
    assert "".join(deltas) == "Hello wor" and not stopped


def test_half_a_character_is_never_shown() -> None:
    deltas, _, _ = feed([], [1, 6, 7, 5])
    assert "\ufffd" not in "".join(deltas[:2]) and "".join(deltas) == "Hel€!"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny local model (random weights, a real tokenizer)."""
    pytest.importorskip("torch", reason="the light pool needs torch: pip install -e '.[light]'")
    pytest.importorskip("transformers", reason="the light pool needs transformers: pip install -e '.[light]'")
    from workers.light import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def tokenizer(tiny: Path) -> Any:
    """The tiny model's byte-level BPE tokenizer (a 512-token vocabulary: rare characters are split into bytes)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny)


class CountingDecode:
    """The tokenizer's decode (as the backend calls it), recording how many ids each call got."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.sizes: list[int] = []

    def __call__(self, ids: list[int]) -> str:
        self.sizes.append(len(ids))
        return str(self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))


def stream_text(decode: Callable[[list[int]], str], ids: list[int], stop: list[str]) -> tuple[list[str], str, bool]:
    """Feed ``ids`` one by one as the backend does: the deltas (the last one from ``finish``), the text, stopped."""
    acc = TextAccumulator(decode, stop)
    deltas = []
    for token in ids:
        deltas.append(acc.add(token))
        if acc.stopped:
            break
    deltas.append(acc.finish())
    return deltas, acc.text, acc.stopped


def test_incremental_text_equals_decoding_the_whole_list(tokenizer: Any) -> None:
    decode = CountingDecode(tokenizer)
    rng = random.Random(0)
    for _ in range(300):  # random ids: split characters, stray bytes, special tokens
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randrange(1, 40))]
        deltas, text, _ = stream_text(decode, ids, [])
        assert "".join(deltas) == text == decode(ids), ids
        shown = "".join(deltas[:-1])
        assert decode(ids).startswith(shown) and "\ufffd" not in shown[-1:], ids
        lazy = TextAccumulator(decode, [], lazy=True)
        for token in ids:
            assert lazy.add(token) == ""
        assert lazy.finish() == text  # a non-streaming row decodes once, to the same text


def test_each_token_decodes_a_few_ids_however_long_the_row(tokenizer: Any) -> None:
    ids = tokenizer("Hello, world! How are you today? " * 40, add_special_tokens=False)["input_ids"]
    decode = CountingDecode(tokenizer)
    acc = TextAccumulator(decode, ["never seen"])
    for token in ids:
        acc.add(token)
    assert len(ids) > 300 and max(decode.sizes) <= 3, decode.sizes[-5:]  # O(1) per token, not the whole row
    lazy = CountingDecode(tokenizer)
    acc = TextAccumulator(lazy, [], lazy=True)
    for token in ids:
        acc.add(token)
    assert lazy.sizes == [] and acc.finish() == decode(ids) and lazy.sizes == [len(ids)]


def test_a_character_split_across_tokens_is_shown_whole(tokenizer: Any) -> None:
    decode = CountingDecode(tokenizer)
    ids = tokenizer("a€b 🙂!", add_special_tokens=False)["input_ids"]
    assert [decode([i]) for i in ids[1:4]] == ["\ufffd"] * 3  # the euro sign is three byte tokens
    deltas, text, _ = stream_text(decode, ids, [])
    assert deltas[:5] == ["a", "", "", "€", "b"] and text == "a€b 🙂!"
    assert not any("\ufffd" in d for d in deltas)
    deltas, text, stopped = stream_text(decode, ids, ["€b"])  # a stop string that starts with the split character
    assert text == "a" and stopped and "".join(deltas) == "a"


def test_stop_strings_across_tokens_and_at_the_very_start(tokenizer: Any) -> None:
    decode = CountingDecode(tokenizer)
    ids = tokenizer("Hello world! How are you?", add_special_tokens=False)["input_ids"]
    assert [decode([i]) for i in ids[:2]] == ["Hello", " world"]
    deltas, text, stopped = stream_text(decode, ids, ["o w"])  # spans "Hello" | " world"
    assert text == "".join(deltas) == "Hell" and stopped
    deltas, text, stopped = stream_text(decode, ids, ["Hel"])  # the very first characters
    assert text == "" and stopped and deltas == ["", ""]
    deltas, text, stopped = stream_text(decode, ids, ["ld! Why"])  # a possible start, held, then released
    assert text == "".join(deltas) == "Hello world! How are you?" and not stopped
    upto_bang = deltas[: ids.index(tokenizer.convert_tokens_to_ids("!")) + 1]
    assert "".join(upto_bang) == "Hello ", "the last len(stop) - 1 characters wait: they could start the stop"
    for stop in (["d! H"], ["!", "world"], ["you?"]):
        full = decode(ids)
        at = min(full.find(s) for s in stop)
        lazy = TextAccumulator(decode, stop, lazy=True)  # a non-streaming row still stops at once
        for token in ids:
            lazy.add(token)
            if lazy.stopped:
                break
        else:
            pytest.fail(f"{stop}: not stopped as the stop string came")
        lazy.finish()
        assert lazy.stopped and lazy.text == full[:at] == stream_text(decode, ids, stop)[1], stop


@pytest.fixture(scope="module")
def backend(tiny: Path) -> Iterator[Any]:
    """The transformers backend on the tiny model, in this process (no Ray)."""
    from workers.light.hf import TransformersBackend

    served = TransformersBackend(str(tiny), device="cpu")
    yield served
    served.close()


def run_job(backend: Any, streaming: bool, rows: list[dict[str, Any]]) -> tuple[list[tuple[Any, ...]], list[Any]]:
    """Every event the job's queue received, and each row's (text, finish reason, completion tokens)."""
    from workers.light.batching import Job
    from workers.light.params import Row

    ids = backend.encode("Once upon a time")
    job = backend.submit(Job([Row(i, ids, **row) for i, row in enumerate(rows)], streaming=streaming))
    events = list(job.stream(timeout_s=60))
    assert job.events.empty()  # nothing came after the last row's finish
    texts = {i: "".join(e[2] for e in events if e[:2] == ("delta", i)) for i in range(len(rows))}
    return events, [(texts[e[1]] + e[4], e[2], e[3]) for e in sorted(e for e in events if e[0] == "finish")]


SEEDED_ROWS = [
    {"max_tokens": 24, "temperature": 0.9, "seed": 7},
    {"max_tokens": 24, "temperature": 0.9, "seed": 8},
    {"max_tokens": 24, "temperature": 0.0},
]


def test_a_non_streaming_request_wakes_its_caller_once_per_row_with_the_streamed_text(backend: Any) -> None:
    streamed_events, streamed = run_job(backend, True, SEEDED_ROWS)
    assert sum(e[0] == "delta" for e in streamed_events) > len(SEEDED_ROWS), "streaming sends text as it comes"
    events, rows = run_job(backend, False, SEEDED_ROWS)
    assert [e[0] for e in events] == ["finish"] * len(SEEDED_ROWS), "no per-token events"
    assert rows == streamed and all(text for text, _, _ in rows)


def test_stop_strings_and_max_tokens_hold_for_non_streaming_rows(backend: Any) -> None:
    _, [(full, reason, tokens)] = run_job(backend, True, [{"max_tokens": 24, "temperature": 0.0}])
    assert reason == "length" and tokens == 24
    pairs = (full[i : i + 2] for i in range(3, len(full) - 2))
    stop = next(p for p in pairs if p.isascii() and p.isprintable() and p.strip())
    for streaming in (True, False):
        events, [cut] = run_job(backend, streaming, [{"max_tokens": 24, "temperature": 0.0, "stop": [stop, "zzz"]}])
        assert cut[:2] == (full[: full.find(stop)], "stop") and cut[2] < 24, (stop, cut)
        _, [short] = run_job(backend, streaming, [{"max_tokens": 5, "temperature": 0.0}])
        assert short[1:] == ("length", 5) and full.startswith(short[0]), short
    assert [e[0] for e in events] == ["finish"]


def test_request_limits() -> None:
    assert normalize_stop(None) == [] and normalize_stop("x") == ["x"] and normalize_stop(["a", ""]) == ["a"]
    with pytest.raises(InvalidArguments):
        normalize_stop(["a", "b", "c", "d", "e"])
    assert resolve_max_tokens(None, 10, 100, 256) == 90
    assert resolve_max_tokens(5, 10, 100, 256) == 5
    with pytest.raises(InvalidArguments) as too_long:
        resolve_max_tokens(95, 10, 100, 256)
    assert too_long.value.detail[0]["field"] == "max_tokens"
    with pytest.raises(InvalidArguments):
        resolve_max_tokens(1, 100, 100, 256)
    assert row_seed(None, 3) is None and row_seed(7, 0) == 7 and row_seed(7, 1) == 8
    check_sampling(None, 0.0, 1.0, 1)
    cases = (((0, 1.0, 1.0, 1), "max_tokens"), ((5, 3.0, 1.0, 1), "temperature"), ((5, 1.0, 0.0, 1), "top_p"))
    for bad, field in cases:
        with pytest.raises(InvalidArguments) as error:
            check_sampling(*bad)
        assert error.value.detail[0]["field"] == field
    with pytest.raises(InvalidArguments):
        check_messages([])


def test_model_paths_and_hub_ids() -> None:
    assert looks_like_path("/models/x") and looks_like_path("./x") and looks_like_path("~/m")
    assert not looks_like_path("Qwen/Qwen2.5-0.5B-Instruct")
    assert split_model("light/tiny") == ("light", "tiny")
    assert split_model("light/Qwen/Qwen2.5-0.5B-Instruct") == ("light", "Qwen/Qwen2.5-0.5B-Instruct")
    assert split_model("light") == ("light", "")
    with pytest.raises(InvalidArguments):
        split_model("/tiny")


def test_adapter_names_are_model_names() -> None:
    for good in ("a", "my-adapter", "v1.2", "org:name_3", "x" * 128):
        assert ADAPTER_NAME.fullmatch(good), good
    for bad in ("", "-x", ".x", "a/b", "../x", "x" * 129, "a b", "ünï", "x\n"):
        assert not ADAPTER_NAME.fullmatch(bad), bad


def test_bad_adapter_options_stop_the_worker_before_it_loads_a_model() -> None:
    with pytest.raises(InvalidConfig, match=r"options\.adapters: 2 adapters; options\.max_adapters is 1"):
        Light(model="/no/such/model", adapters={"a": "/a", "b": "/b"}, max_adapters=1)
    for option in ({"max_batch": 0}, {"max_adapters": -1}):
        with pytest.raises(InvalidConfig, match=rf"options\.{next(iter(option))}"):
            Light(model="/no/such/model", **option)


class FakeBackend:
    """Runs batches by echoing each row's prompt ids as text; records batch sizes."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds
        self.batches: list[int] = []

    def run(self, jobs: list[Job]) -> None:
        self.batches.append(sum(len(j.rows) for j in jobs))
        time.sleep(self.seconds)
        for job in jobs:
            for row in job.rows:
                job.delta(row.index, str(row.prompt_ids))
                job.finish(row.index, "length", row.max_tokens)


def job(prompt: int, rows: int = 1, adapter: str | None = None) -> Job:
    return Job([Row(i, [prompt], 4) for i in range(rows)], adapter)


def run_concurrently(batcher: Batcher, jobs: list[Job]) -> list[list[tuple[object, ...]]]:
    out: list[list[tuple[object, ...]]] = [[] for _ in jobs]

    def go(i: int) -> None:
        out[i] = list(batcher.submit(jobs[i]).stream(timeout_s=10))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_concurrent_jobs_share_batches_up_to_max_rows() -> None:
    fake = FakeBackend()
    batcher = Batcher(fake.run, max_rows=4, window_s=0.05)
    try:
        events = run_concurrently(batcher, [job(i) for i in range(9)])
    finally:
        batcher.close()
    assert all(e[0] == ("delta", 0, f"[{i}]") for i, e in enumerate(events))
    assert sum(fake.batches) == 9 and max(fake.batches) <= 4 and len(fake.batches) < 9
    assert list(batcher.sizes) == fake.batches


def test_a_lone_client_is_not_delayed_by_the_window() -> None:
    fake = FakeBackend(seconds=0)
    batcher = Batcher(fake.run, window_s=1.0)
    try:
        start = time.monotonic()
        for i in range(3):
            list(batcher.submit(job(i)).stream(timeout_s=5))
        assert time.monotonic() - start < 0.5
    finally:
        batcher.close()
    assert fake.batches == [1, 1, 1]


def test_the_clients_of_the_last_batch_share_the_next_one() -> None:
    fake = FakeBackend(seconds=0.1)
    batcher = Batcher(fake.run, window_s=0.05)  # waits up to 4 windows (0.2 s) for the last batch's clients
    try:
        first = [batcher.submit(job(0))]
        while not fake.batches:  # the first runs alone; three more arrive meanwhile and make the next batch
            time.sleep(0.001)
        first += [batcher.submit(job(i)) for i in (1, 2, 3)]
        for done in first:
            list(done.stream(timeout_s=5))
        again = []
        for i in (4, 5, 6):  # those three clients come back, 40 ms apart: one batch still
            again.append(batcher.submit(job(i)))
            time.sleep(0.04)
        for done in again:
            list(done.stream(timeout_s=5))
    finally:
        batcher.close()
    assert fake.batches == [1, 3, 3]


def test_a_non_streaming_job_sends_each_row_once_with_its_text() -> None:
    quiet = Job([Row(0, [1], 4), Row(1, [2], 4)], streaming=False)
    for text in ("He", "llo", "", "!"):
        quiet.delta(1, text)
    quiet.delta(0, "x")
    quiet.finish(1, "stop", 3)
    quiet.finish(0, "length", 4)
    assert list(quiet.stream(timeout_s=1)) == [("finish", 1, "stop", 3, "Hello!"), ("finish", 0, "length", 4, "x")]
    loud = Job([Row(0, [1], 4)])
    loud.delta(0, "He")
    loud.finish(0, "stop", 1)
    assert list(loud.stream(timeout_s=1)) == [("delta", 0, "He"), ("finish", 0, "stop", 1, "")]


def test_jobs_for_different_adapters_never_share_a_batch() -> None:
    seen: list[set[str | None]] = []

    def run(jobs: list[Job]) -> None:
        seen.append({j.adapter for j in jobs})
        FakeBackend(0.02).run(jobs)

    batcher = Batcher(run, window_s=0.05)
    try:
        run_concurrently(batcher, [job(i, adapter="a" if i % 2 else None) for i in range(6)])
    finally:
        batcher.close()
    assert all(len(adapters) == 1 for adapters in seen)


def test_a_failing_batch_fails_its_jobs_and_the_batcher_survives() -> None:
    calls = []

    def run(jobs: list[Job]) -> None:
        calls.append(len(jobs))
        if len(calls) == 1:
            raise RuntimeError("boom")
        FakeBackend(0).run(jobs)

    batcher = Batcher(run)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            list(batcher.submit(job(1)).stream(timeout_s=5))
        assert list(batcher.submit(job(2, rows=2)).stream(timeout_s=5))[-1][0] == "finish"
    finally:
        batcher.close()


def test_vllm_parameter_mapping() -> None:
    row = Row(0, [1, 2], max_tokens=32, temperature=0.5, top_p=0.9, seed=11, stop=["\n\n"])
    assert sampling_args(row) == {
        "n": 1,
        "max_tokens": 32,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "include_stop_str_in_output": False,
        "seed": 11,
    }
    assert sampling_args(Row(0, [1], 4))["stop"] is None and "seed" not in sampling_args(Row(0, [1], 4))
    args = engine_args("Qwen/Qwen2.5-0.5B-Instruct", gpu_memory_utilization=0.45, max_model_len=4096)
    assert args["gpu_memory_utilization"] == 0.45 and args["max_model_len"] == 4096 and args["enable_lora"]
    assert "max_loras" not in engine_args("m", enable_lora=False)
    assert gpu_share(None, 0.5) == 0.45 and gpu_share(None, 2.0) == 0.9 and gpu_share(None, None) == 0.9
    assert gpu_share(0.3, 0.5) == 0.3
    with pytest.raises(ValueError):
        gpu_share(1.5, None)
    assert finish_reason("length") == "length" and finish_reason("stop") == "stop" and finish_reason(None) == "stop"


def test_orchestrator_errors_become_openai_errors() -> None:
    def body(response: JSONResponse) -> dict[str, object]:
        return dict(json.loads(bytes(response.body))["error"])

    missing = from_orchestrator_error(PoolNotFound("no pool 'x'"), "x/tiny")
    assert missing.status_code == 404 and body(missing)["code"] == "model_not_found"
    assert from_orchestrator_error(OpNotFound("no op")).status_code == 404
    unknown = InvalidArguments("model 'a' is not served", detail=[{"field": "model", "code": "model_not_found"}])
    assert body(from_orchestrator_error(unknown)) == {
        "message": "model 'a' is not served",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    bad = from_orchestrator_error(InvalidArguments("too long", detail=[{"field": "max_tokens"}]))
    assert bad.status_code == 422 and body(bad)["param"] == "max_tokens"
    slow = from_orchestrator_error(Timeout("late"))
    assert slow.status_code == 504 and body(slow)["type"] == "server_error"
    assert openai_error(429, "busy").headers["retry-after"] == "1"


def test_response_format_shapes_and_string_caps() -> None:
    pytest.importorskip("llguidance", reason="structured outputs need llguidance: pip install -e '.[light]'")
    from workers.light.structured import cap_strings, parse_response_format

    assert parse_response_format(None) is None and parse_response_format({"type": "text"}) is None
    assert parse_response_format({"type": "json_object"}) == {"type": "object"}
    bounded = parse_response_format({"type": "json_object"}, max_string=10)  # JSON mode on a capped model
    assert bounded is not None and bounded["maxProperties"] == 4 and bounded["additionalProperties"] is False
    (value,) = bounded["patternProperties"].values()
    assert {"type": "string", "maxLength": 10} in value["anyOf"]
    schema = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string", "enum": ["x"]}}}
    spec = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    assert parse_response_format(spec) == schema  # no cap: the schema as given
    capped = parse_response_format(spec, max_string=10)
    assert capped is not None and capped["properties"]["a"] == {"type": "string", "maxLength": 10}
    assert capped["properties"]["b"] == {"type": "string", "enum": ["x"]}  # enums, patterns, lengths kept
    nested = {"type": "array", "items": {"type": ["string", "null"], "maxLength": 3}, "anyOf": [{"type": "string"}]}
    assert cap_strings(nested, 5) == {
        "type": "array",
        "items": {"type": ["string", "null"], "maxLength": 3},
        "anyOf": [{"type": "string", "maxLength": 5}],
    }
    for bad, field in (
        ({"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}}, "response_format.json_schema.schema"),
        ({"type": "json_schema", "json_schema": {"schema": {"pattern": "(("}}}, "response_format.json_schema.schema"),
        ({"type": "json_schema", "json_schema": "x"}, "response_format.json_schema"),
        ({"type": "yaml"}, "response_format.type"),
        (["json_object"], "response_format"),
    ):
        with pytest.raises(InvalidArguments) as refused:
            parse_response_format(bad)
        assert refused.value.detail[0]["field"] == field, refused.value
    with pytest.raises(InvalidConfig, match="json_max_string"):
        Light(model="/nonexistent", json_max_string=0)

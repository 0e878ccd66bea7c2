"""The light pool on a real local Ray with the tiny local model: generation, batching, streaming, LoRA,
the OpenAI-compatible routes through a real gateway, and the official ``openai`` and ``dspy`` clients."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import orchestrator
from orchestrator import errors
from orchestrator.errors import InvalidConfig
from tests.conftest import GatewayProcess, Start

pytest.importorskip("torch", reason="the light pool needs torch: pip install -e '.[light]' (CPU: torch==2.13.0)")
pytest.importorskip("transformers", reason="the light pool needs transformers: pip install -e '.[light]'")

HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from workers.light import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def light_pool(model: str, **options: Any) -> dict[str, Any]:
    """A one-actor light pool in the test venv (named so it takes no envs/light runtime_env)."""
    return {
        "worker": "workers.light:Light",
        "size": 1,
        "resources": {"num_cpus": 1},
        "limits": {"concurrency": 8, "call_timeout_s": 120},
        "health": {"period_s": 2.0, "timeout_s": 60.0},
        "options": {"model": model, "name": "tiny", "threads": 1, "batch_window_ms": 20, **options},
    }


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture(scope="module")
def orch(start_orchestrator: Start, tiny: Path, adapter_dir: Path) -> orchestrator.Orchestrator:
    pool = light_pool(str(tiny), adapter_dir=str(adapter_dir), max_adapters=2, json_max_string=24)
    return start_orchestrator({"llm": pool})


@pytest.fixture(scope="module")
def lora(tiny: Path, adapter_dir: Path) -> Path:
    """Two different LoRA adapters for the tiny model, ``one`` (rank 4) and ``two`` (rank 8), under adapter_dir."""
    pytest.importorskip("peft", reason="LoRA needs peft: pip install -e '.[light]'")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    for seed, (name, rank) in enumerate((("one", 4), ("two", 8))):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(tiny)
        config = LoraConfig(
            r=rank, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False
        )
        get_peft_model(base, config).save_pretrained(adapter_dir / name)
    return adapter_dir


@pytest.fixture(scope="module")
def gateway(orch: orchestrator.Orchestrator) -> Iterator[GatewayProcess]:
    server = GatewayProcess(orch.namespace)
    yield server
    server.stop()


@pytest.fixture()
def http(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=120) as client:
        yield client


def text_of(result: dict[str, Any], index: int = 0) -> str:
    return str(result["choices"][index]["text"])


def test_seeded_sampling_is_deterministic(orch: orchestrator.Orchestrator) -> None:
    args = {"messages": HELLO, "max_tokens": 12, "temperature": 0.9, "seed": 7}
    first, again = orch.call("llm", "chat", **args), orch.call("llm", "chat", **args)
    assert text_of(first) == text_of(again) and first["usage"] == again["usage"]
    other = orch.call("llm", "chat", **{**args, "seed": 8})
    assert text_of(other) != text_of(first)
    two = orch.call("llm", "chat", **{**args, "n": 2})  # choice 0 of n uses the request's seed
    assert text_of(two, 0) == text_of(first) and len(two["choices"]) == 2


def test_max_tokens_is_honoured(orch: orchestrator.Orchestrator) -> None:
    hit_length = 0
    for max_tokens in (1, 5, 12):
        result = orch.call("llm", "generate", prompt="Numbers: 1 2 3", max_tokens=max_tokens, temperature=0)
        used = result["usage"]["completion_tokens"]
        assert used <= max_tokens
        if result["choices"][0]["finish_reason"] == "length":
            hit_length += 1
            assert used == max_tokens
        assert result["usage"]["total_tokens"] == result["usage"]["prompt_tokens"] + used
    assert hit_length >= 2


def test_stop_sequence_ends_the_text_before_it(orch: orchestrator.Orchestrator) -> None:
    full = text_of(orch.call("llm", "chat", messages=HELLO, max_tokens=24, temperature=0))
    pairs = (full[i : i + 2] for i in range(3, len(full) - 2))
    stop = next(p for p in pairs if p.isascii() and p.isprintable() and p.strip())
    cut = orch.call("llm", "chat", messages=HELLO, max_tokens=24, temperature=0, stop=[stop, "never-seen"])
    assert text_of(cut) == full[: full.find(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"
    streamed = "".join(
        e["text"] for e in orch.stream("llm", "chat_stream", messages=HELLO, max_tokens=24, temperature=0, stop=stop)
    )
    assert streamed == text_of(cut)


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 0.8, "seed": 3, "n": 2}])
def test_streaming_yields_the_same_text_as_non_streaming(
    orch: orchestrator.Orchestrator, sampling: dict[str, Any]
) -> None:
    args = {"messages": HELLO, "max_tokens": 16, **sampling}
    whole = orch.call("llm", "chat", **args)
    stream = orch.stream("llm", "chat_stream", **args)
    events = list(stream)
    for index, choice in enumerate(whole["choices"]):
        deltas = [e for e in events if e["index"] == index]
        assert len([e for e in deltas if e["text"]]) > 1, "tokens should arrive one by one"
        assert "".join(e["text"] for e in deltas) == choice["text"]
        assert deltas[-1]["finish_reason"] == choice["finish_reason"]
    assert stream.result["choices"] == whole["choices"] and stream.result["usage"] == whole["usage"]


def test_concurrent_requests_share_one_generate_call(orch: orchestrator.Orchestrator) -> None:
    results: list[Any] = [None] * 6

    def ask(i: int) -> None:
        results[i] = orch.call("llm", "generate", prompt=f"Question {i}:", max_tokens=8, temperature=0)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sizes = [r["batch_size"] for r in results]
    assert max(sizes) > 1, f"no batching: {sizes}"
    assert max(orch.call("llm", "stats")["batch_sizes"]) > 1
    # A batched request answers as it would alone (left padding keeps rows independent).
    alone = orch.call("llm", "generate", prompt="Question 5:", max_tokens=8, temperature=0)
    assert text_of(alone) == text_of(results[5])


def test_tokenize_counts_tokens(orch: orchestrator.Orchestrator) -> None:
    assert orch.call("llm", "tokenize", text="hello world")["count"] > 0
    prompt_tokens = orch.call("llm", "chat", messages=HELLO, max_tokens=1)["usage"]["prompt_tokens"]
    assert orch.call("llm", "tokenize", messages=HELLO)["count"] == prompt_tokens


def test_openai_client_sync_and_streaming(orch: orchestrator.Orchestrator, gateway: GatewayProcess) -> None:
    openai = pytest.importorskip("openai", reason="the openai client is a test extra: pip install openai")
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    assert "llm/tiny" in [m.id for m in client.models.list()]
    expected = text_of(orch.call("llm", "chat", messages=HELLO, max_tokens=10, temperature=0))

    reply = client.chat.completions.create(model="llm/tiny", messages=HELLO, max_tokens=10, temperature=0)
    assert reply.choices[0].message.content == expected and reply.choices[0].message.role == "assistant"
    assert reply.usage is not None and reply.usage.completion_tokens <= 10 and reply.model == "llm/tiny"

    chunks = list(
        client.chat.completions.create(
            model="llm/tiny",
            messages=HELLO,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == reply.usage.total_tokens

    text = client.completions.create(model="llm/tiny", prompt="Once upon", max_tokens=6, temperature=0)
    streamed = client.completions.create(model="llm/tiny", prompt="Once upon", max_tokens=6, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == text.choices[0].text
    assert text.usage is not None and text.usage.completion_tokens <= 6


def test_streamed_choices_each_open_with_their_role(orch: orchestrator.Orchestrator, gateway: GatewayProcess) -> None:
    # n > 1 streamed as OpenAI does: every choice's first delta carries role "assistant" (clients that build a
    # message per index from the deltas need it), then its text, then its finish_reason.
    openai = pytest.importorskip("openai", reason="the openai client is a test extra: pip install openai")
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    args = {"model": "llm/tiny", "messages": HELLO, "max_tokens": 8, "temperature": 0.8, "seed": 5, "n": 3}
    whole = client.chat.completions.create(**args)
    chunks = [c for c in client.chat.completions.create(**args, stream=True) if c.choices]
    for index in range(3):
        deltas = [c.choices[0] for c in chunks if c.choices[0].index == index]
        assert deltas[0].delta.role == "assistant", f"choice {index} opened without its role"
        assert "".join(d.delta.content or "" for d in deltas) == whole.choices[index].message.content
        assert deltas[-1].finish_reason in ("stop", "length")


ANSWER = {
    "type": "object",
    "properties": {"reasoning": {"type": "string"}, "answer": {"type": "string"}, "score": {"type": "integer"}},
    "required": ["reasoning", "answer", "score"],
    "additionalProperties": False,
}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER, "strict": True}}


def assert_answer(text: str) -> None:
    """``text`` is JSON following ANSWER: exactly its keys, with their types, strings within the pool's cap."""
    data = json.loads(text)
    assert set(data) == {"reasoning", "answer", "score"}, text
    assert isinstance(data["reasoning"], str) and isinstance(data["answer"], str), text
    assert isinstance(data["score"], int) and len(data["answer"]) <= 24, text


def test_structured_outputs_through_the_openai_client(gateway: GatewayProcess) -> None:
    openai = pytest.importorskip("openai", reason="the openai client is a test extra: pip install openai")
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    ask = {"model": "llm/tiny", "messages": HELLO, "max_tokens": 200}

    free = client.chat.completions.create(**ask, n=4, seed=1)  # the random model on its own writes no JSON
    assert not any(_is_json(c.message.content or "") for c in free.choices)

    reply = client.chat.completions.create(**ask, n=4, seed=1, response_format=SCHEMA_FORMAT)
    for choice in reply.choices:
        assert choice.finish_reason == "stop"
        assert_answer(choice.message.content or "")
    greedy = client.chat.completions.create(**ask, temperature=0, response_format=SCHEMA_FORMAT)
    assert_answer(greedy.choices[0].message.content or "")

    chunks = client.chat.completions.create(**ask, temperature=0, response_format=SCHEMA_FORMAT, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == greedy.choices[0].message.content

    # JSON mode on the random tiny model is bounded like its schemas, so every reply closes as an object.
    mode = client.chat.completions.create(**ask, n=4, seed=3, response_format={"type": "json_object"})
    for choice in mode.choices:
        assert choice.finish_reason == "stop", choice.message.content
        data = json.loads(choice.message.content or "")
        assert isinstance(data, dict) and len(data) <= 4, data

    text = client.completions.create(
        model="llm/tiny", prompt="Answer:", max_tokens=200, seed=2, extra_body={"response_format": SCHEMA_FORMAT}
    )
    assert_answer(text.choices[0].text)


def test_structured_outputs_in_process_and_bad_schemas(orch: orchestrator.Orchestrator, http: httpx.Client) -> None:
    reply = orch.call("llm", "chat", messages=HELLO, max_tokens=200, n=2, response_format=SCHEMA_FORMAT)
    for choice in reply["choices"]:
        assert_answer(choice["text"])
    mode = orch.call("llm", "generate", prompt="{", max_tokens=200, seed=4, response_format={"type": "json_object"})
    assert mode["choices"][0]["finish_reason"] == "stop" and isinstance(json.loads(mode["choices"][0]["text"]), dict)

    chat = {"model": "llm/tiny", "messages": HELLO, "max_tokens": 8}
    for bad, param in (
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strnig"}}}, "schema"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}}, "schema"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}, "schema"),
        ({"type": "json_schema"}, "json_schema"),
        ({"type": "xml"}, "type"),
        ("json", "response_format"),
    ):
        body = openai_error(
            http.post("/v1/chat/completions", json={**chat, "response_format": bad}), 422, "invalid_arguments"
        )
        assert body["param"].startswith("response_format") and body["param"].endswith(param), body
    with pytest.raises(errors.InvalidArguments, match=r"response_format\.json_schema\.schema"):
        orch.call(
            "llm",
            "chat",
            messages=HELLO,
            response_format={"type": "json_schema", "json_schema": {"schema": {"type": 1}}},
        )


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def test_dspy_lm_calls_through_the_gateway(gateway: GatewayProcess) -> None:
    dspy = pytest.importorskip("dspy", reason="dspy>=3 is a test extra: pip install 'dspy>=3'")
    lm = dspy.LM(
        "openai/llm/tiny", api_base=f"{gateway.url}/v1", api_key="unused", max_tokens=12, temperature=0, cache=False
    )
    outputs = lm("Say hello.")
    assert isinstance(outputs, list) and len(outputs) == 1 and isinstance(outputs[0], str)
    assert lm(messages=HELLO) == outputs  # the same chat prompt, greedy


def test_lora_adapter_is_served_by_name_and_unloaded(
    orch: orchestrator.Orchestrator, http: httpx.Client, lora: Path
) -> None:
    body = {"messages": HELLO, "max_tokens": 12, "temperature": 0}
    base_text = http.post("/v1/chat/completions", json={**body, "model": "llm/tiny"}).json()
    models = orch.call("llm", "load_adapter", name="my-adapter", path="one")  # relative to options.adapter_dir
    assert {m["id"] for m in models} == {"tiny", "my-adapter"}
    assert "llm/my-adapter" in [m["id"] for m in http.get("/v1/models").json()["data"]]

    tuned = http.post("/v1/chat/completions", json={**body, "model": "llm/my-adapter"}).json()
    assert tuned["model"] == "llm/my-adapter"
    assert tuned["choices"][0]["message"]["content"] != base_text["choices"][0]["message"]["content"]
    again = http.post("/v1/chat/completions", json={**body, "model": "llm/tiny"}).json()
    assert again["choices"] == base_text["choices"], "the base model must answer as before"

    orch.call("llm", "unload_adapter", name="my-adapter")
    gone = http.post("/v1/chat/completions", json={**body, "model": "llm/my-adapter"})
    openai_error(gone, 404, "model_not_found")
    after = http.post("/v1/chat/completions", json={**body, "model": "llm/tiny"}).json()
    assert after["choices"] == base_text["choices"]


def model_ids(orch: orchestrator.Orchestrator) -> list[str]:
    return [m["id"] for m in orch.call("llm", "models")]


def test_load_adapter_refuses_paths_outside_adapter_dir_and_bad_names(
    orch: orchestrator.Orchestrator, lora: Path, tmp_path: Path
) -> None:
    import shutil

    outside = tmp_path / "outside"
    shutil.copytree(lora / "one", outside)  # a real adapter, but not under options.adapter_dir
    (lora / "escape").symlink_to(outside)
    (lora / ".hidden").mkdir(exist_ok=True)
    before = model_ids(orch)
    paths = [str(outside), "../outside", "one/../../outside", "escape", ".hidden", "~/x", "missing", ""]
    for path in paths:
        with pytest.raises(errors.InvalidArguments) as exc:
            orch.call("llm", "load_adapter", name="sneaky", path=path)
        assert exc.value.detail[0]["field"] == "path", (path, exc.value)
    for name in ["", "-x", "a/b", "../x", "x" * 129, "tiny", "white space", "ünï"]:
        with pytest.raises(errors.InvalidArguments) as exc:
            orch.call("llm", "load_adapter", name=name, path="one")
        assert exc.value.detail[0]["field"] == "name", (name, exc.value)
    assert model_ids(orch) == before == ["tiny"]  # nothing loaded
    assert orch.call("llm", "generate", prompt="still", max_tokens=2)["model"] == "llm/tiny"


def test_max_adapters_caps_an_actor_and_reloading_a_name_replaces_it(
    orch: orchestrator.Orchestrator, lora: Path
) -> None:
    args = {"prompt": "Once upon", "max_tokens": 8, "temperature": 0}
    try:
        orch.call("llm", "load_adapter", name="first", path="one")
        orch.call("llm", "load_adapter", name="second", path="two")
        with pytest.raises(errors.InvalidArguments) as exc:
            orch.call("llm", "load_adapter", name="third", path="one")
        assert exc.value.detail[0]["field"] == "name" and "(options.max_adapters)" in exc.value.message
        assert model_ids(orch) == ["tiny", "first", "second"]
        first, second = (text_of(orch.call("llm", "generate", model=m, **args)) for m in ("llm/first", "llm/second"))
        assert first != second
        assert model_ids(orch) == ["tiny", "first", "second"]
        orch.call("llm", "load_adapter", name="first", path="two")  # at the cap, an existing name is replaced
        assert sorted(model_ids(orch)) == ["first", "second", "tiny"]
        assert text_of(orch.call("llm", "generate", model="llm/first", **args)) == second
    finally:
        for name in set(model_ids(orch)) - {"tiny"}:
            orch.call("llm", "unload_adapter", name=name)


def test_one_request_may_not_exceed_max_batch(orch: orchestrator.Orchestrator, http: httpx.Client) -> None:
    batches = orch.call("llm", "stats")["batch_sizes"]
    cases = [
        ("generate", {"prompt": ["p"] * 3, "n": 3}, "n"),  # 9 rows > max_batch 8
        ("generate", {"prompt": ["p"] * 9}, "prompt"),
        ("generate", {"prompt": ["p"] * 9, "n": 2}, "prompt"),
        ("chat", {"messages": HELLO, "n": 9}, "n"),
        ("generate_stream", {"prompt": ["p"] * 2, "n": 5}, "n"),
    ]
    for op, args, field in cases:
        with pytest.raises(errors.InvalidArguments) as exc:
            if op.endswith("_stream"):
                list(orch.stream("llm", op, max_tokens=4, **args))
            else:
                orch.call("llm", op, max_tokens=4, **args)
        assert exc.value.detail[0]["field"] == field and "(options.max_batch)" in exc.value.message, (op, args)
    over = http.post("/v1/chat/completions", json={"model": "llm/tiny", "messages": HELLO, "max_tokens": 4, "n": 9})
    openai_error(over, 422, "invalid_arguments", "n")
    assert orch.call("llm", "stats")["batch_sizes"] == batches  # nothing was generated
    full = orch.call("llm", "generate", prompt=["p"] * 4, n=2, max_tokens=2)  # exactly max_batch rows: served
    assert len(full["choices"]) == 8 and full["batch_size"] <= 8


def openai_error(response: httpx.Response, status: int, code: str, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}, body
    assert body["code"] == code and body["message"], body
    if param is not None:
        assert body["param"] == param, body
    return dict(body)


def test_bad_requests_get_openai_errors(http: httpx.Client) -> None:
    chat = {"model": "llm/tiny", "messages": HELLO, "max_tokens": 4}
    openai_error(http.post("/v1/chat/completions", json={**chat, "model": "llm/nope"}), 404, "model_not_found", "model")
    openai_error(http.post("/v1/chat/completions", json={**chat, "model": "nope/tiny"}), 404, "model_not_found")
    openai_error(http.post("/v1/completions", json={"model": "nope", "prompt": "x"}), 404, "model_not_found")
    openai_error(http.get("/v1/models/llm/nope"), 404, "model_not_found")
    over = openai_error(
        http.post("/v1/chat/completions", json={**chat, "max_tokens": 100_000}), 422, "invalid_arguments"
    )
    assert over["param"] == "max_tokens" and "context" in over["message"]
    openai_error(
        http.post("/v1/chat/completions", json={**chat, "max_tokens": -1}), 422, "invalid_arguments", "max_tokens"
    )
    openai_error(http.post("/v1/chat/completions", json={**chat, "messages": []}), 422, "invalid_arguments", "messages")
    streamed = {**chat, "messages": [], "stream": True}
    openai_error(http.post("/v1/chat/completions", json=streamed), 422, "invalid_arguments", "messages")
    openai_error(http.post("/v1/chat/completions", json={"messages": HELLO}), 422, "invalid_arguments", "model")
    json_type = {"content-type": "application/json"}
    openai_error(http.post("/v1/chat/completions", content=b"{", headers=json_type), 422, "invalid_arguments")
    plain = http.post("/v1/chat/completions", content=b"{}", headers={"content-type": "text/plain"})
    openai_error(plain, 415, "unsupported_media_type")
    assert http.get("/v1/models/llm/tiny").json()["id"] == "llm/tiny"


def test_stream_ends_with_done(http: httpx.Client) -> None:
    body = {"model": "llm/tiny", "messages": HELLO, "max_tokens": 5, "temperature": 0, "stream": True}
    response = http.post("/v1/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in response.text.splitlines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1


def test_missing_model_path_stops_pool_start(start_orchestrator: Start) -> None:
    with pytest.raises(InvalidConfig) as failed:
        start_orchestrator({"broken": light_pool("/no/such/models/llama-7b")})
    assert "/no/such/models/llama-7b" in str(failed.value) and "broken" in str(failed.value)


def test_no_model_configured_serves_the_tiny_model(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from orchestrator import Context
    from orchestrator.models.tiny import main
    from workers.light import Light
    from workers.light.params import Message

    assert main(["--out", str(tiny)]) == 0 and capsys.readouterr().out.strip() == str(tiny)  # already built: reused
    worker = Light(tiny_dir=str(tmp_path / "cache"), threads=1)  # what pools.yaml gets with options.model empty
    try:
        assert worker.models()[0]["id"] == "tiny" and (tmp_path / "cache" / "config.json").is_file()
        reply = worker.chat(Context(pool="light", op="chat"), [Message(role="user", content="hi")], max_tokens=3)
        assert reply["model"] == "light/tiny" and reply["usage"]["completion_tokens"] <= 3
    finally:
        worker.close()


def test_worker_class_on_cuda_respects_its_memory_share(tiny: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine (torch.cuda.is_available() is False)")
    from orchestrator import Context
    from workers.light import Light
    from workers.light.params import Message

    worker = Light(model=str(tiny), device="cuda", gpu_memory_utilization=0.25)
    try:
        result = worker.chat(Context(pool="gpu", op="chat"), [Message(role="user", content="hi")], max_tokens=8)
        assert result["usage"]["completion_tokens"] >= 1
        assert torch.cuda.memory_reserved() <= 0.25 * torch.cuda.get_device_properties(0).total_memory
        with pytest.raises(torch.cuda.OutOfMemoryError):  # the cap holds: a tensor past the share fails
            torch.empty(int(0.3 * torch.cuda.get_device_properties(0).total_memory), dtype=torch.uint8, device="cuda")
    finally:
        worker.close()


def test_vllm_backend_serves_the_tiny_model(tiny: Path) -> None:
    pytest.importorskip("vllm", reason="vLLM is not installed (it needs a CUDA host: envs/light-gpu/requirements.txt)")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA GPU; none here")
    from orchestrator import Context
    from workers.light import Light
    from workers.light.params import Message

    worker = Light(model=str(tiny), backend="vllm", gpu_memory_utilization=0.2)
    try:
        args = {"max_tokens": 8, "temperature": 0.7, "seed": 1}
        first = worker.chat(Context(pool="gpu", op="chat"), [Message(role="user", content="hi")], **args)
        again = worker.chat(Context(pool="gpu", op="chat"), [Message(role="user", content="hi")], **args)
        assert first["choices"] == again["choices"]
    finally:
        worker.close()

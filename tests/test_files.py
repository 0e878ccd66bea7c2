"""OpenAI's Files API on a real gateway (the official ``openai`` client), backed by the coordinator's store.

Uploads go through a live uvicorn gateway with a token to the coordinator,
which checks them (purpose, size, fine-tuning JSONL line by line) and keeps
them in SQLite plus ``state_dir/files``; the in-process handle reads what
the gateway stored, as a fine-tuning op would. Every refused upload is
checked to have stored nothing, and a file outlives the coordinator's death.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import orchestrator
from orchestrator import errors
from orchestrator.control.files import check_training_jsonl
from orchestrator.control.store import Store
from orchestrator.gateway.guard import UPLOAD_ENVELOPE
from tests.conftest import GatewayProcess, Start, coordinator_pid, kill_pid, toolbox

openai = pytest.importorskip("openai", reason="the openai client is a test extra: pip install openai")

TOKEN = "files-token-0123456789"
MAX_BYTES = 4096  # files.max_bytes of this module's orchestrator and gateway
CHAT = [
    {
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ]
    },
    {"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}]},
]
PROMPTS = [{"prompt": "2+2=", "completion": "4"}, {"prompt": "3+3=", "completion": "6"}]


def jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("files-state")


@pytest.fixture(scope="module")
def orch(start_orchestrator: Start, state_dir: Path) -> orchestrator.Orchestrator:
    return start_orchestrator({"tb": toolbox(size=1)}, state_dir=str(state_dir), files={"max_bytes": MAX_BYTES})


@pytest.fixture(scope="module")
def gateway(orch: orchestrator.Orchestrator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = tmp_path_factory.mktemp("files-gateway") / "pools.yaml"
    config.write_text(f"files: {{max_bytes: {MAX_BYTES}}}\n")  # the gateway sizes its upload limit from it
    server = GatewayProcess(orch.namespace, token=TOKEN, extra=["--config", str(config)])
    yield server
    server.stop()


@pytest.fixture()
def client(gateway: GatewayProcess) -> Iterator[Any]:
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=TOKEN, max_retries=0) as client:
        yield client


@pytest.fixture()
def http(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=30, headers={"authorization": f"Bearer {TOKEN}"}) as http:
        yield http


def stored(state_dir: Path) -> list[str]:
    """The files on disk under state_dir/files (what a refused upload must not add to)."""
    folder = state_dir / "files"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------- through the gateway
def test_fine_tune_files_round_trip_through_the_openai_client(client: Any, tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(jsonl(CHAT))
    with path.open("rb") as handle:
        chat = client.files.create(file=handle, purpose="fine-tune")
    assert chat.id.startswith("file-") and len(chat.id) == len("file-") + 24
    assert (chat.object, chat.bytes, chat.filename, chat.purpose, chat.status) == (
        "file",
        len(jsonl(CHAT)),
        "train.jsonl",
        "fine-tune",
        "processed",
    )
    prompts = client.files.create(file=("prompts.jsonl", jsonl(PROMPTS)), purpose="fine-tune")
    other = client.files.create(file=("notes.txt", b"not JSONL at all"), purpose="user_data")

    listed = [f.id for f in client.files.list()]
    assert {chat.id, prompts.id, other.id} <= set(listed)
    assert listed.index(other.id) < listed.index(chat.id), "newest first"
    assert {f.id for f in client.files.list(purpose="fine-tune")} >= {chat.id, prompts.id}
    assert other.id not in {f.id for f in client.files.list(purpose="fine-tune")}
    assert client.files.retrieve(prompts.id).model_dump() == prompts.model_dump()
    assert client.files.content(chat.id).content == jsonl(CHAT)
    assert client.files.content(other.id).content == b"not JSONL at all"

    deleted = client.files.delete(prompts.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (prompts.id, "file", True)
    assert prompts.id not in {f.id for f in client.files.list()}
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(prompts.id)


def test_the_handle_reads_what_the_gateway_stored(client: Any, orch: orchestrator.Orchestrator) -> None:
    uploaded = client.files.create(file=("train.jsonl", jsonl(PROMPTS)), purpose="fine-tune")
    assert orch.file(uploaded.id) == uploaded.model_dump(exclude_none=True)
    assert orch.file_content(uploaded.id) == jsonl(PROMPTS)
    mine = orch.upload_file(jsonl(CHAT), "chat.jsonl", "fine-tune")
    assert client.files.retrieve(mine["id"]).filename == "chat.jsonl"
    assert mine in orch.files(purpose="fine-tune") and mine not in orch.files(purpose="batch")
    assert orch.delete_file(mine["id"]) == {"id": mine["id"], "object": "file", "deleted": True}
    for read in (orch.file, orch.file_content, orch.delete_file):
        with pytest.raises(errors.FileNotFound):
            read(mine["id"])
    with pytest.raises(errors.InvalidArguments, match="file.line 1"):
        orch.upload_file(b'{"prompt": 1}\n', "bad.jsonl", "fine-tune")


BAD_LINE_3 = jsonl(CHAT) + b'{"messages": [{"role": "user", "content": "unterminated"\n'
ONLY_USER = {"messages": [{"role": "user", "content": "x"}]}
# what -> (content, purpose, status, param, a phrase of the message)
BAD_UPLOADS: dict[str, tuple[bytes, str, int, str, str]] = {
    "unknown purpose": (jsonl(PROMPTS), "fine_tune", 422, "purpose", "fine-tune"),
    "malformed JSON on line 3": (BAD_LINE_3, "fine-tune", 422, "file.line 3", "not valid JSON"),
    "JSON but neither format": (jsonl([PROMPTS[0], {"text": "hi"}]), "fine-tune", 422, "file.line 2", "messages"),
    "a row that is a list": (jsonl([["x"]]), "fine-tune", 422, "file.line 1", "JSON object"),
    "an unknown role": (jsonl([{"messages": [{"role": "bot"}]}]), "fine-tune", 422, "file.line 1", "].role"),
    "no assistant turn": (jsonl([ONLY_USER]), "fine-tune", 422, "file.line 1", "assistant"),
    "a number as completion": (jsonl([{"prompt": "x", "completion": 3}]), "fine-tune", 422, "file.line 1", "strings"),
    "not UTF-8 on line 2": (jsonl(PROMPTS[:1]) + b'"\xff"\n', "fine-tune", 422, "file.line 2", "UTF-8"),
    "only blank lines": (b"\n  \n", "fine-tune", 422, "file", "no training examples"),
    "an empty file": (b"", "batch", 422, "file", "empty"),
    "one byte over files.max_bytes": (b"x" * (MAX_BYTES + 1), "batch", 413, "file", str(MAX_BYTES)),
    "past the gateway's limit": (b"x" * (MAX_BYTES + 2 * UPLOAD_ENVELOPE), "batch", 413, "file", "the form may add"),
}


def test_bad_uploads_are_refused_naming_the_problem_and_store_nothing(client: Any, state_dir: Path) -> None:
    before, on_disk = [f.id for f in client.files.list()], stored(state_dir)
    for what, (content, purpose, status, param, needle) in BAD_UPLOADS.items():
        with pytest.raises(openai.APIStatusError) as refused:
            client.files.create(file=("a.jsonl", content), purpose=purpose)
        error = refused.value.body
        assert refused.value.status_code == status, (what, error)
        assert error["param"] == param and needle in error["message"], (what, error)
        if param.startswith("file.line"):
            assert error["message"].startswith(param), (what, error)
    assert [f.id for f in client.files.list()] == before
    assert stored(state_dir) == on_disk


def test_malformed_forms_are_4xx_naming_the_field(http: httpx.Client) -> None:
    no_purpose = http.post("/v1/files", files={"file": ("a.jsonl", jsonl(PROMPTS))})
    assert no_purpose.status_code == 422 and no_purpose.json()["error"]["param"] == "purpose", no_purpose.text
    no_file = http.post("/v1/files", data={"purpose": "batch"}, files={"other": ("a", b"x")})
    assert no_file.status_code == 422 and no_file.json()["error"]["param"] == "file", no_file.text
    broken = http.post("/v1/files", content=b"garbage", headers={"content-type": "multipart/form-data"})
    assert broken.status_code == 400 and broken.json()["error"]["param"] == "file", broken.text
    bad_filter = http.get("/v1/files", params={"purpose": "nope"})
    assert bad_filter.status_code == 422 and bad_filter.json()["error"]["param"] == "purpose", bad_filter.text


def test_a_chunked_upload_is_read_up_to_the_limit(http: httpx.Client) -> None:
    def chunked(content: bytes) -> httpx.Response:  # no Content-Length: the guard reads the body against the limit
        form = httpx.Request("POST", "/", files={"file": ("a.jsonl", content)}, data={"purpose": "fine-tune"})
        body = form.read()
        return http.post(
            "/v1/files", content=iter([body[:100], body[100:]]), headers={"content-type": form.headers["content-type"]}
        )

    fits = chunked(jsonl(PROMPTS))
    assert fits.status_code == 200 and http.get(f"/v1/files/{fits.json()['id']}/content").content == jsonl(PROMPTS)
    over = chunked(b"x" * (MAX_BYTES + 2 * UPLOAD_ENVELOPE))
    assert over.status_code == 413 and "the form may add" in over.json()["error"]["message"], over.text


def test_unknown_ids_are_404(client: Any, http: httpx.Client) -> None:
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError) as missing:
            call("file-000000000000000000000000")
        assert missing.value.body["code"] == "file_not_found"
    assert http.get("/v1/files/nope/content").status_code == 404


def test_only_the_upload_route_takes_a_form_and_only_with_the_token(
    gateway: GatewayProcess, http: httpx.Client
) -> None:
    files, data = {"file": ("a.jsonl", jsonl(PROMPTS))}, {"purpose": "fine-tune"}
    for path in ("/v1/jobs", "/v1/embeddings", "/v1/pools/tb/ops/echo", "/v1/files/file-x"):
        refused = http.post(path, files=files, data=data)
        assert refused.status_code == 415 and "multipart/form-data" in refused.text, (path, refused.text)
    for headers in ({}, {"authorization": "Bearer wrong"}):
        anonymous = httpx.post(f"{gateway.url}/v1/files", headers=headers, files=files, data=data, timeout=30)
        assert anonymous.status_code == 401, anonymous.text
    assert http.post("/v1/files", files=files, data=data).status_code == 200


def test_a_file_survives_the_coordinators_death(client: Any, orch: orchestrator.Orchestrator, state_dir: Path) -> None:
    uploaded = client.files.create(file=("train.jsonl", jsonl(CHAT)), purpose="fine-tune")
    assert (state_dir / "files" / uploaded.id).read_bytes() == jsonl(CHAT)
    old = coordinator_pid(orch)
    kill_pid(old)
    assert client.files.retrieve(uploaded.id).id == uploaded.id  # Ray holds the call until the new one answers
    assert client.files.content(uploaded.id).content == jsonl(CHAT)
    assert coordinator_pid(orch) != old, "the coordinator was not killed"


# ---------------------------------------------------------------- the parts, without Ray
def test_the_store_keeps_files_across_a_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.put_file({"id": "file-a", "filename": "a.jsonl", "purpose": "batch", "created": 1.0}, b"one")
    store.put_file({"id": "file-b", "filename": "b.jsonl", "purpose": "fine-tune", "created": 2.0}, b"two")
    store.close()
    store = Store(tmp_path)
    assert [f["id"] for f in store.list_files()] == ["file-b", "file-a"]
    assert [f["id"] for f in store.list_files("batch")] == ["file-a"]
    assert store.get_file("file-a") == {
        "id": "file-a", "filename": "a.jsonl", "purpose": "batch", "bytes": 3, "created": 1.0, "path": "files/file-a"
    }  # fmt: skip
    assert store.read_file("file-b") == b"two" and (tmp_path / "files" / "file-b").read_bytes() == b"two"
    assert store.delete_file("file-b") and not store.delete_file("file-b")
    assert store.read_file("file-b") is None and not (tmp_path / "files" / "file-b").exists()
    assert list((tmp_path / "files").iterdir()) == [tmp_path / "files" / "file-a"]  # no temporary left behind


@pytest.mark.parametrize(
    ("content", "line", "needle"),
    [
        (jsonl(CHAT + PROMPTS), None, ""),
        (b"\xef\xbb\xbf" + jsonl(PROMPTS) + b"\r\n\n", None, ""),  # a BOM, CRLF and blank lines are fine
        (jsonl([{"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]}]}]), None, ""),
        (jsonl(PROMPTS) + b"\n\n{oops}\n", 5, "not valid JSON"),
        (jsonl([{"messages": []}]), 1, "non-empty list"),
        (jsonl([{"messages": ["hi"]}]), 1, "messages[0] must be an object"),
        (jsonl([{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}]), 1, "messages[0].content"),
        (jsonl([{"prompt": "only a prompt"}]), 1, "completion"),
        (jsonl([*PROMPTS, "text"]), 3, "got a string"),
    ],
)
def test_training_lines_are_checked_one_by_one(content: bytes, line: int | None, needle: str) -> None:
    found = check_training_jsonl(content)
    if line is None:
        assert found is None
    else:
        assert found is not None and found[0] == line and needle in found[1], found

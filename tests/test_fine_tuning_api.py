"""OpenAI's Fine-tuning API on a real gateway, run as the heavy pool's ``finetune`` job on a real local Ray.

The official ``openai`` client uploads a file, creates the job, follows it to
``succeeded`` and chats with the fine-tuned model through the light pool; bad
requests are 400 naming the field as it was sent; unknown jobs 404; a cancelled
job ends ``cancelled``. Then DSPy's own fine-tuning flow (``dspy.LM.finetune``
with ``orchestrator.dspy.provider.Provider``) runs against the same gateway: the
LM it hands back answers through the adapter on its first call, and a refused or
failed fine-tune comes back as an error naming the row or the job. Training stays a few
steps of the offline tiny model, so the module takes about a minute.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import orchestrator
from tests.conftest import GatewayProcess, Start, wait_until
from tests.kit import tuning
from tests.kit.tuning import CHATS

openai = pytest.importorskip("openai", reason="the openai client is a test extra: pip install openai")
pytest.importorskip("trl", reason="fine-tuning needs trl: pip install -e '.[heavy]'")
pytest.importorskip("peft", reason="fine-tuning needs peft: pip install -e '.[heavy]'")

FAST = {"max_steps": 8, "save_steps": 4}  # extensions, sent as extra_body
HYPER = {"n_epochs": 2, "batch_size": 2, "learning_rate_multiplier": 50}  # 50 x 2e-4 = 0.01: the adapter shows
DONE = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def orch(start_orchestrator: Start, tmp_path_factory: pytest.TempPathFactory) -> orchestrator.Orchestrator:
    from orchestrator.models.tiny import build_tiny_model

    tiny = build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")
    return start_orchestrator(tuning.pools(tiny))


@pytest.fixture(scope="module")
def gateway(orch: orchestrator.Orchestrator) -> Iterator[GatewayProcess]:
    server = GatewayProcess(orch.namespace)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> Any:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def training_file(client: Any) -> str:
    data = "".join(json.dumps(row) + "\n" for row in CHATS).encode()
    return str(client.files.create(file=("train.jsonl", data), purpose="fine-tune").id)


def finished(client: Any, job_id: str, timeout: float = 300) -> Any:
    """Poll ``retrieve`` until the job is over, as a client would."""
    return wait_until(
        lambda: (job := client.fine_tuning.jobs.retrieve(job_id)).status in DONE and job,
        timeout=timeout,
        what=f"fine-tuning job {job_id} to finish",
    )


def test_a_job_trains_on_an_uploaded_file_and_its_model_answers_chat(
    client: Any, training_file: str, gateway: GatewayProcess
) -> None:
    created = client.fine_tuning.jobs.create(
        model="llm/tiny", training_file=training_file, hyperparameters=HYPER, suffix="words", extra_body=FAST
    )
    assert created.id.startswith("ftjob-") and created.object == "fine_tuning.job"
    assert created.status in ("queued", "running") and created.fine_tuned_model is None
    assert created.model == "llm/tiny" and created.training_file == training_file
    assert created.hyperparameters.n_epochs == 2 and created.hyperparameters.batch_size == 2
    assert created.hyperparameters.learning_rate_multiplier == 50
    assert created.method.type == "supervised" and created.method.supervised.hyperparameters.n_epochs == 2
    assert isinstance(created.seed, int) and created.user_provided_suffix == "words"

    job = finished(client, created.id)
    assert job.status == "succeeded", job.error
    assert job.finished_at >= job.created_at and job.error is None
    model = job.fine_tuned_model
    pool, _, name = model.partition("/")
    assert pool == "llm" and name.startswith("ft:tiny:words:") and "/" not in name, model

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=5))  # auto-paginated by the `after` cursor
    assert [e.message for e in events[:2]] == [
        "The job has successfully completed",
        f"New fine-tuned model created: {model}",
    ]
    assert events[-1].message == f"Created fine-tuning job: {job.id}"
    assert len({e.id for e in events}) == len(events)
    steps = [e for e in events if e.type == "metrics"]
    assert [e.data["step"] for e in steps] == list(range(8, 0, -1))  # newest first
    assert all(e.data["train_loss"] > 0 and e.data["total_steps"] == 8 for e in steps)
    assert steps[-1].message.startswith("Step 1/8: training loss=")

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [8, 4]
    assert all(c.fine_tuning_job_id == job.id and c.metrics.train_loss > 0 for c in checkpoints)
    assert checkpoints[1].metrics.train_loss == next(e.data["train_loss"] for e in steps if e.data["step"] == 4)

    assert model in [m.id for m in client.models.list()]
    asked = {"messages": CHATS[0]["messages"][:1], "max_tokens": 8, "temperature": 0}
    tuned = client.chat.completions.create(model=model, **asked)
    base = client.chat.completions.create(model="llm/tiny", **asked)
    assert tuned.model == model and tuned.choices[0].message.content != base.choices[0].message.content

    assert job.id in [j.id for j in client.fine_tuning.jobs.list(limit=100)]
    with httpx.Client(base_url=gateway.url) as http:  # the same job through the orchestrator's own job routes
        record = http.get(f"/v1/jobs/{job.id.removeprefix('ftjob-')}").json()
    assert record["pool"] == "heavy" and record["op"] == "finetune" and record["result"]["model"] == model


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"training_file": "file-000000000000000000000000"}, "training_file"),
        ({"model": "llm/huge"}, "model"),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"n_epochs": "many"}}, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"learning_rate_multiplier": 0}}, "hyperparameters.learning_rate_multiplier"),
        ({"hyperparameters": {"warmup": 3}}, "hyperparameters.warmup"),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 0}}}},
            "method.supervised.hyperparameters.batch_size",
        ),
        ({"method": {"type": "dpo"}}, "method.type"),
        ({"suffix": "a/b"}, "suffix"),
        ({"extra_body": {"lora": {"r": 0}}}, "lora.r"),
        ({"extra_body": {"max_steps": 0}}, "max_steps"),
    ],
)
def test_bad_requests_are_400_naming_the_field(
    client: Any, training_file: str, orch: orchestrator.Orchestrator, change: dict[str, Any], param: str
) -> None:
    before = len(orch.jobs("heavy"))
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(**{"model": "llm/tiny", "training_file": training_file, **change})
    assert refused.value.status_code == 400 and refused.value.param == param, refused.value.body
    assert refused.value.code == "invalid_arguments" and param in refused.value.message
    assert len(orch.jobs("heavy")) == before  # nothing queued


def test_unknown_jobs_and_other_jobs_are_404(client: Any, orch: orchestrator.Orchestrator) -> None:
    other = orch.submit("llm", "models")  # a job, but not a fine-tuning job
    for job_id in ("ftjob-0123456789abcdef", f"ftjob-{other.id}", other.id):
        with pytest.raises(openai.NotFoundError) as missing:
            client.fine_tuning.jobs.retrieve(job_id)
        assert missing.value.code == "job_not_found" and job_id in missing.value.message
        with pytest.raises(openai.NotFoundError):
            client.fine_tuning.jobs.list_events(job_id)
        with pytest.raises(openai.NotFoundError):
            client.fine_tuning.jobs.cancel(job_id)
    assert f"ftjob-{other.id}" not in [j.id for j in client.fine_tuning.jobs.list(limit=100)]


def test_bad_pages_get_openai_errors(gateway: GatewayProcess) -> None:
    with httpx.Client(base_url=gateway.url) as http:
        too_few = http.get("/v1/fine_tuning/jobs", params={"limit": 0})
        unknown = http.get("/v1/fine_tuning/jobs", params={"after": "ftjob-nope"})
    assert too_few.status_code == 422 and too_few.json()["error"]["param"] == "query.limit", too_few.text
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "after", unknown.text


def test_adapter_names_are_valid_and_unique() -> None:
    from orchestrator.contract.paths import ADAPTER_NAME
    from orchestrator.gateway.openai.fine_tuning import adapter_name

    for (model, suffix), start in {
        ("llm/tiny", "words"): "ft:tiny:words:",
        ("light/Qwen/Qwen2.5-0.5B-Instruct", None): "ft:Qwen-Qwen2.5-0.5B-Instruct:custom:",
        ("Qwen/Qwen2.5-0.5B", "v2"): "ft:Qwen2.5-0.5B:v2:",  # a hub id, not a pool model: its last part
        ("/models/my tiny/", None): "ft:my-tiny:custom:",
        ("llm/" + "x" * 200, "s" * 64): "ft:" + "x" * 40 + ":" + "s" * 64 + ":",
    }.items():
        name = adapter_name(model, suffix, ["llm", "light"])
        assert name.startswith(start) and len(name) == len(start) + 8 and ADAPTER_NAME.fullmatch(name), name
    assert adapter_name("llm/tiny", None, ["llm"]) != adapter_name("llm/tiny", None, ["llm"])


def test_cancelling_a_running_job_ends_it_cancelled(client: Any, training_file: str) -> None:
    created = client.fine_tuning.jobs.create(
        model="llm/tiny", training_file=training_file, extra_body={"max_steps": 10_000, "save_steps": 10_000}
    )
    wait_until(
        lambda: any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(created.id, limit=3).data),
        timeout=120,
        what="the job's first training step",
    )
    assert client.fine_tuning.jobs.retrieve(created.id).status == "running"
    assert client.fine_tuning.jobs.cancel(created.id).id == created.id
    job = finished(client, created.id, timeout=60)
    assert job.status == "cancelled" and job.fine_tuned_model is None and job.error is None
    assert client.fine_tuning.jobs.list_events(created.id, limit=1).data[0].message == "Fine-tuning job cancelled"


def tuned_lm(gateway: GatewayProcess, rows: list[dict[str, Any]], **train_kwargs: Any) -> tuple[Any, Any]:
    """``dspy.LM.finetune`` of ``llm/tiny`` through the gateway with our Provider, as a DSPy user writes it: the
    LM, and what its training job ends with (DSPy hands back an exception rather than raising it)."""
    dspy = pytest.importorskip("dspy", reason="dspy>=3 is a test extra: pip install 'dspy>=3'")
    from orchestrator.dspy import Provider

    lm = dspy.LM(
        "openai/llm/tiny",
        api_base=f"{gateway.url}/v1",
        api_key="unused",
        provider=Provider(poll_interval_s=0.2),
        max_tokens=8,
        temperature=0,
        cache=False,
    )
    return lm, lm.finetune(train_data=rows, train_data_format="chat", train_kwargs=train_kwargs).result(timeout=300)


def test_dspy_finetunes_through_the_gateway(gateway: GatewayProcess, client: Any) -> None:
    base, tuned = tuned_lm(gateway, CHATS, **HYPER)
    assert not isinstance(tuned, Exception), tuned
    assert tuned.model.startswith("openai/llm/ft:tiny:custom:"), tuned.model
    assert tuned.kwargs["api_base"] == f"{gateway.url}/v1" and tuned.provider is base.provider
    answer = tuned("Say apple.")  # its first call, as handed back: LiteLLM needs the provider prefix
    assert isinstance(answer, list) and len(answer) == 1 and isinstance(answer[0], str)
    assert answer != base("Say apple."), answer  # the adapter answers, not the base model
    ftjob = next(j for j in client.fine_tuning.jobs.list())
    assert ftjob.status == "succeeded" and f"openai/{ftjob.fine_tuned_model}" == tuned.model
    assert ftjob.hyperparameters.n_epochs == 2 and ftjob.hyperparameters.learning_rate_multiplier == 50


def test_dspy_fine_tune_of_rows_the_gateway_refuses_names_the_row(gateway: GatewayProcess) -> None:
    no_answer = {"messages": [{"role": "user", "content": "Say apple."}]}
    _, failed = tuned_lm(gateway, [CHATS[0], no_answer], n_epochs=1)
    assert isinstance(failed, orchestrator.InvalidArguments), failed
    assert failed.message.startswith("uploading the training data for llm/tiny: file.line 2: "), failed.message
    assert "assistant" in failed.message


def test_dspy_fine_tune_that_fails_in_training_names_the_job_and_why(gateway: GatewayProcess, client: Any) -> None:
    _, failed = tuned_lm(gateway, CHATS, max_steps=1, lora={"target_modules": ["no_such_module"]})
    assert isinstance(failed, orchestrator.OrchestratorError) and failed.code == "op_failed", failed
    ftjob = next(j for j in client.fine_tuning.jobs.list())
    assert ftjob.status == "failed" and ftjob.error.message in failed.message
    assert failed.message.startswith(f"fine-tuning job {ftjob.id} failed: "), failed.message
    assert "no_such_module" in failed.message


def test_cancelling_a_dspy_training_job_cancels_the_gateway_job(gateway: GatewayProcess, client: Any) -> None:
    dspy = pytest.importorskip("dspy", reason="dspy>=3 is a test extra: pip install 'dspy>=3'")
    from dspy.clients.utils_finetune import TrainingStatus

    from orchestrator.dspy import Provider

    lm = dspy.LM("openai/llm/tiny", api_base=f"{gateway.url}/v1", api_key="unused", provider=Provider())
    job = lm.finetune(train_data=CHATS, train_data_format="chat", train_kwargs={"max_steps": 10_000})
    wait_until(lambda: job.status() == TrainingStatus.running, timeout=120, what="the DSPy job to run")
    assert job.cancel() and job.cancelled()
    assert finished(client, job.provider_job_id, timeout=60).status == "cancelled"
    job.thread.join(timeout=30)  # the provider sees the cancel at its next poll and ends
    assert not job.thread.is_alive() and job.status() == TrainingStatus.cancelled

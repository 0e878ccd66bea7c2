"""LoRA fine-tuning on the heavy pool, on a real local Ray with the offline tiny model: loss events, the adapter
published to (and replayed on) the light pool, a SIGKILL mid-training, and the refusals at submit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import orchestrator
from orchestrator import errors
from tests.conftest import Start, actors, events_killing_once, kill_and_wait_restart
from tests.kit import tuning
from tests.kit.tuning import CHATS

pytest.importorskip("trl", reason="fine-tuning needs trl: pip install -e '.[heavy]'")
pytest.importorskip("peft", reason="fine-tuning needs peft: pip install -e '.[heavy]'")

FAST = {"max_steps": 12, "batch_size": 2, "learning_rate": 0.01, "save_steps": 4}


@pytest.fixture(scope="module")
def orch(start_orchestrator: Start, tmp_path_factory: pytest.TempPathFactory) -> orchestrator.Orchestrator:
    from orchestrator.models.tiny import build_tiny_model

    tiny = build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")
    return start_orchestrator(tuning.pools(tiny))


def answers(orch: orchestrator.Orchestrator, model: str) -> list[str]:
    """Greedy answers to the training prompts."""
    out = []
    for row in CHATS:
        result = orch.call("llm", "chat", model=model, messages=row["messages"][:1], max_tokens=8, temperature=0)
        out.append(result["choices"][0]["text"])
    return out


def test_finetune_trains_publishes_and_survives_a_light_restart(orch: orchestrator.Orchestrator) -> None:
    base = answers(orch, "llm/tiny")
    job = orch.submit("heavy", "finetune", model="llm/tiny", training_data=CHATS, hyperparameters=FAST, name="words")
    events = [event for _, event in job.events()]
    result = job.result(timeout=300)
    steps = [e for e in events if "step" in e]
    assert [e["step"] for e in steps] == list(range(1, 13)), events
    assert all(e["loss"] > 0 and "learning_rate" in e and "epoch" in e for e in steps)
    assert [e["progress"] for e in events if "progress" in e][-1] == {"done": 12, "total": 12}
    assert result["model"] == "llm/words" and result["steps"] == 12 and "train_loss" in result["metrics"]
    assert (Path(result["adapter"]) / "adapter_config.json").is_file()

    assert "words" in [m["id"] for m in orch.call("llm", "models")]
    tuned = answers(orch, "llm/words")
    assert tuned != base  # the adapter changed what the model says on its training prompts
    assert answers(orch, "llm/tiny") == base  # and the base model is untouched

    kill_and_wait_restart(orch, "llm", actors(orch, "llm")[0]["pid"])
    assert "words" in [m["id"] for m in orch.call("llm", "models")]  # replayed on the new actor
    assert answers(orch, "llm/words") == tuned


def test_a_killed_finetune_resumes_from_its_last_checkpoint(orch: orchestrator.Orchestrator) -> None:
    upload = orch.upload_file("\n".join(json.dumps(row) for row in CHATS).encode(), "words.jsonl", "fine-tune")
    hyper = {**FAST, "max_steps": 24, "save_steps": 5}
    job = orch.submit("heavy", "finetune", model="llm/tiny", training_file=upload["id"], hyperparameters=hyper)
    # SIGKILL mid-training: the last checkpoint is step 5
    events, pid = events_killing_once(orch, job, "heavy", lambda event: event.get("step") == 8)
    result = job.result(timeout=300)
    assert actors(orch, "heavy")[0]["pid"] != pid and job.status()["attempts"] == 2, job.status()
    assert [e["step"] for e in events if "step" in e] == list(range(1, 25))  # continued, none twice
    assert result["steps"] == 24 and result["model"].startswith("llm/ft-")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": "llm/huge"}, "model"),
        ({"model": "./no/such/folder"}, "model"),
        ({"training_file": "file-000000000000000000000000"}, "training_file"),
        ({"training_data": [CHATS[0], {"text": "neither"}]}, "training_data.1"),
        ({"training_data": [{"messages": [{"role": "user", "content": "no answer"}]}]}, "training_data.0.messages"),
        ({"training_data": [CHATS[0], {"prompt": "p", "completion": "c"}]}, "training_data.1"),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"learning_rate": 0}}, "hyperparameters.learning_rate"),
        ({"lora": {"r": 0}}, "lora.r"),
        ({"name": "bad name"}, "name"),
        ({"publish": "nowhere"}, "publish"),
        ({"publish": "heavy"}, "publish"),
    ],
)
def test_bad_finetune_input_is_refused_at_submit(
    orch: orchestrator.Orchestrator, change: dict[str, Any], field: str
) -> None:
    before = len(orch.jobs("heavy"))
    args = {"model": "llm/tiny", "training_data": CHATS, **change}
    if "training_file" in change:
        args.pop("training_data")
    with pytest.raises(errors.InvalidArguments) as refused:
        orch.submit("heavy", "finetune", **args)
    assert any(str(d.get("field", "")).startswith(field) for d in refused.value.detail or []), refused.value
    assert len(orch.jobs("heavy")) == before  # nothing queued


def test_a_file_of_the_wrong_purpose_is_refused(orch: orchestrator.Orchestrator) -> None:
    other = orch.upload_file(b'{"custom_id": "1"}\n', "batch.jsonl", "batch")
    with pytest.raises(errors.InvalidArguments) as refused:
        orch.submit("heavy", "finetune", model="llm/tiny", training_file=other["id"])
    assert "fine-tune" in refused.value.message and refused.value.detail[0]["field"] == "training_file"

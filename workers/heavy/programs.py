"""What an ``optimize`` or ``evaluate`` job is about: the program, its data and its models.

A program is either a **signature** (``{"signature": "question -> answer", "module": "predict"}``) or
**the user's own ``dspy.Module`` by class** (``{"class": "myapp.rag:RAG", "init": {...}, "state": ...}``)
from code the operator deployed: a package listed in pools.yaml's ``code:`` (shipped to every node like
the workers' code) or one the heavy pool's ``options.programs`` allows (installed in its env). A job
only names the class: it never carries code, and nothing is unpickled (states are DSPy's JSON
``dump_state``).

Each check refuses bad input with an InvalidArguments naming the field (``program.class``,
``program.init.k``, ``program.state.respond``, ``trainset.3.question``...), so a job is refused at
submit, before any work.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from orchestrator.errors import InvalidArguments

dspy: Any = importlib.import_module("dspy")

CLASS_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


class Program(BaseModel):
    """The program to optimize or run: a signature and a module, or a ``dspy.Module`` subclass by class path;
    either with a state (``dump_state``) a previous run returned."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    signature: str | None = Field(
        None, description='DSPy signature, e.g. "question -> answer" or "context, question -> answer".'
    )
    module: Literal["predict", "chain_of_thought"] | None = Field(None, description="With signature (predict).")
    instructions: str | None = Field(None, description="With signature: the starting instructions (DSPy's).")
    class_: str | None = Field(
        None,
        alias="class",
        description='A dspy.Module subclass from deployed code, "package.module:ClassName"; the example rows\' '
        "inputs are its forward's parameters (the other keys are labels).",
    )
    init: dict[str, Any] | None = Field(None, description="With class: keyword arguments for its constructor.")
    state: dict[str, Any] | None = Field(None, description="A program state (dump_state) to start from.")
    digest: str | None = Field(None, description="The code digest a result carries (informational).")
    model: str | None = Field(
        None,
        description="With class: the pool model it runs on (a bootstrap_finetune result's fine-tuned model); "
        "a job's model argument overrides it.",
    )

    @model_validator(mode="after")
    def _one_form(self) -> Program:
        if (self.signature is None) == (self.class_ is None):
            raise ValueError("give signature (e.g. 'question -> answer') or class ('package.module:ClassName')")
        if self.class_ is not None and (self.module is not None or self.instructions is not None):
            raise ValueError("module and instructions go with signature; a class builds its own predictors")
        if self.signature is not None and (self.init is not None or self.model is not None):
            raise ValueError("init and model go with class (a signature program's model is the job's)")
        return self


class Endpoint(BaseModel):
    """An external OpenAI-compatible model; the key is read from ``api_key_env`` in the heavy pool."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="A LiteLLM model name, e.g. openai/gpt-4o-mini.")
    api_base: str | None = None
    api_key_env: str | None = Field(None, description="The environment variable holding the key (not the key).")


OptimizerName = Literal["mipro", "gepa", "bootstrap_finetune"]


class Budget(BaseModel):
    """Which optimizer, and how much it may spend."""

    model_config = ConfigDict(extra="forbid")
    name: OptimizerName = "mipro"
    auto: Literal["light", "medium", "heavy"] | None = Field(None, description="DSPy's presets (sets the counts).")
    num_trials: int = Field(
        8, ge=1, le=1000, description="MIPROv2: search trials; GEPA: full evaluations of the data (with auto unset)."
    )
    num_candidates: int = Field(3, ge=1, le=50, description="Instruction and demo-set candidates (with auto unset).")
    max_bootstrapped_demos: int = Field(2, ge=0, le=16)
    max_labeled_demos: int = Field(2, ge=0, le=16)
    minibatch_size: int = Field(25, ge=1, le=1000)
    minibatch_full_eval_steps: int = Field(5, ge=1, le=100)
    seed: int = 9
    num_threads: int = Field(8, ge=1, le=64, description="Concurrent evaluation calls.")
    # GEPA only
    max_metric_calls: int | None = Field(None, ge=1, description="GEPA: its budget in metric calls.")
    reflection_minibatch_size: int = Field(3, ge=1, le=100, description="GEPA: examples per reflection.")
    use_merge: bool = Field(True, description="GEPA: also merge candidates from the Pareto front.")
    # BootstrapFinetune only
    teacher: str | Endpoint | None = Field(
        None, description="bootstrap_finetune: the model whose successful traces are the training data (the task's)."
    )
    hyperparameters: dict[str, Any] | None = Field(None, description="bootstrap_finetune: the finetune job's.")
    lora: dict[str, Any] | None = Field(None, description="bootstrap_finetune: the adapter's (the finetune job's).")

    @model_validator(mode="before")
    @classmethod
    def _named(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value  # "gepa" is short for {"name": "gepa"}


ONLY = {
    "mipro": {"num_candidates", "max_bootstrapped_demos", "max_labeled_demos", "minibatch_size"}
    | {"minibatch_full_eval_steps"},
    "gepa": {"max_metric_calls", "reflection_minibatch_size", "use_merge"},
    "bootstrap_finetune": {"teacher", "hyperparameters", "lora"},
}
SEARCH_ONLY = {"auto", "num_trials"}  # what only the prompt searches (mipro, gepa) spend


def budget(value: Budget | None) -> Budget:
    """The optimizer's settings; a setting that belongs to the other optimizer is refused, naming it,
    rather than silently ignored."""
    chosen = value or Budget()
    for other, fields in ONLY.items():
        wrong = sorted(fields & chosen.model_fields_set) if other != chosen.name else []
        if wrong:
            raise invalid(f"optimizer.{wrong[0]}", f"applies to {other} only (this run uses {chosen.name})")
    wrong = sorted(SEARCH_ONLY & chosen.model_fields_set) if chosen.name == "bootstrap_finetune" else []
    if wrong:
        raise invalid(f"optimizer.{wrong[0]}", "applies to mipro and gepa (bootstrap_finetune trains, not searches)")
    if chosen.name == "bootstrap_finetune":
        training(chosen)
    return chosen


def training(chosen: Budget) -> tuple[Any, Any]:
    """A bootstrap_finetune budget's LoRA and hyperparameters (the finetune job's), checked: a refusal names
    ``optimizer.hyperparameters.<field>``."""
    from workers.heavy.finetune import Hyper, LoRA  # finetune imports this module

    parsed = []
    for key, kind in (("lora", LoRA), ("hyperparameters", Hyper)):
        try:
            parsed.append(kind.model_validate(getattr(chosen, key) or {}))
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in ("optimizer", key, *error["loc"]))
            raise invalid(where, error["msg"]) from None
    return parsed[0], parsed[1]


ModelSpec = str | Endpoint


def invalid(field: str, message: str) -> InvalidArguments:
    """An invalid_arguments error naming ``field``."""
    return InvalidArguments(f"{field}: {message}", detail=[{"field": field, "message": message}])


@dataclass(frozen=True)
class Loaded:
    """A program checked and ready to build: its inputs, its labels and how to make a fresh copy."""

    program: Program
    inputs: tuple[str, ...]  # a signature's input fields, or forward's parameters
    required: tuple[str, ...]  # the inputs every row needs
    outputs: tuple[str, ...] | None  # a signature's output fields; None: each row's other keys (its labels)
    make: Callable[[], Any]  # a fresh module, before the state is loaded
    digest: str | None = None  # of the code a class comes from

    def build(self) -> Any:
        """A fresh module with the program's state loaded."""
        module = self.make()
        if self.program.state:
            module.load_state(self.program.state)
        return module

    def result(self, module: Any, model: str | None = None) -> dict[str, Any]:
        """What a job returns for ``module``: a signature program's state, or ``{class, init, state, digest}``
        (and ``model`` when it is bound to one: a bootstrap_finetune result)."""
        if self.program.class_ is None:
            return dict(module.dump_state())
        out = {"class": self.program.class_, "init": self.program.init or {}, "state": module.dump_state()}
        bound = model or self.program.model
        return out | {"digest": self.digest} | ({"model": bound} if bound else {})

    def with_state(self, state: dict[str, Any]) -> Loaded:
        """The same program starting from ``state``."""
        return replace(self, program=self.program.model_copy(update={"state": state}))


def load(program: Program, allowed: Iterable[str] = ()) -> Loaded:
    """Check ``program`` (it imports, builds, has predictors, its state fits) and return it ready to build;
    a class is imported only from ``allowed`` top-level packages (see :func:`program_class`)."""
    loaded = _from_class(program, allowed) if program.class_ is not None else _from_signature(program)
    if program.state is not None:
        _check_state(loaded.make(), program.state)
    return loaded


def signature_of(program: Program) -> Any:
    """A signature program's dspy Signature; a 422 naming ``program.signature`` if it does not parse."""
    try:
        signature = dspy.Signature(program.signature)
    except Exception as exc:
        raise invalid("program.signature", f"not a DSPy signature: {exc}") from None
    if not signature.input_fields or not signature.output_fields:
        raise invalid("program.signature", "needs input and output fields, e.g. 'question -> answer'")
    if program.instructions:
        signature = signature.with_instructions(program.instructions)
    return signature


def _from_signature(program: Program) -> Loaded:
    signature = signature_of(program)
    kind = dspy.ChainOfThought if program.module == "chain_of_thought" else dspy.Predict
    inputs = tuple(signature.input_fields)
    return Loaded(program, inputs, inputs, tuple(signature.output_fields), lambda: kind(signature))


def program_class(path: str, allowed: Iterable[str]) -> type:
    """The ``dspy.Module`` subclass ``path`` names, imported only from ``allowed`` top-level packages: the
    deployed code (pools.yaml's ``code:``) and what the heavy pool's ``options.programs`` adds. A client
    never makes the pool import anything else."""
    field = "program.class"
    if not CLASS_PATH.fullmatch(path):
        raise invalid(field, f"{path!r}: expected 'package.module:ClassName'")
    module_name, _, name = path.partition(":")
    allowed = set(allowed)
    if module_name.split(".")[0] not in allowed:
        shown = ", ".join(sorted(allowed)) or "none"
        raise invalid(
            field,
            f"{module_name!r} is not deployed code (deployed packages: {shown}): list its package in pools.yaml's "
            "code: (shipped to every node), or in the pool's options.programs if its env installs it",
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any failure of the user's module: an ImportError, or its own code raising
        raise invalid(field, f"cannot import {module_name!r} in this pool: {type(exc).__name__}: {exc}") from None
    cls = getattr(module, name, None)
    if cls is None:
        raise invalid(field, f"module {module_name!r} has no {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, dspy.Module)):
        raise invalid(field, f"{path} is not a dspy.Module subclass")
    return cls


def _from_class(program: Program, allowed: Iterable[str]) -> Loaded:
    assert program.class_ is not None
    cls = program_class(program.class_, allowed)
    init = program.init or {}
    try:
        # not signature(cls): dspy.Module's metaclass takes **kwargs
        inspect.signature(cls.__init__).bind(None, **init)  # type: ignore[misc]
    except TypeError as exc:
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
        raise invalid(f"program.init.{unexpected.group(1)}" if unexpected else "program.init", str(exc)) from None

    def make() -> Any:
        return cls(**init)

    try:
        sample = make()
    except Exception as exc:
        raise invalid("program.init", f"{cls.__name__}(**init) raised {type(exc).__name__}: {exc}") from None
    if not sample.named_predictors():
        raise invalid("program.class", f"{program.class_} has no predictors (dspy.Predict, ChainOfThought...)")
    inputs, required = forward_inputs(cls)
    return Loaded(program, inputs, required, None, make, code_digest(cls))


def forward_inputs(cls: type) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The names of ``forward``'s parameters, and those without a default (every row needs them)."""
    inputs: list[str] = []
    required: list[str] = []
    for name, param in list(inspect.signature(cls.forward).parameters.items())[1:]:  # type: ignore[attr-defined]
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise invalid("program.class", f"{cls.__name__}.forward takes *{name}: name each input as a parameter")
        inputs.append(name)
        if param.default is param.empty:
            required.append(name)
    if not inputs:
        raise invalid("program.class", f"{cls.__name__}.forward takes no inputs")
    return tuple(inputs), tuple(required)


def _check_state(module: Any, state: dict[str, Any]) -> None:
    """``state`` holds exactly the module's predictors, and each loads (``program.state.<predictor>``)."""
    if isinstance(module, dspy.Predict):  # a lone predictor's state is its own, not keyed by name
        try:
            module.load_state(state)
        except Exception as exc:
            raise invalid("program.state", f"does not load: {type(exc).__name__}: {exc}") from None
        return
    names = [name for name, _ in module.named_parameters()]
    for key in state:
        if key not in names:
            raise invalid(f"program.state.{key}", f"no predictor {key!r} in this program (its: {', '.join(names)})")
    for name in names:
        if name not in state:
            raise invalid(f"program.state.{name}", f"missing: the state has no entry for predictor {name!r}")
    for name, param in module.named_parameters():
        try:
            param.load_state(state[name])
        except Exception as exc:
            raise invalid(f"program.state.{name}", f"does not load: {type(exc).__name__}: {exc}") from None


def code_digest(cls: type) -> str:
    """sha256 over the source files of the top-level package ``cls`` comes from: which code a state belongs to."""
    top = sys.modules[cls.__module__.split(".")[0]]
    folders = list(getattr(top, "__path__", []))
    files: Iterable[Path] = (
        sorted(p for folder in folders for p in Path(folder).rglob("*.py") if "__pycache__" not in p.parts)
        if folders
        else [Path(str(top.__file__))]
    )
    digest = hashlib.sha256()
    for path in files:
        base = next((Path(f) for f in folders if path.is_relative_to(f)), path.parent)
        digest.update(str(path.relative_to(base)).encode() + b"\0" + path.read_bytes() + b"\0")
    return "sha256:" + digest.hexdigest()


def examples(rows: list[dict[str, Any]], loaded: Loaded, field: str, labelled: bool = False) -> list[Any]:
    """Rows as dspy Examples with the program's inputs. A signature program's rows need every input and
    output field; a class's need forward's required inputs (``trainset.3.question``), and with ``labelled``
    (a built-in metric) at least one label."""
    out = []
    for i, row in enumerate(rows):
        if loaded.outputs is not None:
            needed = [*loaded.inputs, *loaded.outputs]
            missing = [name for name in needed if name not in row]
            if missing:
                message = f"missing {', '.join(missing)} (the signature's fields: {', '.join(needed)})"
                raise invalid(f"{field}.{i}", message)
        else:
            for name in loaded.required:
                if name not in row:
                    raise invalid(f"{field}.{i}.{name}", f"missing: forward's input {name!r}")
            if labelled and not set(row) - set(loaded.inputs):
                inputs = ", ".join(loaded.inputs)
                raise invalid(f"{field}.{i}", f"no label to score (a key besides forward's inputs: {inputs})")
        out.append(dspy.Example(**row).with_inputs(*(name for name in loaded.inputs if name in row)))
    return out

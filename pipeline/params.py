"""The pipeline's parameters: one pydantic model, validated once at the edge.

`params.yaml` is generated from `profiles/<name>.yaml` by `python -m pipeline.profile NAME`:
a profile holds `defaults` plus per-task `overrides` (paper Tables C.2 and C.4), and
params.yaml holds every task fully resolved, so that each DVC stage can depend on exactly
the keys it reads (`tasks.<task>.finetune` for finetuning, and so on).

The per-phase blocks are TrainConfig fields (odt/config.py) plus a few pipeline-only
keys (logging and checkpoint cadence); the model block is ModelConfig without the task's
state/action dimensions. Bad values fail here with one line naming the key.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from odt.config import ConfigError, TrainConfig, format_validation_error, validate
from odt.model import ModelConfig

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PHASES = ("pretrain", "finetune")
UNTUNED = "pipeline/data/untuned.json"  # the DVC dependency that stands in for a tuning result when use_tuned is false
TUNE_DIR = "reports/tune"  # where the Optuna stage writes <task>-<phase>.json
# TrainConfig fields that come from the top level of params.yaml, not from a phase block
_TOP_LEVEL = {"seed", "device"}


def tuned_path(task: str, phase: str) -> str:
    return f"{TUNE_DIR}/{task}-{phase}.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class FetchParams(_Strict):
    """Arguments of `python -m pipeline.fetch` (DVC unpacks the block into --flags, so keys are hyphenated)."""

    source: Literal["d4rl", "minari", "generate", "file"]
    url: str | None = None
    path: str | None = None
    cache: str | None = None
    seed: NonNegInt | None = None
    train_steps: PosInt | None = Field(None, alias="train-steps")
    target_return: float | None = Field(None, alias="target-return")
    transitions: PosInt | None = None

    @model_validator(mode="after")
    def _check(self) -> "FetchParams":
        if self.source == "file" and not self.path:
            raise ValueError("source 'file' needs a path")
        return self

    def as_args(self) -> dict[str, Any]:
        """What goes into params.yaml: set keys only (DVC would pass a null as the string 'None')."""
        return self.model_dump(by_alias=True, exclude_none=True)


class PretrainRun(_Strict):
    log_every: PosInt = 100  # updates between two metric rows
    checkpoint_every: PosInt = 1000  # updates between two resumable checkpoints (a multiple of log_every)
    eval_every: NonNegInt = 0  # updates between two evaluations during pretraining; 0: only at the end

    @model_validator(mode="after")
    def _check(self) -> "PretrainRun":
        if self.checkpoint_every % self.log_every:
            raise ValueError(f"checkpoint_every ({self.checkpoint_every}) must be a multiple of log_every ({self.log_every})")
        if self.eval_every % self.log_every:
            raise ValueError(f"eval_every ({self.eval_every}) must be a multiple of log_every ({self.log_every})")
        return self


class FinetuneRun(_Strict):
    checkpoint_every_rounds: PosInt = 10  # rounds between two resumable checkpoints


class ParallelParams(_Strict):
    """How finetuning seeds are spread: joblib with loky (this machine), dask or ray (a cluster)."""

    backend: Literal["loky", "dask", "ray"] = "loky"
    n_jobs: PosInt = 2
    address: str | None = None  # dask scheduler (tcp://host:8786) or ray cluster ("auto", ray://host:10001)
    threads_per_worker: PosInt | None = None  # torch threads per seed; None: 1 (results then do not depend on the backend)


class SearchRange(_Strict):
    """A log-uniform search range (Optuna's suggest_float(log=True)): 0 < low < high."""

    low: float = Field(gt=0)
    high: float = Field(gt=0)

    @model_validator(mode="after")
    def _check(self) -> "SearchRange":
        if not self.low < self.high:
            raise ValueError(f"empty search range [{self.low}, {self.high}]: low must be below high")
        return self


class TuneParams(_Strict):
    """Optuna search over learning rate and weight decay (`python -m pipeline.tune`, DVC stages tune-<phase>@<task>)."""

    tasks: list[str] = Field(default_factory=list)  # tasks that get DVC tune stages (dvc repro runs them)
    learning_rate: SearchRange = SearchRange(low=1e-5, high=1e-2)
    weight_decay: SearchRange = SearchRange(low=1e-6, high=1e-2)
    n_trials: PosInt = 20  # trials per worker and run: a rerun adds as many to the same study
    timeout: float | None = Field(None, gt=0)  # seconds per worker after which no new trial starts
    sampler_seed: NonNegInt = 0  # TPE; trial k draws with seed sampler_seed + k, whichever worker runs it
    pruner: Literal["median", "hyperband", "none"] = "median"
    startup_trials: NonNegInt = 5  # finished trials before the median pruner prunes
    storage: str = "sqlite:///optuna.db"  # relative sqlite paths are from the repository root; journal:PATH; any RDB URL
    pretrain_updates: PosInt | None = None  # a pretrain trial's budget; null: the task's pretrain_updates
    eval_every: PosInt | None = None  # updates between a pretrain trial's intermediate evaluations; null: budget / 5
    online_samples: PosInt | None = None  # a finetune trial's budget; null: the task's online_samples


class TaskBlock(_Strict):
    fetch: FetchParams
    model: dict[str, Any]
    pretrain: dict[str, Any]
    finetune: dict[str, Any]
    tuned: dict[str, str] = Field(default_factory=dict)


class Params(_Strict):
    profile: str
    seeds: PosInt = 10  # finetuning seeds 0 .. seeds-1 (pretraining uses seed 0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    env_version: Literal["v4", "v5"] = "v5"
    use_tuned: bool = False
    parallel: ParallelParams = ParallelParams()
    tune: TuneParams = TuneParams()
    tasks: dict[str, TaskBlock]

    @model_validator(mode="after")
    def _check(self) -> "Params":
        if not self.tasks:
            raise ValueError("tasks is empty: list at least one task")
        unknown = [t for t in self.tune.tasks if t not in self.tasks]
        if unknown:
            raise ValueError(f"tune.tasks lists '{unknown[0]}', which is not in tasks")
        return self


@dataclass(frozen=True)
class TaskPlan:
    """One task with every config built and checked: what the stages consume."""

    name: str
    fetch: FetchParams
    model: ModelConfig
    pretrain: TrainConfig  # seed 0
    finetune: TrainConfig  # seed 0; `finetune.model_copy(update={"seed": s})` per seed
    pretrain_run: PretrainRun
    finetune_run: FinetuneRun
    tuned: dict[str, str]  # phase -> the file DVC tracks for it

    def train_config(self, phase: str) -> TrainConfig:
        return {"pretrain": self.pretrain, "finetune": self.finetune}[phase]


# loading ---------------------------------------------------------------------------------
def _split(block: dict[str, Any], run_cls: type[BaseModel]) -> tuple[dict[str, Any], dict[str, Any]]:
    run_keys = set(run_cls.model_fields)
    return ({k: v for k, v in block.items() if k not in run_keys}, {k: v for k, v in block.items() if k in run_keys})


def _task_dims(name: str) -> tuple[int, int]:
    from odt.tasks import get_task  # noqa: PLC0415 (UnknownTaskError lists close matches)

    try:
        spec = get_task(name)
    except Exception as err:  # UnknownTaskError
        raise ConfigError(f"params.yaml: tasks.{name}: {err}") from None
    return spec.obs_dim, spec.act_dim


def plan_task(params: Params, name: str) -> TaskPlan:
    """Build ModelConfig and both TrainConfigs of one task; one-line ConfigError on a bad value."""
    if name not in params.tasks:
        raise ConfigError(f"task '{name}' is not in params.yaml (tasks: {', '.join(params.tasks)})")
    block = params.tasks[name]
    where = f"params.yaml tasks.{name}"
    obs_dim, act_dim = _task_dims(name)
    for key in ("state_dim", "act_dim"):
        if key in block.model:
            raise ConfigError(f"{where}.model: '{key}' comes from the task, remove it")
    model = validate(ModelConfig, {"state_dim": obs_dim, "act_dim": act_dim, **block.model}, f"{where}.model")
    configs: dict[str, Any] = {}
    for phase, run_cls in (("pretrain", PretrainRun), ("finetune", FinetuneRun)):
        train_values, run_values = _split(getattr(block, phase), run_cls)
        clash = _TOP_LEVEL & set(train_values)
        if clash:
            raise ConfigError(f"{where}.{phase}: '{sorted(clash)[0]}' is set at the top level of params.yaml, remove it here")
        configs[phase] = validate(TrainConfig, {**train_values, "seed": 0, "device": params.device}, f"{where}.{phase}")
        configs[phase + "_run"] = validate(run_cls, run_values, f"{where}.{phase}")
    if configs["pretrain"].reward_scale != configs["finetune"].reward_scale:
        raise ConfigError(f"{where}: reward_scale differs between pretrain and finetune; the model was trained with one scale")
    for phase in PHASES:
        expected = tuned_path(name, phase) if params.use_tuned else UNTUNED
        if block.tuned.get(phase) != expected:
            raise ConfigError(
                f"{where}.tuned.{phase} is {block.tuned.get(phase)!r} but use_tuned={params.use_tuned} needs {expected!r}; "
                f"regenerate params.yaml with `python -m pipeline.profile {params.profile}"
                f"{' --use-tuned' if params.use_tuned else ''}`"
            )
    return TaskPlan(name=name, fetch=block.fetch, model=model, tuned=dict(block.tuned), **configs)


def parse_params(raw: Any, where: str = "params.yaml") -> Params:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values")
    try:
        return Params(**raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, where)) from None


def read_yaml(path: Path) -> Any:
    """The parsed file, or a one-line ConfigError naming it and the first YAML problem."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None


def load_params(path: str | Path = "params.yaml", tasks: list[str] | None = None) -> tuple[Params, dict[str, TaskPlan]]:
    """Read and validate params.yaml; plans for `tasks` (default: all of them)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; write it with `python -m pipeline.profile quick`")
    params = parse_params(read_yaml(path), str(path))
    names = list(params.tasks) if tasks is None else tasks
    return params, {name: plan_task(params, name) for name in names}


# profiles --------------------------------------------------------------------------------
def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


class Profile(_Strict):
    """profiles/<name>.yaml: a task list, shared defaults and per-task overrides."""

    description: str = ""
    seeds: PosInt = 10
    device: Literal["auto", "cpu", "cuda"] = "auto"
    env_version: Literal["v4", "v5"] = "v5"
    use_tuned: bool = False
    parallel: ParallelParams = ParallelParams()
    tune: TuneParams = TuneParams()
    tasks: list[str]
    defaults: dict[str, dict[str, Any]]
    overrides: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)


def resolve_profile(name: str, raw: Any, *, use_tuned: bool | None = None) -> dict[str, Any]:
    """Profile -> the params.yaml mapping, every task resolved and validated."""
    where = f"profiles/{name}.yaml"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping")
    try:
        prof = Profile(**raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, where)) from None
    unknown = set(prof.overrides) - set(prof.tasks)
    if unknown:
        raise ConfigError(f"{where}: overrides for '{sorted(unknown)[0]}', which is not in tasks")
    tuned = prof.use_tuned if use_tuned is None else use_tuned
    tasks = {}
    for task in prof.tasks:
        block = _merge(prof.defaults, prof.overrides.get(task, {}))
        try:
            fetch = FetchParams(**block.get("fetch", {}))
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, f"{where} tasks.{task}.fetch")) from None
        block["fetch"] = fetch.as_args()
        block["tuned"] = {phase: tuned_path(task, phase) if tuned else UNTUNED for phase in PHASES}
        tasks[task] = block
    out = {
        "profile": name,
        "seeds": prof.seeds,
        "device": prof.device,
        "env_version": prof.env_version,
        "use_tuned": tuned,
        "parallel": prof.parallel.model_dump(),
        "tune": prof.tune.model_dump(),
        "tasks": tasks,
    }
    params = parse_params(out, where)
    for task in params.tasks:
        plan_task(params, task)
    return out


# tuned hyperparameters -------------------------------------------------------------------
class TunedResult(BaseModel):
    """reports/tune/<task>-<phase>.json as the Optuna stage writes it (extra keys allowed)."""

    model_config = ConfigDict(extra="allow")
    task: str
    phase: Literal["pretrain", "finetune"]
    best_params: dict[str, float]
    best_value: float | None = None
    n_trials: int | None = None


TUNABLE = ("learning_rate", "weight_decay")


def read_tuned(path: str | Path, task: str, phase: str) -> dict[str, float]:
    """The best learning rate and weight decay of a tuning run, checked against task and phase."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"use_tuned is true but {path} does not exist; run the tuning stage for {task} {phase} first")
    try:
        result = TunedResult(**json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError, TypeError) as err:
        msg = format_validation_error(err, str(path)) if isinstance(err, ValidationError) else f"invalid {path}: {err}"
        raise ConfigError(msg) from None
    if (result.task, result.phase) != (task, phase):
        raise ConfigError(f"{path} is for {result.task} {result.phase}, expected {task} {phase}")
    values = {k: float(result.best_params[k]) for k in TUNABLE if k in result.best_params}
    if not values:
        raise ConfigError(f"{path}: best_params has neither learning_rate nor weight_decay")
    return values

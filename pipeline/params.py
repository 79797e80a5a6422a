"""params.yaml: one pydantic model, validated once at the edge, and each task's configs built from it.

`params.yaml` is generated from `profiles/<name>.yaml` by `python -m pipeline.profile NAME`
and holds every task fully resolved, so that each DVC stage can depend on exactly the keys
it reads (`tasks.<task>.finetune` for finetuning, and so on). A task's `model` block is
ModelConfig without the dims (and with the reward scale) the task gives; its `pretrain` and
`finetune` blocks are odt's PretrainConfig and FinetuneConfig. Bad values fail here with one
line naming the key. With `use_tuned: true` a phase's learning rate and weight decay come from
reports/tune/<task>-<phase>.json, the best values an Optuna study left (`python -m pipeline.tune`,
searching the ranges of the `tune` block).
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from odt.config import (
    ConfigError,
    EvalConfig,
    FinetuneConfig,
    IQLConfig,
    ModelConfig,
    NonNegInt,
    PosInt,
    PretrainConfig,
    SACConfig,
    format_validation_error,
    task_model,
    validate,
)
from odt.tasks import get_task, unknown_task
from pipeline import paths

PHASES = {"pretrain": PretrainConfig, "finetune": FinetuneConfig}
TUNABLE = ("learning_rate", "weight_decay")  # what an Optuna study (python -m pipeline.tune) searches
UNTUNED = "pipeline/data/untuned.json"  # the DVC dependency that stands in for a tuning result when use_tuned is false


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
    # clip actions outside [-1, 1] (default: reject)
    clip_actions: Literal[True] | None = Field(None, alias="clip-actions")

    @model_validator(mode="after")
    def _check(self) -> FetchParams:
        if self.source == "file" and not self.path:
            raise ValueError("source 'file' needs a path")
        return self

    def as_args(self) -> dict[str, Any]:
        """What goes into params.yaml: set keys only (DVC would pass a null as the string 'None')."""
        return self.model_dump(by_alias=True, exclude_none=True)


class ParallelParams(_Strict):
    """How seeds are spread: joblib with loky (this machine), dask or ray (a cluster)."""

    backend: Literal["loky", "dask", "ray"] = "loky"
    n_jobs: PosInt = 2
    address: str | None = None  # dask scheduler (tcp://host:8786) or ray cluster ("auto", ray://host:10001)
    # torch threads per seed; None: 1 (results then do not depend on the backend)
    threads_per_worker: PosInt | None = None


class SearchRange(_Strict):
    """A log-uniform search range (Optuna's suggest_float(log=True)): 0 < low < high."""

    low: float = Field(gt=0)
    high: float = Field(gt=0)

    @model_validator(mode="after")
    def _check(self) -> SearchRange:
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
    # relative sqlite paths are from the repository root; journal:PATH; any RDB URL
    storage: str = "sqlite:///optuna.db"
    pretrain_updates: PosInt | None = None  # a pretrain trial's budget; null: the task's pretrain_updates
    eval_every: PosInt | None = None  # updates between a pretrain trial's intermediate evaluations; null: budget / 5
    online_samples: PosInt | None = None  # a finetune trial's budget; null: the task's online_samples


class TaskBlock(_Strict):
    fetch: FetchParams
    model: dict[str, Any]
    pretrain: dict[str, Any]
    finetune: dict[str, Any]
    tuned: dict[str, str] = Field(default_factory=dict)
    dt: dict[str, dict[str, Any]] | None = None  # {model: ..., train: PretrainConfig} of the Decision Transformer
    iql: dict[str, Any] | None = None  # IQLConfig; budget and episodes default to the finetune block's
    sac: dict[str, Any] | None = None  # SACConfig; likewise


BASELINES = ("dt", "iql", "sac")
Block = dict[Literal["model", "pretrain", "finetune"], dict[str, Any]]  # what a variant of a task may override


class VariantParams(_Strict):
    """A variant: overrides of a task's model, pretrain and finetune blocks (keys as those blocks spell them), and
    per task (`per_task.<task>`, merged after them) where a value depends on the task (Fig. D.1's expert return)."""

    model: dict[str, Any] = Field(default_factory=dict)
    pretrain: dict[str, Any] = Field(default_factory=dict)
    finetune: dict[str, Any] = Field(default_factory=dict)
    per_task: dict[str, Block] = Field(default_factory=dict)

    def blocks(self, task: str) -> Block:
        own = self.per_task.get(task, {})
        return {k: {**getattr(self, k), **own.get(k, {})} for k in ("model", "pretrain", "finetune")}


class ExperimentParams(_Strict):
    """One of the paper's experiments (`experiments.<id>`, DVC stage experiment@<id>, README "The paper's claims").

    `variants` (kind variants): named overrides of each task's model, pretrain and finetune blocks; every variant
    pretrains and finetunes its `seeds` seeds, and a phase equal to one already computed (another variant's or
    experiment's) is reused. `g_eval` (kind g_eval): the values the pretrained and the finetuned policies of the
    task's own settings are evaluated at. Kind sampling: Fig. F.1 over each task's dataset, no training.
    """

    kind: Literal["variants", "g_eval", "sampling"] = "variants"
    tasks: list[str]
    seeds: PosInt = 5
    variants: dict[str, VariantParams] = Field(default_factory=dict)
    g_eval: list[float] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> ExperimentParams:
        if not self.tasks:
            raise ValueError("tasks is empty: list the tasks it runs on")
        if self.kind == "variants" and not self.variants:
            raise ValueError("kind variants needs variants: name them, each with its overrides ({} for none)")
        if self.kind == "g_eval" and not self.g_eval:
            raise ValueError("kind g_eval needs g_eval: the values to evaluate at")
        bad = [v for v in self.variants if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.=-]*", v)]
        if bad:
            raise ValueError(f"variant name {bad[0]!r}: use letters, digits and . _ = - (it names a directory)")
        for name, v in self.variants.items():
            if stray := set(v.per_task) - set(self.tasks):
                raise ValueError(f"variants.{name}.per_task names '{sorted(stray)[0]}', which is not in its tasks")
        return self


class Params(_Strict):
    profile: str
    seeds: PosInt = 10  # seeds 0 .. seeds-1 of every algorithm; ODT's seed k pretrains and then finetunes
    device: Literal["auto", "cpu", "cuda"] = "auto"
    env_version: Literal["v4", "v5"] = "v5"
    use_tuned: bool = False
    parallel: ParallelParams = ParallelParams()
    tune: TuneParams = TuneParams()
    baselines: dict[Literal["dt", "iql", "sac"], list[str]] = Field(default_factory=dict)  # the tasks each runs on
    tasks: dict[str, TaskBlock]
    experiments: dict[str, ExperimentParams] = Field(default_factory=dict)  # the paper's other experiments

    @model_validator(mode="after")
    def _check(self) -> Params:
        if not self.tasks:
            raise ValueError("tasks is empty: list at least one task")
        dotted = [e for e in self.experiments if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", e)]
        if dotted:  # DVC reads a dot in a params key as nesting: experiments.fig5.4 would be experiments/fig5/4
            raise ValueError(f"experiments: '{dotted[0]}' is not a usable name: letters, digits, _ and - only "
                             "(fig5-4 for Figure 5.4)")
        # first: what it breaks (a baseline listing the right name) comes after
        if misspelt := unknown_task(self.tasks):
            raise ValueError(f"tasks.{misspelt[0]}: {misspelt[1]}")
        for where, names in [
            ("tune.tasks", self.tune.tasks),
            *((f"baselines.{b}", t) for b, t in self.baselines.items()),
            *((f"experiments.{e}.tasks", x.tasks) for e, x in self.experiments.items()),
        ]:
            unknown = [t for t in names if t not in self.tasks]
            if unknown:
                raise ValueError(f"{where} lists '{unknown[0]}', which is not in tasks")
        for name, tasks in self.baselines.items():
            missing = [t for t in tasks if getattr(self.tasks[t], name) is None]
            if missing:
                raise ValueError(f"baselines.{name} lists '{missing[0]}' but tasks.{missing[0]}.{name} is not set")
        return self


@dataclass(frozen=True)
class TaskPlan:
    """One task with every config built and checked: what the stages consume."""

    name: str
    fetch: FetchParams
    model: ModelConfig
    pretrain: PretrainConfig
    finetune: FinetuneConfig
    tuned: dict[str, str]  # phase -> the file DVC tracks for it
    env_version: str
    dt_model: ModelConfig | None = None
    dt: PretrainConfig | None = None
    iql: IQLConfig | None = None
    sac: SACConfig | None = None

    def baseline(self, name: str) -> Any:
        """The config of baseline `name` (dt, iql, sac), or one line saying to add its block."""
        if getattr(self, name) is None:
            raise ConfigError(f"params.yaml tasks.{self.name} has no {name} block; add it (see profiles/quick.yaml)")
        return getattr(self, name)

    def env_fn(self, root: Path) -> functools.partial:
        """The task's environment as its dataset (data/<task>/) needs it: picklable."""
        from odt.envs import dataset_env_fn

        return dataset_env_fn(self.name, self.env_version, paths.dataset_meta(root, self.name))


BASE = "base"  # an experiment's arm with the task's own settings (a g_eval sweep evaluates it)


def plan_task(params: Params, name: str, variant: tuple[str, str] | None = None) -> TaskPlan:
    """Build ModelConfig and both phase configs of one task, then check them against each other; one-line
    ConfigError on a bad value or on settings that cannot mean what they say together.

    `variant` (experiment, variant name): the task with that variant's overrides of its model, pretrain and
    finetune blocks, errors then naming the override's key; a name not among the experiment's variants (`BASE`):
    the task's own settings."""
    if name not in params.tasks:
        raise ConfigError(f"task '{name}' is not in params.yaml (tasks: {', '.join(params.tasks)})")
    block = params.tasks[name]  # its name is a known task: Params checked every key under tasks
    where, prefix = f"params.yaml tasks.{name}", f"tasks.{name}"
    if variant is not None and variant[1] in params.experiments[variant[0]].variants:
        overrides = params.experiments[variant[0]].variants[variant[1]].blocks(name)
        block = block.model_copy(update={k: {**getattr(block, k), **v} for k, v in overrides.items()})
        prefix = f"experiments.{variant[0]}.variants.{variant[1]}"
        where = f"params.yaml {prefix}"
    model = task_model(name, block.model, f"{where}.model")
    phases = {phase: validate(cls, getattr(block, phase), f"{where}.{phase}") for phase, cls in PHASES.items()}
    check_lengths(name, model, f"{prefix}.model", {f"{prefix}.{phase}": cfg for phase, cfg in phases.items()})
    finetune = phases["finetune"]
    at_most(f"{prefix}.finetune.rollouts_per_round", finetune.rollouts_per_round,
            f"{prefix}.finetune.buffer_size", finetune.buffer_size,
            f"raise buffer_size or lower rollouts_per_round (the buffer keeps the newest {finetune.buffer_size} "
            "trajectories: a round's other rollouts would never be trained on)")
    for phase in PHASES:
        expected = tuned_path(name, phase) if params.use_tuned else UNTUNED
        if block.tuned.get(phase) != expected:
            raise ConfigError(
                f"{where}.tuned.{phase} is {block.tuned.get(phase)!r} but use_tuned={params.use_tuned} "
                f"needs {expected!r}; "
                f"regenerate params.yaml with `python -m pipeline.profile {params.profile}"
                f"{' --use-tuned' if params.use_tuned else ''}`"
            )
    baselines: dict[str, Any] = {}
    if block.dt is not None:
        extra = set(block.dt) - {"model", "train"}
        if extra:
            raise ConfigError(f"{where}.dt: unknown key '{sorted(extra)[0]}' (dt has model and train)")
        baselines["dt_model"] = task_model(
            name, {**block.dt.get("model", {}), "stochastic": False}, f"{where}.dt.model"
        )
        baselines["dt"] = validate(PretrainConfig, block.dt.get("train", {}), f"{where}.dt.train")
        check_lengths(name, baselines["dt_model"], f"{prefix}.dt.model", {f"{prefix}.dt.train": baselines["dt"]})
    online = {"online_samples": phases["finetune"].online_samples, "eval_episodes": phases["finetune"].eval_episodes}
    for key, cls in (("iql", IQLConfig), ("sac", SACConfig)):
        if getattr(block, key) is not None:  # the same online budget and evaluation episodes as ODT's, unless set
            baselines[key] = validate(cls, {**online, **getattr(block, key)}, f"{where}.{key}")
    return TaskPlan(name=name, fetch=block.fetch, model=model, tuned=dict(block.tuned), env_version=params.env_version,
                    **phases, **baselines)


def at_most(key: str, value: float, limit_key: str, limit: float, fix: str) -> None:
    """One ConfigError line when `key` is larger than `limit_key` (both as params.yaml spells them), and how to fix
    it."""
    if value > limit:
        raise ConfigError(f"params.yaml: {key} ({value}) is larger than {limit_key} ({limit}); {fix}")


def check_lengths(task: str, model: ModelConfig, model_key: str, evaluations: dict[str, EvalConfig]) -> None:
    """The lengths of a model and of the evaluations run with it, each valid alone, against each other.

    A training segment (context_len) cannot be longer than the episodes the model is built for (max_ep_len, which
    also stops every rollout); max_ep_len cannot stop the task's episodes early; and an evaluation cannot give the
    model a longer context (eval_context_len) than it was trained on.
    """
    episode_len = get_task(task).max_episode_steps
    at_most(f"{model_key}.context_len", model.context_len, f"{model_key}.max_ep_len", model.max_ep_len,
            f"lower context_len or raise max_ep_len ({task}'s episodes last up to {episode_len} steps)")
    if model.max_ep_len < episode_len:
        raise ConfigError(f"params.yaml: {model_key}.max_ep_len ({model.max_ep_len}) is shorter than {task}'s episodes "
                          f"({episode_len} steps), so every evaluation and exploration episode would stop at step "
                          f"{model.max_ep_len}; set max_ep_len to at least {episode_len}")
    for key, cfg in evaluations.items():
        at_most(f"{key}.eval_context_len", cfg.eval_context_len, f"{model_key}.context_len", model.context_len,
                "lower eval_context_len or raise context_len (the model is never trained on a longer context)")


def learning_rate_setting(plan: TaskPlan, block: str, hparams: dict[str, Any]) -> str:
    """Where the learning rate of `block` ("pretrain", "finetune", "dt.train") came from, as a user would change it:
    the params.yaml key, or the tuned file (phase_config's `source`)."""
    source = hparams["source"]
    return f"tasks.{plan.name}.{block}.learning_rate" if source == "params" else f"the learning rate in {source}"


def phase_config(plan: TaskPlan, params: Params, phase: str, overrides: dict[str, Any] | None = None, *,
                 root: Path = paths.ROOT) -> tuple[PretrainConfig | FinetuneConfig, dict[str, Any]]:
    """The phase's config: params.yaml, then the tuned lr/wd (use_tuned), then `overrides` (an Optuna trial).

    Also returns where the learning rate and weight decay came from, for the report.
    """
    values = getattr(plan, phase).model_dump()
    source = "params"
    if params.use_tuned:
        values |= read_tuned(Path(root) / plan.tuned[phase], plan.name, phase)
        source = f"tuned ({plan.tuned[phase]})"
    if overrides:
        values |= overrides
        if set(TUNABLE) & set(overrides):
            source = "overrides"
    cfg = validate(PHASES[phase], values, f"{plan.name} {phase} config")
    return cfg, {"learning_rate": cfg.learning_rate, "weight_decay": cfg.weight_decay, "source": source}


# the tuned values ------------------------------------------------------------------------
def tuned_path(task: str, phase: str) -> str:
    """Where the Optuna stage writes a study's best values (relative to the repository root)."""
    return f"reports/tune/{task}-{phase}.json"


class TunedResult(BaseModel):
    """reports/tune/<task>-<phase>.json as the Optuna stage writes it (extra keys allowed)."""

    model_config = ConfigDict(extra="allow")
    task: str
    phase: Literal["pretrain", "finetune"]
    best_params: dict[str, float]
    best_value: float | None = None
    n_trials: int | None = None


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


# loading ---------------------------------------------------------------------------------
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
        raise ConfigError(f"{path} is not valid YAML: {yaml_problem(err)}") from None


def yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's problem with the line and column it points at (1-based, as an editor shows them)."""
    mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(err).split())
    where = f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
    return where + (f" ({context}, line {start.line + 1})" if context and start is not None else "")


def load_params(path: str | Path = "params.yaml", tasks: list[str] | None = None) -> tuple[Params, dict[str, TaskPlan]]:
    """Read and validate params.yaml; plans for `tasks` (default: all of them)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; write it with `python -m pipeline.profile quick`")
    params = parse_params(read_yaml(path), str(path))
    names = list(params.tasks) if tasks is None else tasks
    plans = {name: plan_task(params, name) for name in names}
    plan_variants(params)  # after the tasks: a bad value of a task is named as the task's key, not a variant's
    return params, plans


def plan_variants(params: Params) -> None:
    """Build every experiment variant's plan: a bad override is one ConfigError line now, not when its stage runs."""
    for experiment, spec in params.experiments.items():
        for variant in spec.variants:
            for task in spec.tasks:
                plan_task(params, task, (experiment, variant))

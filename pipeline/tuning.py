"""Tuning's contract: params.yaml's `tune` block, and the best-values file a study leaves.

reports/tune/<task>-<phase>.json is what the Optuna stage writes and `use_tuned: true` reads.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from odt.config import ConfigError, NonNegInt, PosInt, format_validation_error

TUNABLE = ("learning_rate", "weight_decay")


class SearchRange(BaseModel):
    """A log-uniform search range (Optuna's suggest_float(log=True)): 0 < low < high."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    low: float = Field(gt=0)
    high: float = Field(gt=0)

    @model_validator(mode="after")
    def _check(self) -> "SearchRange":
        if not self.low < self.high:
            raise ValueError(f"empty search range [{self.low}, {self.high}]: low must be below high")
        return self


class TuneParams(BaseModel):
    """Optuna search over learning rate and weight decay (`python -m pipeline.tune`, DVC stages tune-<phase>@<task>)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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

"""The tuned-values file reports/tune/<task>-<phase>.json: what the Optuna stage writes and `use_tuned: true` reads."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from odt.config import ConfigError, format_validation_error
TUNABLE = ("learning_rate", "weight_decay")


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

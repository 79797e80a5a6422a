"""What the loops tell the outside world: a small interface that MLflow, Optuna or a notebook plug into.

`step` is a run's clock: it grows from row to row (one row per step), and it is the number of
gradient updates so far (the learner's `num_updates`, `Run.num_updates` at the end) in every
loop that updates as it goes: ODT's pretraining and finetuning (odt/loops.py) and IQL, whose
online phase makes one update per environment step (odt/baselines/iql.py). SAC's first tenth
of its budget takes random actions and makes no update, so its rows would share step 0 there;
SAC steps by environment steps instead (odt/baselines/sac.py), and its rows carry `updates`.
Every online row carries `online_samples`, the x on which the algorithms' curves compare.

A loop resumed from a checkpoint logs again the steps after that checkpoint, with the same
values: a logger that keeps history drops the steps it already has (as pipeline/tracking.py's
MLflow adapter does), which is why a step must grow from row to row.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class Logger(Protocol):
    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """One row of metrics (training averages since the last row, evaluation results, wall time)."""

    def report(self, value: float, step: int, final: bool) -> None:
        """An evaluation's normalized return as it happens (`final`: the run's last one).

        A pruner may raise here, at an evaluation that is not final, to stop the run.
        """


class NullLogger:
    def log(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def report(self, value: float, step: int, final: bool) -> None:
        pass


class MemoryLogger:
    """Keeps everything in lists: `rows` as (step, metrics), `reports` as (step, value)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []
        self.reports: list[tuple[int, float]] = []

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.rows.append((int(step), dict(metrics)))

    def report(self, value: float, step: int, final: bool) -> None:
        self.reports.append((int(step), float(value)))

    def history(self, name: str) -> list[tuple[int, float]]:
        """(step, value) of one metric, in the order logged."""
        return [(step, row[name]) for step, row in self.rows if name in row]

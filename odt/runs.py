"""What every loop shares (ODT's pretrain and finetune in odt/loops.py, odt/baselines' iql and sac).

The run record a loop returns (`Run`, with its update count), the environment-factory
type, the data a loop reads (`trajectories`), the device, the resume check, the headline
score, seeded evaluation of a policy, and the averaging of per-update metrics.
"""
from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from odt import curves
from odt.checkpoint import load_checkpoint
from odt.data import Trajectory
from odt.datasets.hdf5 import load_d4rl_hdf5
from odt.divergence import Diverged, check_scores
from odt.evaluation import eval_seeds, run_episodes, score

EnvFn = Callable[[], gym.Env]
Data = Sequence[Trajectory] | str | os.PathLike  # trajectories, or a D4RL-layout HDF5 file of them


def trajectories(data: Data, task: str | None = None) -> Sequence[Trajectory]:
    """`data` as trajectories: as given, or read from a D4RL-layout HDF5 file (`task` picks AntMaze's episode split
    and checks the dims; odt.datasets.hdf5)."""
    return load_d4rl_hdf5(data, task=task) if isinstance(data, (str, os.PathLike)) else data


def resolve_device(name: str | torch.device) -> torch.device:
    """`auto`: CUDA when torch sees a GPU, else the CPU; `cuda` without a GPU is a one-line error."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no GPU; use device: auto or cpu")
    return torch.device(name)


def headline(evaluation: dict[str, float]) -> float:
    """The one number an evaluation is judged by: its D4RL-normalized return, or the raw return without a task."""
    return evaluation.get("eval_normalized", evaluation["eval_return"])


@dataclass
class Run:
    """What a loop leaves: the learner, its evaluations in order (the last is the final score), wall time, updates."""

    trainer: Any  # ODTTrainer; a baseline's learner for odt.baselines
    evaluations: list[dict[str, float]]  # pretraining: {"updates", eval_*}; online: {"online_samples", eval_*, ...}
    wall_time: float  # seconds, summed over every resumed piece
    num_updates: int  # gradient updates the learner has made (pretraining's included for a finetuned ODT)
    offline_score: dict[str, float] | None = None  # an online run's starting policy, scored (eval_* keys)
    online: bool = True  # False: an offline run (pretraining), whose final evaluation is its offline score
    dynamics: list[dict[str, float]] = field(default_factory=list)  # training metrics per logged row or round

    @property
    def final(self) -> dict[str, float]:
        return self.evaluations[-1]

    def write_curve(self, path: str | Path) -> Path:
        """The evaluations as CSV (odt.curves): the x columns they have (round, online_samples; or updates), then
        the scores."""
        x = [k for k in ("round", "online_samples", "updates") if k in self.final]
        return curves.write_csv(Path(path), self.evaluations, [*x, *curves.SCORES])

    def write_dynamics(self, path: str | Path) -> Path:
        """The training dynamics as CSV: where each row was taken (updates; round, online samples, g_online), then
        loss, NLL, entropy and lambda (`temperature`) as the run has them."""
        columns = list(dict.fromkeys(k for row in self.dynamics for k in row))
        return curves.write_csv(Path(path), self.dynamics, columns)

    def scores(self) -> dict[str, float]:
        """The scores a results table reads: offline_* (the policy before any online sample: pretraining's final
        one, or an online run's start), online_* (after the online budget), best_* (the best on the way)."""
        def scored(prefix: str, e: dict[str, float]) -> dict[str, float]:
            keys = ("normalized", "normalized_std", "return", "return_std", "length", "length_std")
            return {f"{prefix}_{k}": e[f"eval_{k}"] for k in keys if f"eval_{k}" in e}

        start = self.offline_score if self.online else self.final
        out = scored("offline", start) if start is not None else {}
        if self.online:
            out |= scored("online", self.final) | {"online_samples": self.final["online_samples"]}
        best = max(self.evaluations, key=headline)
        at = "updates" if "updates" in best else "online_samples"
        return out | {k.replace("offline", "best"): v for k, v in scored("offline", best).items() if "std" not in k} | {
            f"best_{at}": best[at], "wall_time": self.wall_time}


def names_divergence(phase: str):
    """A loop whose `Diverged` is re-raised as one line naming `phase`, the task and seed (as the learner
    named them, else the loop's `task` and `seed` keywords) and the setting to lower, `<phase>.learning_rate`."""
    def wrap(loop: Callable[..., Run]) -> Callable[..., Run]:
        @functools.wraps(loop)
        def run(*args: Any, **kwargs: Any) -> Run:
            try:
                return loop(*args, **kwargs)
            except Diverged as err:
                task, seed = kwargs.get("task"), kwargs.get("seed", 0)
                who = err.where or (f"{task} seed {seed}" if task else f"seed {seed}")
                raise err.named(f"{phase} {who}", f"{phase}.learning_rate") from None
        return run
    return wrap


def resume(checkpoint: str | Path | None) -> dict[str, Any] | None:
    """What a loop left in `checkpoint`, or None: no checkpoint asked for, or none written yet (a fresh start)."""
    return load_checkpoint(checkpoint) if checkpoint is not None and Path(checkpoint).is_file() else None


def evaluate_policy(act: Callable[[np.ndarray], np.ndarray], envs: gym.vector.VectorEnv, *, seed: int, index: int,
                    task: str | None, num_updates: int, learning_rate: float) -> dict[str, float]:
    """One episode per env with `act` (observations -> actions), on the episode seeds of (`seed`, `index`), as
    every algorithm here is scored: raw and (with a task) D4RL-normalized returns. A non-finite score raises
    `Diverged` at `num_updates`."""
    seeds = eval_seeds(seed, index, envs.num_envs)
    return check_scores(score(run_episodes(act, envs, seeds), task), num_updates, learning_rate)


class Average:
    """Metrics of consecutive updates summed on the device; `pop` reads the averages with one host sync.

    `watch`: metrics whose value at each update is kept on the device too, for a learner that does
    not check each update (CUDA): after `pop`, `first_non_finite` finds the update at fault.
    """

    def __init__(self, watch: Sequence[str] = ()) -> None:
        self.watch = tuple(watch)
        self.sums: dict[str, torch.Tensor] = {}
        self.rows: list[torch.Tensor] = []  # each update's watched values
        self.n = 0
        self.popped: tuple[dict[str, float], list[torch.Tensor]] = ({}, [])

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for k, v in metrics.items():  # the first is cloned: a CUDA graph overwrites its outputs at the next replay
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        if self.watch:
            self.rows.append(torch.stack([metrics[k].float() for k in self.watch]))
        self.n += 1

    def pop(self) -> dict[str, float]:
        """The averages since the last `pop` ({} after no update), and a fresh start."""
        out = {k: float(v) / self.n for k, v in self.sums.items()}
        self.popped = (out, self.rows)
        self.sums, self.rows, self.n = {}, [], 0
        return out

    def first_non_finite(self) -> tuple[int, dict[str, float]] | None:
        """Where a watched average of the block last popped is not finite: the first update of that block with a
        non-finite watched value, as (how many updates of the block came after it, its watched values); the
        block's last update and its averages if no single value is (the sum overflowed). None while the
        averages are finite. Reads the device only then."""
        out, rows = self.popped
        if not rows or all(math.isfinite(out[k]) for k in self.watch):
            return None
        table = torch.stack(rows)
        bad = (~torch.isfinite(table)).any(1).nonzero()
        if len(bad) == 0:
            return 0, {k: out[k] for k in self.watch}
        first = int(bad[0])
        return len(rows) - 1 - first, dict(zip(self.watch, table[first].tolist()))

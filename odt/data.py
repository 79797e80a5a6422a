"""Trajectories: the unit of data everywhere in odt (datasets, replay buffer, rollouts)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np


@dataclass
class Trajectory:
    """One episode. Arrays are float32 (`terminals` bool) and share their first axis.

    `terminals[-1]` is True when the episode ended in a terminal state and False when it
    was cut off (time limit, or the tail of a dataset file).
    """

    observations: np.ndarray  # (T, obs_dim) float32
    actions: np.ndarray  # (T, act_dim) float32
    rewards: np.ndarray  # (T,) float32
    terminals: np.ndarray  # (T,) bool

    def __post_init__(self) -> None:
        self.observations = np.asarray(self.observations, dtype=np.float32)
        self.actions = np.asarray(self.actions, dtype=np.float32)
        self.rewards = np.asarray(self.rewards, dtype=np.float32).reshape(-1)
        self.terminals = np.asarray(self.terminals, dtype=bool).reshape(-1)
        n = len(self.rewards)
        if n == 0:
            raise ValueError("a trajectory needs at least one step")
        if self.observations.ndim != 2 or self.actions.ndim != 2:
            raise ValueError(
                f"observations and actions must be 2-D, got {self.observations.shape} and {self.actions.shape}"
            )
        for name in ("observations", "actions", "terminals"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} steps but rewards has {n}")

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def episode_return(self) -> float:
        return trajectory_return(self.rewards)

    @property
    def returns_to_go(self) -> np.ndarray:
        return returns_to_go(self.rewards)


def trajectory_return(rewards: np.ndarray) -> float:
    """Undiscounted return, accumulated in float64 so long episodes do not drift."""
    return float(np.sum(rewards, dtype=np.float64))


def returns_to_go(rewards: np.ndarray) -> np.ndarray:
    """g_t = sum_{j>=t} r_j (undiscounted, raw scale), float32."""
    r = np.asarray(rewards, dtype=np.float64)
    return np.cumsum(r[::-1])[::-1].astype(np.float32)


def state_stats(trajectories: list[Trajectory], eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of observations over all transitions: the offline data's normaliser."""
    n = sum(len(t) for t in trajectories)
    dim = trajectories[0].observations.shape[1]
    total = np.zeros(dim, dtype=np.float64)
    total_sq = np.zeros(dim, dtype=np.float64)
    for t in trajectories:  # streaming: never concatenates the dataset
        total += t.observations.sum(axis=0, dtype=np.float64)
        total_sq += np.square(t.observations, dtype=np.float64).sum(axis=0)
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0)) + eps
    return mean.astype(np.float32), std.astype(np.float32)


Data = Union[Sequence[Trajectory], str, os.PathLike]  # trajectories, or a D4RL-layout HDF5 file of them


def trajectories(data: Data, task: str | None = None) -> Sequence[Trajectory]:
    """`data` as trajectories: as given, or read from a D4RL-layout HDF5 file (`task` picks AntMaze's episode split
    and checks the dims; odt.datasets.hdf5)."""
    if not isinstance(data, (str, os.PathLike)):
        return data
    from odt.datasets.hdf5 import load_d4rl_hdf5  # noqa: PLC0415

    return load_d4rl_hdf5(data, task=task)

"""Trajectories: the unit of data everywhere in odt (datasets, replay buffer, rollouts)."""
from __future__ import annotations

from dataclasses import dataclass

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


def conditioned_returns_to_go(rewards: np.ndarray, target_return: float) -> np.ndarray:
    """The RTGs a rollout was conditioned on: g_t = target_return - sum_{j<t} r_j (raw scale), float32; what an
    online trajectory keeps without hindsight relabelling."""
    r = np.asarray(rewards, dtype=np.float64)
    return (target_return - (np.cumsum(r) - r)).astype(np.float32)

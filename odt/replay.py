"""Trajectory-level replay buffer and the length-proportional segment sampler (paper Sec. 4.2).

All transitions live in flat arrays, trajectories are (start, length) ranges into them,
so a batch is a handful of fancy-indexing operations and no Python loop over the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from odt.data import Trajectory, returns_to_go


@dataclass
class Batch:
    """B segments of K steps, left-padded (mask 0) when a segment runs past its trajectory."""

    states: np.ndarray  # (B, K, obs_dim) float32, raw (not normalised)
    actions: np.ndarray  # (B, K, act_dim) float32
    rewards: np.ndarray  # (B, K) float32
    returns_to_go: np.ndarray  # (B, K) float32, raw: sum of rewards from that step to the end
    timesteps: np.ndarray  # (B, K) int64, step index within the trajectory
    mask: np.ndarray  # (B, K) float32, 1 on real tokens, 0 on padding
    trajectory_ids: np.ndarray  # (B,) int64, position of each segment's trajectory in the buffer

    @property
    def padded(self) -> bool:
        return not bool(self.mask.all())


class TrajectoryReplayBuffer:
    """Top-`capacity` trajectories by return at initialisation; FIFO afterwards.

    Initial trajectories are kept in ascending order of return, so the first ones evicted
    by online data are the worst offline ones. Returns-to-go are computed from each
    trajectory's own rewards when it enters: hindsight return relabelling for online
    trajectories, plain RTGs for offline ones.
    """

    def __init__(self, capacity: int, trajectories: Sequence[Trajectory] = ()):
        if capacity <= 0:
            raise ValueError(f"replay buffer capacity must be positive, got {capacity}")
        self.capacity = int(capacity)
        ranked = sorted(trajectories, key=lambda t: t.episode_return)[-self.capacity :]
        if not ranked:
            raise ValueError("the replay buffer needs at least one trajectory to start from")
        self._set_storage(
            observations=np.concatenate([t.observations for t in ranked]),
            actions=np.concatenate([t.actions for t in ranked]),
            rewards=np.concatenate([t.rewards for t in ranked]),
            returns_to_go=np.concatenate([returns_to_go(t.rewards) for t in ranked]),
            terminals=np.concatenate([t.terminals for t in ranked]),
            lengths=np.array([len(t) for t in ranked], dtype=np.int64),
        )

    # storage ---------------------------------------------------------------------------
    def _set_storage(self, *, observations, actions, rewards, returns_to_go, terminals, lengths) -> None:
        self.observations = np.ascontiguousarray(observations, dtype=np.float32)
        self.actions = np.ascontiguousarray(actions, dtype=np.float32)
        self.rewards = np.ascontiguousarray(rewards, dtype=np.float32)
        self.returns_to_go = np.ascontiguousarray(returns_to_go, dtype=np.float32)
        self.terminals = np.ascontiguousarray(terminals, dtype=bool)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.starts = np.concatenate(([0], np.cumsum(self.lengths)[:-1])).astype(np.int64)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def num_transitions(self) -> int:
        return int(self.lengths.sum())

    def trajectory(self, i: int) -> Trajectory:
        """The i-th trajectory (0 = oldest), as views into the buffer: no copy."""
        s = slice(self.starts[i], self.starts[i] + self.lengths[i])
        return Trajectory(self.observations[s], self.actions[s], self.rewards[s], self.terminals[s])

    @property
    def trajectories(self) -> list[Trajectory]:
        return [self.trajectory(i) for i in range(len(self))]

    @property
    def episode_returns(self) -> np.ndarray:
        return np.add.reduceat(self.rewards.astype(np.float64), self.starts)

    def add(self, trajectories: Sequence[Trajectory]) -> None:
        """Append new trajectories, dropping the oldest beyond capacity (one copy per call)."""
        if not trajectories:
            return
        new = list(trajectories)[-self.capacity :]
        n_drop = max(0, len(self) + len(new) - self.capacity)
        cut = int(self.starts[n_drop]) if n_drop < len(self) else self.num_transitions
        self._set_storage(
            observations=np.concatenate([self.observations[cut:], *[t.observations for t in new]]),
            actions=np.concatenate([self.actions[cut:], *[t.actions for t in new]]),
            rewards=np.concatenate([self.rewards[cut:], *[t.rewards for t in new]]),
            returns_to_go=np.concatenate([self.returns_to_go[cut:], *[returns_to_go(t.rewards) for t in new]]),
            terminals=np.concatenate([self.terminals[cut:], *[t.terminals for t in new]]),
            lengths=np.concatenate([self.lengths[n_drop:], [len(t) for t in new]]),
        )

    # sampling --------------------------------------------------------------------------
    def sample(self, batch_size: int, context_len: int, rng: np.random.Generator) -> Batch:
        """Trajectory with probability |tau| / sum |tau|, then a uniform start index.

        Drawing a transition uniformly from all transitions gives exactly that joint
        distribution; the segment is [start, start + K) cut at the trajectory's end, and
        the missing steps are padded on the left.
        """
        K = context_len
        start = rng.integers(0, self.num_transitions, size=batch_size)
        traj = np.searchsorted(self.starts, start, side="right") - 1
        end = self.starts[traj] + self.lengths[traj]
        pad = K - np.minimum(K, end - start)  # (B,)
        offs = np.arange(K)
        mask = offs[None, :] >= pad[:, None]  # (B, K)
        idx = np.where(mask, start[:, None] + offs[None, :] - pad[:, None], start[:, None])
        states = self.observations[idx]
        actions = self.actions[idx]
        rewards = self.rewards[idx]
        rtg = self.returns_to_go[idx]
        timesteps = idx - self.starts[traj][:, None]
        if pad.any():
            pad_mask = ~mask
            states[pad_mask] = 0.0
            actions[pad_mask] = 0.0
            rewards[pad_mask] = 0.0
            rtg[pad_mask] = 0.0
            timesteps[pad_mask] = 0
        return Batch(states, actions, rewards, rtg, timesteps, mask.astype(np.float32), traj)

    # persistence -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray | int]:
        return {
            "capacity": self.capacity,
            "observations": self.observations,
            "actions": self.actions,
            "rewards": self.rewards,
            "returns_to_go": self.returns_to_go,
            "terminals": self.terminals,
            "lengths": self.lengths,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> "TrajectoryReplayBuffer":
        buf = cls.__new__(cls)
        buf.capacity = int(state["capacity"])
        buf._set_storage(**{k: np.asarray(v) for k, v in state.items() if k != "capacity"})
        return buf

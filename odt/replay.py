"""Trajectory-level replay buffer and the length-proportional segment sampler (paper Sec. 4.2).

All transitions live in flat arrays, trajectories are (start, length) ranges into them,
so a batch is a handful of fancy-indexing operations and no Python loop over the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from odt.data import Trajectory, returns_to_go


def _row_windows(a: np.ndarray, K: int) -> np.ndarray:
    """Every run of K consecutive rows of `a`, as a strided view (no copy): window i is a[i : i + K]."""
    return np.ndarray((len(a) - K + 1, K, *a.shape[1:]), a.dtype, buffer=a, strides=(a.strides[0], *a.strides))


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
        # Adopt the kept trajectories: their arrays become views of the storage (same values),
        # so a caller still holding the dataset list holds no second copy (benchmarks/memory.py).
        for t, s, n in zip(ranked, self.starts, self.lengths):
            rows = slice(s, s + n)
            t.observations, t.actions = self.observations[rows], self.actions[rows]
            t.rewards, t.terminals = self.rewards[rows], self.terminals[rows]

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
        traj_start = self.starts[traj]
        pad = K - np.minimum(K, traj_start + self.lengths[traj] - start)  # (B,)
        first = start - pad  # each segment is rows [first, first + K); its first `pad` slots become padding
        offs = np.arange(K)
        mask = offs[None, :] >= pad[:, None]  # (B, K)
        timesteps = (first - traj_start)[:, None] + offs[None, :]
        columns = (self.observations, self.actions, self.rewards, self.returns_to_go)
        if first.min() >= 0:  # one block copy per segment from a strided view (benchmarks/sampler.py)
            states, actions, rewards, rtg = (_row_windows(a, K)[first] for a in columns)
        else:  # a segment would start before row 0 (the first trajectory is shorter than K): row by row
            idx = np.where(mask, first[:, None] + offs[None, :], start[:, None])
            states, actions, rewards, rtg = (a.take(idx, axis=0) for a in columns)
        rows = np.flatnonzero(pad)
        if len(rows):  # zero the padding (rows of the previous trajectory in the window case)
            r, slots = np.nonzero(~mask[rows])
            for arr in (states, actions, rewards, rtg, timesteps):
                arr[rows[r], slots] = 0
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

"""Trajectory-level replay buffer and the length-proportional segment sampler (paper Sec. 4.2).

All transitions live in flat arrays, trajectories are (start, length) ranges into them,
so a batch is a handful of fancy-indexing operations and no Python loop over the batch.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

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
    """Top-`capacity` trajectories by return at initialisation (`init="random"`: `capacity` of them drawn with `rng`,
    without replacement); FIFO afterwards.

    Initial trajectories are kept in ascending order of return, so the first ones evicted
    by online data are the worst offline ones. Returns-to-go are computed from each
    trajectory's own rewards when it enters: hindsight return relabelling for online
    trajectories, plain RTGs for offline ones (`add` takes other RTGs for the ablation).
    """

    def __init__(self, capacity: int, trajectories: Sequence[Trajectory] = (), *,
                 init: Literal["top", "random"] = "top", rng: np.random.Generator | None = None):
        if capacity <= 0:
            raise ValueError(f"replay buffer capacity must be positive, got {capacity}")
        self.capacity = int(capacity)
        if init not in ("top", "random"):
            raise ValueError(f"init must be 'top' or 'random', got {init!r}")
        if init == "random" and len(trajectories) > self.capacity:
            if rng is None:
                raise ValueError("init='random' draws its trajectories with rng: pass one")
            trajectories = [trajectories[i] for i in rng.choice(len(trajectories), self.capacity, replace=False)]
        ranked = sorted(trajectories, key=lambda t: t.episode_return)[-self.capacity :]
        if not ranked:
            raise ValueError("the replay buffer needs at least one trajectory to start from")
        self._set_storage(
            self._pack([(t, returns_to_go(t.rewards)) for t in ranked]),
            terminals=np.concatenate([t.terminals for t in ranked]),
            lengths=np.array([len(t) for t in ranked], dtype=np.int64),
            obs_dim=ranked[0].observations.shape[1],
        )
        # Adopt the kept trajectories: their arrays become views of the storage (same values),
        # so a caller still holding the dataset list holds no second copy (benchmarks/memory.py).
        for t, s, n in zip(ranked, self.starts, self.lengths):
            rows = slice(s, s + n)
            t.observations, t.actions = self.observations[rows], self.actions[rows]
            t.rewards, t.terminals = self.rewards[rows], self.terminals[rows]

    # storage ---------------------------------------------------------------------------
    # One float32 table, a row per transition: [observation | action | reward | return-to-go].
    # A batch is then one gather of K-row windows instead of one per column.
    @staticmethod
    def _pack(parts: Sequence[tuple[Trajectory, np.ndarray]], head: np.ndarray | None = None) -> np.ndarray:
        """Rows of `head` (already packed), then each (trajectory, its RTGs), written once into a new table."""
        t0 = parts[0][0] if parts else None
        width = head.shape[1] if head is not None else t0.observations.shape[1] + t0.actions.shape[1] + 2
        n_head = 0 if head is None else len(head)
        table = np.empty((n_head + sum(len(t) for t, _ in parts), width), dtype=np.float32)
        if n_head:
            table[:n_head] = head
        row = n_head
        for t, rtg in parts:
            n, o, a = len(t), t.observations.shape[1], t.actions.shape[1]
            if o + a + 2 != width:
                raise ValueError(f"trajectory has obs {o} and act {a} dims; the buffer holds {width - 2} in all")
            block = table[row : row + n]
            block[:, :o], block[:, o : o + a], block[:, -2], block[:, -1] = t.observations, t.actions, t.rewards, rtg
            row += n
        return table

    def _set_storage(self, table: np.ndarray, *, terminals: np.ndarray, lengths: np.ndarray,
                     obs_dim: int | None = None) -> None:
        self._table = np.ascontiguousarray(table, dtype=np.float32)
        self.terminals = np.ascontiguousarray(terminals, dtype=bool)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.starts = np.concatenate(([0], np.cumsum(self.lengths)[:-1])).astype(np.int64)
        self.ends = self.starts + self.lengths  # one past each trajectory's last row
        if obs_dim is not None:
            self.obs_dim = int(obs_dim)

    @property
    def observations(self) -> np.ndarray:
        return self._table[:, : self.obs_dim]

    @property
    def actions(self) -> np.ndarray:
        return self._table[:, self.obs_dim : -2]

    @property
    def rewards(self) -> np.ndarray:
        return self._table[:, -2]

    @property
    def returns_to_go(self) -> np.ndarray:
        return self._table[:, -1]

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def num_transitions(self) -> int:
        return int(self.ends[-1])  # the buffer always holds at least one trajectory

    def trajectory(self, i: int) -> Trajectory:
        """The i-th trajectory (0 = oldest), as views into the buffer: no copy."""
        s = slice(self.starts[i], self.starts[i] + self.lengths[i])
        return Trajectory(self.observations[s], self.actions[s], self.rewards[s], self.terminals[s])

    @property
    def trajectories(self) -> list[Trajectory]:
        return [self.trajectory(i) for i in range(len(self))]

    @property
    def returns(self) -> np.ndarray:
        """Each trajectory's return (float64), oldest first."""
        return np.add.reduceat(self.rewards.astype(np.float64), self.starts)

    def add(self, trajectories: Sequence[Trajectory], rtgs: Sequence[np.ndarray] | None = None) -> None:
        """Append new trajectories, dropping the oldest beyond capacity (one copy per call). Their RTGs are the
        achieved returns-to-go (hindsight relabelling), or `rtgs`, one array per trajectory."""
        if not trajectories:
            return
        rtgs = [returns_to_go(t.rewards) for t in trajectories] if rtgs is None else list(rtgs)
        if len(rtgs) != len(trajectories) or any(len(g) != len(t) for g, t in zip(rtgs, trajectories)):
            raise ValueError("rtgs must hold one array per trajectory, as long as it")
        new = list(zip(trajectories, rtgs))[-self.capacity :]
        n_drop = max(0, len(self) + len(new) - self.capacity)
        cut = int(self.starts[n_drop]) if n_drop < len(self) else self.num_transitions
        self._set_storage(
            self._pack(new, head=self._table[cut:]),
            terminals=np.concatenate([self.terminals[cut:], *[t.terminals for t, _ in new]]),
            lengths=np.concatenate([self.lengths[n_drop:], [len(t) for t, _ in new]]),
        )

    # sampling --------------------------------------------------------------------------
    def sample(self, batch_size: int, context_len: int, rng: np.random.Generator) -> Batch:
        """Trajectory with probability |tau| / sum |tau|, then a uniform start index.

        Drawing a transition uniformly from all transitions gives exactly that joint
        distribution; the segment is [start, start + K) cut at the trajectory's end, and
        the missing steps are padded on the left.
        """
        K, n = context_len, self.num_transitions
        # A uniform row: floor(U * n) (cheaper than Generator.integers at this size), clamped
        # because U * n can round up to n. Sorted: a batch's order is immaterial, sorted keys
        # search and gather faster, and segment starts come out sorted too.
        start = (rng.random(batch_size) * n).astype(np.int64)
        start.sort()
        np.minimum(start, n - 1, out=start)
        traj = np.searchsorted(self.ends, start, side="right")
        # the segment [start, start + K) cut at the trajectory's end and left-padded to K is
        # rows [first, first + K) with its first `pad` slots zeroed
        first = np.minimum(start, self.ends[traj] - K)
        pad = start - first
        offs = np.arange(K)
        timesteps = (first - self.starts[traj])[:, None] + offs
        if first[0] >= 0:  # sorted, so first[0] is the smallest: one block copy per segment
            seg = _row_windows(self._table, K)[first]  # (B, K, obs + act + 2)
        else:  # a segment starts before row 0 (the first trajectory is shorter than K)
            seg = self._table.take(np.maximum(first[:, None] + offs, 0), axis=0)
        mask = offs >= pad[:, None]
        rows = np.flatnonzero(pad)
        if len(rows):  # zero the padding, only in the segments that have some
            seg[rows] *= mask[rows, :, None]
            timesteps[rows] *= mask[rows]
        o = self.obs_dim
        return Batch(seg[..., :o], seg[..., o:-2], seg[..., -2], seg[..., -1], timesteps, mask.astype(np.float32), traj)

    # persistence -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray | int]:
        return {"capacity": self.capacity, "obs_dim": self.obs_dim, "table": self._table,
                "terminals": self.terminals, "lengths": self.lengths}

    @classmethod
    def from_state_dict(cls, state: dict) -> TrajectoryReplayBuffer:
        buf = cls.__new__(cls)
        buf.capacity = int(state["capacity"])
        buf._set_storage(np.asarray(state["table"]), terminals=np.asarray(state["terminals"]),
                         lengths=np.asarray(state["lengths"]), obs_dim=int(state["obs_dim"]))
        return buf


def sampling_probabilities(trajectories: Sequence[Trajectory]) -> dict[str, np.ndarray]:
    """Figure F.1: each trajectory's probability of being sampled by length (what `sample` draws: |tau| / sum |tau|)
    and by return (importance sampling: R(tau) / sum R, returns below 0 counted as 0), with lengths and returns."""
    lengths = np.array([len(t) for t in trajectories], dtype=np.float64)
    returns = np.array([t.episode_return for t in trajectories], dtype=np.float64)
    positive = np.clip(returns, 0.0, None)
    if positive.sum() <= 0:
        raise ValueError("no trajectory has a positive return: return-proportional sampling is undefined")
    return {"length": lengths, "return": returns, "p_length": lengths / lengths.sum(),
            "p_return": positive / positive.sum()}

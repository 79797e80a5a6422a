"""Sampler: odt's vectorised TrajectoryReplayBuffer.sample vs a per-sample Python loop.

Both draw a trajectory with probability proportional to its length and a uniform start
within it, cut the segment [start, start + K) at the trajectory's end and pad it on the
left; `segment` below is the loop's body, and the smoke test checks that it rebuilds
odt's batch exactly. Two loop baselines:
- per segment: the RTGs of each segment are computed from the trajectory's rewards
  when it is sampled (what a loop sampler without an RTG store does; numpy cumsum);
- precomputed RTGs: the loop only slices, pads and stacks (isolates the gain of
  batching from the gain of storing RTGs once).
"""
from __future__ import annotations

import numpy as np

from benchmarks.common import Figure, Result, at_least, interleaved, synthetic_trajectories
from odt.data import Trajectory, returns_to_go
from odt.replay import TrajectoryReplayBuffer

TARGET = 100.0


def segment(t: Trajectory, start: int, K: int, rtg: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """One left-padded segment of trajectory `t` from `start`: the loop baseline's body."""
    obs = t.observations[start : start + K]
    n = len(obs)
    p = K - n
    rtg = returns_to_go(t.rewards[start:])[:n] if rtg is None else rtg[start : start + n]
    return (
        np.concatenate([np.zeros((p, obs.shape[1]), np.float32), obs]),
        np.concatenate([np.zeros((p, t.actions.shape[1]), np.float32), t.actions[start : start + n]]),
        np.concatenate([np.zeros(p, np.float32), t.rewards[start : start + n]]),
        np.concatenate([np.zeros(p, np.float32), rtg]),
        np.concatenate([np.zeros(p, np.int64), np.arange(start, start + n)]),
        np.concatenate([np.zeros(p, np.float32), np.ones(n, np.float32)]),
    )


def loop_sample(
    trajs: list[Trajectory], B: int, K: int, rng: np.random.Generator, rtgs: list[np.ndarray] | None = None
) -> tuple[np.ndarray, ...]:
    """The straightforward sampler: trajectory ids in one draw, then one Python iteration per segment."""
    lengths = np.array([len(t) for t in trajs])
    ids = rng.choice(len(trajs), size=B, p=lengths / lengths.sum())
    parts = []
    for i in ids:
        t = trajs[i]
        start = int(rng.integers(0, len(t)))
        parts.append(segment(t, start, K, None if rtgs is None else rtgs[i]))
    return tuple(np.stack(col) for col in zip(*parts))


def run(
    *,
    repeats: int = 5,
    batch_size: int = 256,
    context_len: int = 20,
    n_traj: int = 1000,
    max_len: int = 1000,
    loop_calls: int = 10,
    odt_calls: int = 200,
    seed: int = 0,
) -> Result:
    B, K = batch_size, context_len
    trajs = synthetic_trajectories(n_traj, min_len=max(1, min(20, max_len)), max_len=max_len, seed=seed)
    buf = TrajectoryReplayBuffer(len(trajs), trajs)
    stored = buf.trajectories  # the loop samples the same trajectories, in the buffer's order
    rtgs = [returns_to_go(t.rewards) for t in stored]
    rng = np.random.default_rng(seed + 1)

    def odt() -> None:
        for _ in range(odt_calls):
            buf.sample(B, K, rng)

    def loop_rtg() -> None:
        for _ in range(loop_calls):
            loop_sample(stored, B, K, rng)

    def loop_pre() -> None:
        for _ in range(loop_calls):
            loop_sample(stored, B, K, rng, rtgs)

    odt(), loop_rtg(), loop_pre()  # warm caches and allocator
    t = interleaved({"odt": odt, "loop": loop_rtg, "loop_pre": loop_pre}, repeats)
    per_call = {k: [s / (odt_calls if k == "odt" else loop_calls) for s, _ in v] for k, v in t.items()}
    ratio = [lo / o for lo, o in zip(per_call["loop"], per_call["odt"])]
    ratio_pre = [lo / o for lo, o in zip(per_call["loop_pre"], per_call["odt"])]
    figures = [
        Figure(f"per-segment loop / odt.replay sample (B={B}, K={K})", ratio, "x", f">= {TARGET:g}x",
               at_least(float(np.median(ratio)), TARGET)),
        Figure("loop over precomputed RTGs / odt.replay sample", ratio_pre, "x", f">= {TARGET:g}x",
               at_least(float(np.median(ratio_pre)), TARGET)),
    ]
    rows = [{"sampler": name, "median_us_per_batch": float(np.median(v)) * 1e6,
             "min_us": float(np.min(v)) * 1e6, "max_us": float(np.max(v)) * 1e6}
            for name, v in (("odt (vectorised)", per_call["odt"]), ("loop, RTG per segment", per_call["loop"]),
                            ("loop, precomputed RTG", per_call["loop_pre"]))]
    notes = [f"{len(trajs)} trajectories, lengths uniform in [{min(len(t) for t in trajs)}, "
             f"{max(len(t) for t in trajs)}], {buf.num_transitions} transitions, obs 11, act 3."]
    return Result("sampler", "Batch sampler", figures, rows, notes)

"""Small synthetic data shared by the core tests: trajectories whose every token says where it came from, actions a
small model can learn, episodes of a real environment."""
from __future__ import annotations

import numpy as np

from odt.data import Trajectory


def episodes(env, act, n: int, max_steps: int | None = None) -> list[Trajectory]:
    """`n` episodes of `env` (reset with seeds 0..n-1) acting `act(obs)`, cut at `max_steps` if given."""
    out = []
    for ep in range(n):
        obs, _ = env.reset(seed=ep)
        o, a, r, d = [], [], [], []
        while max_steps is None or len(o) < max_steps:
            action = act(obs)
            o.append(obs)
            obs, rew, term, trunc, _ = env.step(action)
            a.append(action), r.append(rew), d.append(term)
            if term or trunc:
                break
        out.append(Trajectory(np.array(o), np.array(a), np.array(r), np.array(d)))
    return out


def labelled_trajectories(lengths, obs_dim=4, act_dim=2, seed=0) -> list[Trajectory]:
    """observations[:, 0] = trajectory id, observations[:, 1] = step: every sampled token says where it came from."""
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(lengths):
        obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
        obs[:, 0] = i
        obs[:, 1] = np.arange(n)
        acts = np.tanh(rng.normal(size=(n, act_dim))).astype(np.float32)
        rewards = rng.uniform(0, 1, size=n).astype(np.float32)
        terminals = np.zeros(n, dtype=bool)
        terminals[-1] = True
        out.append(Trajectory(obs, acts, rewards, terminals))
    return out


def policy_dataset(n_traj=30, length=50, obs_dim=6, act_dim=2, seed=0) -> list[Trajectory]:
    """Actions are a fixed smooth function of the state: a policy a small model can learn."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(obs_dim, act_dim)) / np.sqrt(obs_dim)
    out = []
    for _ in range(n_traj):
        obs = rng.normal(size=(length, obs_dim)).astype(np.float32)
        acts = np.tanh(obs @ W).astype(np.float32) * 0.9
        rewards = rng.uniform(0, 1, size=length).astype(np.float32)
        out.append(Trajectory(obs, acts, rewards, np.zeros(length, dtype=bool)))
    return out

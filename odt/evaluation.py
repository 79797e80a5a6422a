"""Rollouts of the return-conditioned policy over a vector of environments.

One forward pass per environment step serves every environment still running, so
exploration (sampled actions, g_online) and evaluation (mean actions, g_eval) cost one
batched inference per step instead of one per environment.
"""
from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from odt.data import Trajectory
from odt.losses import TanhNormal
from odt.model import DecisionTransformer
from odt.tasks import normalized_score


@dataclass
class RolloutResult:
    returns: np.ndarray  # (N,) float64, raw undiscounted episode returns
    lengths: np.ndarray  # (N,) int64
    trajectories: list[Trajectory]  # raw observations, as a dataset stores them


class CudaGraphPolicy:
    """The inference forward for one (N envs, context K) shape, captured once as a CUDA graph.

    A forward of the small model is about a hundred tiny kernels; launched one by one
    from Python the GPU mostly waits for the host (measured: the forward alone capped
    N=10 rollouts at 0.47x the raw env rate on an H200). Replaying the graph launches
    them in one call. Inputs are copied into static buffers; the padded-mask path is
    always taken (a mask of ones is the unpadded case), so one graph serves every step.
    Parameters are read in place, so training between rollouts needs no recapture.
    """

    def __init__(self, model: DecisionTransformer, n: int, k: int):
        dev = next(model.parameters()).device
        self.states = torch.zeros(n, k, model.cfg.state_dim, device=dev)
        self.actions = torch.zeros(n, k, model.cfg.act_dim, device=dev)
        self.rtg = torch.zeros(n, k, device=dev)
        self.timesteps = torch.zeros(n, k, dtype=torch.long, device=dev)
        self.mask = torch.ones(n, k, device=dev)

        def forward():
            with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
                mean, log_std = model(self.states, self.actions, self.rtg, self.timesteps, self.mask, last_only=True)
            return mean.float(), None if log_std is None else log_std.float()

        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):  # warm-up off the capture stream, as CUDA graphs require
            for _ in range(2):
                forward()
        torch.cuda.current_stream(dev).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.mean, self.log_std = forward()

    def __call__(self, states, actions, rtg, timesteps, mask) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.states.copy_(states)
        self.actions.copy_(actions)
        self.rtg.copy_(rtg)
        self.timesteps.copy_(timesteps)
        if mask is None:
            self.mask.fill_(1.0)
        else:
            self.mask.copy_(mask)
        self.graph.replay()
        return self.mean, self.log_std


# captured graphs per model, by shape; dropped with the model. The key holds the
# parameters' addresses: moving or reallocating them makes a new capture.
_GRAPHS: weakref.WeakKeyDictionary[DecisionTransformer, dict] = weakref.WeakKeyDictionary()


def cuda_graph_policy(model: DecisionTransformer, n: int, k: int) -> CudaGraphPolicy | None:
    """The model's graph for this shape, captured on first use; None if capture fails (eager then)."""
    ptrs = tuple(p.data_ptr() for p in model.parameters())
    graphs = _GRAPHS.setdefault(model, {})
    for key in [key for key in graphs if key[-1] != ptrs]:
        del graphs[key]
    key = (n, k, ptrs)
    if key not in graphs:
        try:
            graphs[key] = CudaGraphPolicy(model, n, k)
        except RuntimeError as err:  # a kernel that cannot be captured here: run eagerly, say so once
            warnings.warn(f"CUDA graph capture of the policy failed ({err}); rollouts run eagerly", stacklevel=3)
            graphs[key] = None
    return graphs[key]


class _Context:
    """What the model reads at step t: the last K steps of every env (normalised states, actions, RTG tokens,
    timesteps), left-padded with K - 1 masked slots so that every forward pass has the same shape."""

    def __init__(self, model: DecisionTransformer, n: int, horizon: int, k: int, dims: tuple[int, int],
                 state_stats: tuple[np.ndarray, np.ndarray], cuda_graph: bool):
        device = next(model.parameters()).device
        (obs_dim, act_dim), pad = dims, k - 1  # pad: leading slots so that the window [t, t + K) is always in range
        self.model, self.n, self.k, self.pad, self.device = model, n, k, pad, device
        self.state_mean, self.state_std = (torch.as_tensor(x, dtype=torch.float32, device=device) for x in state_stats)
        self.states = torch.zeros(n, pad + horizon, obs_dim, device=device)
        self.actions = torch.zeros(n, pad + horizon, act_dim, device=device)
        self.rtg = torch.zeros(n, pad + horizon, device=device)
        self.time = torch.zeros(pad + horizon, dtype=torch.long, device=device)
        self.time[pad:] = torch.arange(horizon, device=device).clamp_max(model.cfg.max_ep_len - 1)
        self.slots = torch.arange(k, device=device)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
        self.graph = cuda_graph_policy(model, n, k) if cuda_graph and device.type == "cuda" else None

    def policy(self, t: int, obs: np.ndarray, rtg: np.ndarray, live: np.ndarray, rows) -> tuple[torch.Tensor, ...]:
        """The policy head's (mean, log_std) for the live envs' rows after observing `obs` with RTG `rtg` at step t."""
        K, N, pad, device = self.k, self.n, self.pad, self.device
        state = torch.as_tensor(obs, dtype=torch.float32, device=device)
        self.states[:, pad + t] = (state - self.state_mean) / self.state_std
        self.rtg[:, pad + t] = torch.as_tensor(rtg, dtype=torch.float32, device=device)
        window = slice(t, t + K)  # in padded coordinates: steps t-K+1 .. t
        # the first K - 1 steps: slots before step 0 are padding (the same in every row)
        slot_mask = (self.slots >= K - 1 - t).float() if t < K - 1 else None
        if self.graph is not None:  # all N rows, always; finished envs' rows are computed and ignored
            mean, log_std = self.graph(self.states[:, window], self.actions[:, window], self.rtg[:, window],
                                       self.time[window].expand(N, K),
                                       None if slot_mask is None else slot_mask.expand(N, K))
            if len(live) < N:
                mean, log_std = mean[rows], None if log_std is None else log_std[rows]
            return mean, log_std
        with self.autocast:
            return self.model(self.states[rows, window], self.actions[rows, window], self.rtg[rows, window],
                              self.time[window].expand(len(live), K),
                              None if slot_mask is None else slot_mask.expand(len(live), K), last_only=True)


def _act(mean: torch.Tensor, log_std: torch.Tensor | None, sample: bool) -> torch.Tensor:
    """The action of the last slot: sampled from the tanh-Gaussian (exploration) or its mode's tanh (evaluation)."""
    mean = mean[:, -1].float()
    if log_std is None:  # deterministic policy: the head already gives the action
        return mean
    if sample:
        return TanhNormal(mean, log_std[:, -1].float()).sample()
    return torch.tanh(mean)


@dataclass
class _Record:
    """What each env observed, did and received, step by step until it ended: its episode as a dataset stores it."""

    obs: np.ndarray  # (N, T, obs) float32
    act: np.ndarray  # (N, T, act) float32
    rew: np.ndarray  # (N, T) float32
    term: np.ndarray  # (N, T) bool
    lengths: np.ndarray  # (N,) int64

    @classmethod
    def empty(cls, n: int, horizon: int, obs_dim: int, act_dim: int) -> _Record:
        return cls(np.zeros((n, horizon, obs_dim), dtype=np.float32), np.zeros((n, horizon, act_dim), dtype=np.float32),
                   np.zeros((n, horizon), dtype=np.float32), np.zeros((n, horizon), dtype=bool),
                   np.zeros(n, dtype=np.int64))

    def step(self, t: int, live: np.ndarray, actions: np.ndarray, reward: np.ndarray, terminated: np.ndarray,
             truncated: np.ndarray) -> np.ndarray:
        """Step t of the live envs; returns the envs whose episode ended with it."""
        self.act[live, t] = actions[live]
        self.rew[live, t] = reward[live]
        self.lengths[live] += 1
        ended = live[(terminated | truncated)[live]]
        self.term[ended, t] = terminated[ended]
        return ended

    def result(self) -> RolloutResult:
        trajectories = [Trajectory(self.obs[i, :n], self.act[i, :n], self.rew[i, :n], self.term[i, :n])
                        for i, n in enumerate(self.lengths)]
        returns = np.array([t.episode_return for t in trajectories])
        return RolloutResult(returns=returns, lengths=self.lengths, trajectories=trajectories)


@torch.inference_mode()  # no autograd bookkeeping at all: cheaper than no_grad per op
def rollout(
    model: DecisionTransformer,
    envs: gym.vector.VectorEnv,
    *,
    target_return: float,
    state_mean: np.ndarray,
    state_std: np.ndarray,
    context_len: int,
    sample: bool,
    seeds: list[int] | None = None,
    max_steps: int | None = None,
    cuda_graph: bool = True,
) -> RolloutResult:
    """Run one episode in each of `envs.num_envs` environments.

    The context holds the last `context_len` steps (the evaluation context length),
    left-padded with mask 0 so every forward pass has the same shape. The RTG token
    starts at `target_return` and drops by each reward received (both scaled by the
    model's `reward_scale`). On CUDA the forward
    replays a captured graph (`cuda_graph=False`: eager kernels) and keeps computing
    rows of finished envs, so that its shape never changes.
    """
    N, T = envs.num_envs, max_steps or model.cfg.max_ep_len
    obs_dim, act_dim = envs.single_observation_space.shape[0], envs.single_action_space.shape[0]
    was_training = model.training
    model.eval()
    context = _Context(model, N, T, context_len, (obs_dim, act_dim), (state_mean, state_std), cuda_graph)
    record = _Record.empty(N, T, obs_dim, act_dim)
    done = np.zeros(N, dtype=bool)
    rtg = np.full(N, target_return * model.cfg.reward_scale, dtype=np.float64)
    live, rows = np.arange(N), slice(None)  # while every env runs, index with a slice: views, no gather
    obs, _ = envs.reset(seed=seeds)
    for t in range(T):
        record.obs[live, t] = obs[live]
        action = _act(*context.policy(t, obs, rtg, live, rows), sample)
        context.actions[rows, context.pad + t] = action
        actions = np.zeros((N, act_dim), dtype=np.float32)
        actions[live] = action.cpu().numpy()
        obs, reward, terminated, truncated, _ = envs.step(actions)
        ended = record.step(t, live, actions, reward, terminated, truncated)
        done[ended] = True
        rtg -= reward * model.cfg.reward_scale
        if len(ended):  # the set of live envs changed: rebuild the row index once, not every step
            if done.all():
                break
            live = np.flatnonzero(~done)
            rows = torch.as_tensor(live, device=context.device)
    model.train(was_training)
    return record.result()


def eval_seeds(seed: int, index: int, n: int) -> list[int]:
    """Episode seeds of the `index`-th evaluation of run `seed` with `n` episodes: every algorithm uses this rule,
    so they are scored on the same episodes, and a score never touches a training RNG."""
    return [(seed * 1_000_003 + index * n + i) % 2**31 for i in range(n)]


def run_episodes(
    act: Callable[[np.ndarray], np.ndarray], envs: gym.vector.VectorEnv, seeds: list[int]
) -> RolloutResult:
    """One episode per env of a Markov policy `act` (observations (N, obs) -> actions (N, act)): the baselines'
    evaluation."""
    N = envs.num_envs
    returns, lengths, done = np.zeros(N), np.zeros(N, dtype=np.int64), np.zeros(N, dtype=bool)
    obs, _ = envs.reset(seed=seeds)
    while not done.all():
        obs, reward, terminated, truncated, _ = envs.step(np.asarray(act(obs), dtype=np.float32))
        returns += np.where(done, 0.0, reward)
        lengths += ~done
        done |= terminated | truncated
    return RolloutResult(returns=returns, lengths=lengths, trajectories=[])


def evaluate(model: DecisionTransformer, envs: gym.vector.VectorEnv, **kwargs) -> RolloutResult:
    """Evaluation rollouts: the policy's mean action, one episode per environment."""
    return rollout(model, envs, sample=False, **kwargs)


def g_eval_sweep(model: DecisionTransformer, envs: gym.vector.VectorEnv, values: Sequence[float], *, seed: int,
                 task: str | None = None, **kwargs) -> list[dict[str, float]]:
    """Figure 4.2: the policy evaluated at each g_eval in `values`, every time on the episodes of evaluation 0 of
    run `seed`, so that only the return asked for changes; a row per value (g_eval, then `score`'s keys)."""
    seeds = eval_seeds(seed, 0, envs.num_envs)
    return [{"g_eval": g, **score(evaluate(model, envs, target_return=g, seeds=seeds, **kwargs), task)} for g in values]


def score(result: RolloutResult, task: str | None = None) -> dict[str, float]:
    """Mean and std over episodes of the raw return and, for a D4RL task, the normalized one (100 = expert).

    Episode lengths too: episodes of one length with no spread in return are a policy that
    always falls the same way.
    """
    out = {"eval_return": float(result.returns.mean()), "eval_return_std": float(result.returns.std()),
           "eval_length": float(result.lengths.mean()), "eval_length_std": float(result.lengths.std())}
    if task is not None:
        normalized = np.asarray(normalized_score(task, result.returns), dtype=np.float64)
        out |= {"eval_normalized": float(normalized.mean()), "eval_normalized_std": float(normalized.std())}
    return out

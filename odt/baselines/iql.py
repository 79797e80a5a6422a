"""Implicit Q-Learning (Kostrikov, Nair, Levine, ICLR 2022), offline then online: Table 5.1's IQL columns.

IQL never asks Q about actions outside the data: V(s) is fit to an upper expectile of
Q(s, a) over the dataset's actions, Q to r + gamma V(s'), and the policy by
advantage-weighted regression, maximising exp(beta (Q - V)) log pi(a|s). Online finetuning
keeps the offline transitions in the replay buffer, adds every environment step and takes
one gradient step per environment step (IQL's finetuning protocol, as the ODT paper ran it).
Rewards as IQL treats them: locomotion scaled by 1000 / (max - min trajectory return) of the
dataset, AntMaze shifted by -1.

    run = iql(trajectories, IQLConfig(offline_updates=..., online_samples=...), env_fn, task="hopper-medium-v2")

`iql()` runs the two phases in turn, each a loop shaped like odt.loops' (log, evaluate and
checkpoint inline): `_IQLRun.offline`, then `_IQLRun.online`; the run resumes from `checkpoint`.
A non-finite loss or score stops it with `Diverged` (odt/divergence.py), before anything of that
update is logged or saved.
"""
from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from odt.checkpoint import save_checkpoint
from odt.config import IQLConfig
from odt.data import Trajectory
from odt.divergence import Diverged
from odt.envs import check_dims, vector_env
from odt.logger import Logger, NullLogger
from odt.runs import (
    Average,
    Data,
    EnvFn,
    Run,
    evaluate_policy,
    headline,
    names_divergence,
    resolve_device,
    resume,
    trajectories,
)

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """|tau - 1(diff < 0)| diff^2: for tau > 0.5 errors above the fit cost more, so V rises towards max_a Q."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return weight * diff.pow(2)


def advantage_weights(q: torch.Tensor, v: torch.Tensor, temperature: float, max_weight: float) -> torch.Tensor:
    return torch.exp(temperature * (q - v)).clamp(max=max_weight)


def mlp(n_in: int, n_out: int, hidden: int, layers: int) -> nn.Sequential:
    dims = [n_in] + [hidden] * layers
    body = [m for a, b in zip(dims, dims[1:]) for m in (nn.Linear(a, b), nn.ReLU())]
    return nn.Sequential(*body, nn.Linear(dims[-1], n_out))


class IQLNetworks(nn.Module):
    """Twin Q and their targets, V, and a Gaussian policy with tanh mean and state-independent std (IQL's)."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: IQLConfig):
        super().__init__()
        h, n = cfg.hidden_dim, cfg.n_hidden
        self.q1, self.q2 = mlp(obs_dim + act_dim, 1, h, n), mlp(obs_dim + act_dim, 1, h, n)
        self.q1_target = copy.deepcopy(self.q1).requires_grad_(False)
        self.q2_target = copy.deepcopy(self.q2).requires_grad_(False)
        self.value = mlp(obs_dim, 1, h, n)
        self.actor = mlp(obs_dim, act_dim, h, n)
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def q(self, obs: torch.Tensor, act: torch.Tensor, target: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, act], -1)
        q1, q2 = (self.q1_target, self.q2_target) if target else (self.q1, self.q2)
        return q1(x).squeeze(-1), q2(x).squeeze(-1)

    def policy(self, obs: torch.Tensor) -> torch.distributions.Normal:
        std = self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp()
        return torch.distributions.Normal(torch.tanh(self.actor(obs)), std)


class IQL:
    """The learner: networks, three Adam optimisers (the actor's on a cosine schedule), one `update` per batch."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: IQLConfig, *, total_updates: int, device: str = "cpu"):
        self.cfg, self.device = cfg, resolve_device(device)
        self.nets = IQLNetworks(obs_dim, act_dim, cfg).to(self.device)
        n = self.nets
        self.critic_opt = torch.optim.Adam([*n.q1.parameters(), *n.q2.parameters()], lr=cfg.learning_rate)
        self.value_opt = torch.optim.Adam(n.value.parameters(), lr=cfg.learning_rate)
        self.actor_opt = torch.optim.Adam([*n.actor.parameters(), n.log_std], lr=cfg.learning_rate)
        total = max(1, total_updates)
        self.actor_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.actor_opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total)))
        self.num_updates = 0
        # on the CPU each loss is checked before its optimiser step (a host sync is free there); on CUDA the loop
        # checks a block of updates at its end (`_IQLRun.pop`)
        self.check_each_update = self.device.type != "cuda"

    def _finite(self, name: str, loss: torch.Tensor) -> None:
        """A non-finite loss stops the update before its step: its gradient never reaches the weights."""
        if self.check_each_update and not math.isfinite(value := float(loss.detach())):
            raise Diverged(self.num_updates + 1, name, value, learning_rate=self.cfg.learning_rate)

    def update(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Value, then policy, then Q, then the targets (the order of IQL's reference code)."""
        cfg, n = self.cfg, self.nets
        obs, act, rew, next_obs, done = (torch.as_tensor(batch[k], device=self.device)
                                         for k in ("obs", "act", "rew", "next_obs", "done"))
        with torch.no_grad():
            q_target = torch.min(*n.q(obs, act, target=True))
        v = n.value(obs).squeeze(-1)
        value_loss = expectile_loss(q_target - v, cfg.expectile).mean()
        self._finite("value loss", value_loss)
        self.value_opt.zero_grad(set_to_none=True)
        value_loss.backward()
        self.value_opt.step()

        with torch.no_grad():
            weights = advantage_weights(q_target, n.value(obs).squeeze(-1), cfg.temperature, cfg.max_weight)
        actor_loss = -(weights * n.policy(obs).log_prob(act).sum(-1)).mean()
        self._finite("actor loss", actor_loss)
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()
        self.actor_schedule.step()

        with torch.no_grad():
            backup = rew + cfg.discount * (1.0 - done) * n.value(next_obs).squeeze(-1)
        q1, q2 = n.q(obs, act)
        critic_loss = ((q1 - backup).pow(2) + (q2 - backup).pow(2)).mean()
        self._finite("critic loss", critic_loss)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        with torch.no_grad():
            for net, target in ((n.q1, n.q1_target), (n.q2, n.q2_target)):
                torch._foreach_lerp_(list(target.parameters()), list(net.parameters()), cfg.tau)
        self.num_updates += 1
        return {"value_loss": value_loss.detach(), "actor_loss": actor_loss.detach(),
                "critic_loss": critic_loss.detach(), "q": q_target.mean(), "v": v.detach().mean(),
                "weight": weights.mean()}

    @torch.no_grad()
    def act(self, obs: np.ndarray, *, deterministic: bool) -> np.ndarray:
        dist = self.nets.policy(torch.as_tensor(obs, dtype=torch.float32, device=self.device))
        action = dist.mean if deterministic else dist.sample()
        return action.clamp(-1.0, 1.0).cpu().numpy()

    def state_dict(self) -> dict[str, Any]:
        return {"nets": self.nets.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "value_opt": self.value_opt.state_dict(), "actor_opt": self.actor_opt.state_dict(),
                "actor_schedule": self.actor_schedule.state_dict(), "updates": self.num_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.nets.load_state_dict(state["nets"])
        for name in ("critic_opt", "value_opt", "actor_opt", "actor_schedule"):
            getattr(self, name).load_state_dict(state[name])
        self.num_updates = int(state["updates"])


class TransitionBuffer:
    """(s, a, r, s', done) in flat arrays: the offline data first, then FIFO over `capacity`; uniform batches."""

    KEYS = ("obs", "act", "rew", "next_obs", "done")

    def __init__(self, capacity: int, obs_dim: int, act_dim: int):
        self.capacity, self.size, self.next = int(capacity), 0, 0
        dims = {"obs": obs_dim, "act": act_dim, "next_obs": obs_dim}
        self.arrays = {k: np.zeros((self.capacity, *((dims[k],) if k in dims else ())), np.float32) for k in self.KEYS}

    def add(self, **transition: np.ndarray) -> None:
        """Rows of (obs, act, rew, next_obs, done), as many as given."""
        n = len(transition["rew"])
        rows = (self.next + np.arange(n)) % self.capacity
        for k in self.KEYS:
            self.arrays[k][rows] = transition[k]
        self.next, self.size = int((self.next + n) % self.capacity), min(self.capacity, self.size + n)

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        rows = rng.integers(0, self.size, size=batch_size)
        return {k: v[rows] for k, v in self.arrays.items()}

    def state_dict(self) -> dict[str, Any]:
        arrays = {k: torch.from_numpy(v[: self.size]) for k, v in self.arrays.items()}
        return {"size": self.size, "next": self.next, **arrays}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.size, self.next = int(state["size"]), int(state["next"])
        for k in self.KEYS:
            self.arrays[k][: self.size] = state[k].numpy()


def transitions(data: Sequence[Trajectory], scale: float, shift: float) -> dict[str, np.ndarray]:
    """Each trajectory's steps with their next observation; a cut-off trajectory's last step has none and is left
    out."""
    parts = []
    for t in data:
        n = len(t) if t.terminals[-1] else len(t) - 1
        if n == 0:
            continue
        nxt = np.concatenate([t.observations[1:], t.observations[-1:]])  # a terminal step's next state is masked
        parts.append((t.observations[:n], t.actions[:n], t.rewards[:n] * scale + shift, nxt[:n], t.terminals[:n]))
    return {k: np.concatenate([p[i] for p in parts]).astype(np.float32) for i, k in enumerate(TransitionBuffer.KEYS)}


def reward_transform(task: str | None, data: Sequence[Trajectory]) -> tuple[float, float]:
    """(scale, shift) as IQL treats rewards: AntMaze r - 1, locomotion r * 1000 / (max - min return)."""
    if task is not None and task.startswith("antmaze"):
        return 1.0, -1.0
    returns = [t.episode_return for t in data]
    spread = max(returns) - min(returns)
    return (1000.0 / spread if task is not None and spread > 0 else 1.0), 0.0


LOSSES = ("value_loss", "actor_loss", "critic_loss")  # checked for divergence


@names_divergence("iql")
def iql(data: Data, cfg: IQLConfig, env_fn: EnvFn, *, task: str | None = None, seed: int = 0, device: str = "cpu",
        logger: Logger | None = None, checkpoint: str | Path | None = None, progress: bool = True) -> Run:
    """`offline_updates` on the dataset, then `online_samples` environment steps with one update each.

    Offline: a row every `log_every` updates, then the offline score (the first evaluation, online_samples 0).
    Online: a row at each episode's end, an evaluation every `eval_every` steps and at the end. Checkpoints
    every `checkpoint_every` updates (online: at the next episode's end); called again with the same
    `checkpoint`, the run resumes there to the same numbers. A non-finite loss or score raises `Diverged`
    naming the update.
    """
    run = _IQLRun(trajectories(data, task), cfg, env_fn, task=task, seed=seed, device=device,
                  logger=logger or NullLogger(), checkpoint=checkpoint)
    with tqdm(total=cfg.offline_updates + cfg.online_samples, initial=run.agent.num_updates, desc="iql",
              disable=not progress, mininterval=1.0) as bar:
        if not run.evaluations:  # no offline score yet: the offline phase is still to run, or to finish
            run.offline(bar)
        run.online(bar)
    run.eval_envs.close()
    run.env.close()
    return Run(run.agent, run.evaluations, run.elapsed(), run.agent.num_updates, offline_score=run.evaluations[0])


class _IQLRun:
    """One IQL run: the learner, its transition buffer and sampling RNG, and the loop's progress (evaluations,
    online samples, IQL's reward transform, wall time), all of which a checkpoint holds, with the two phases."""

    def __init__(self, data: Sequence[Trajectory], cfg: IQLConfig, env_fn: EnvFn, *, task: str | None, seed: int,
                 device: str, logger: Logger, checkpoint: str | Path | None):
        self.cfg, self.task, self.seed, self.logger, self.checkpoint = cfg, task, seed, logger, checkpoint
        obs_dim, act_dim = data[0].observations.shape[1], data[0].actions.shape[1]
        torch.manual_seed(seed)
        self.agent = IQL(obs_dim, act_dim, cfg, total_updates=cfg.offline_updates + cfg.online_samples, device=device)
        self.buffer, self.rng = TransitionBuffer(cfg.buffer_size, obs_dim, act_dim), np.random.default_rng(seed)
        state = resume(checkpoint)
        if state is None:
            scale, shift = reward_transform(task, data)
            self.buffer.add(**{k: v[-cfg.buffer_size:] for k, v in transitions(data, scale, shift).items()})
            loop = {"evaluations": [], "online_samples": 0, "wall_time": 0.0, "scale": scale, "shift": shift}
        else:
            self.agent.load_state_dict(state["agent"])
            self.buffer.load_state_dict(state["buffer"])
            self.rng.bit_generator.state = state["numpy_rng"]
            torch.set_rng_state(state["torch_rng"])
            loop = state["loop"]
        self.evaluations, self.online_samples = loop["evaluations"], loop["online_samples"]
        self.scale, self.shift = loop["scale"], loop["shift"]
        self.eval_envs, self.env = vector_env(env_fn, cfg.eval_episodes), env_fn()
        check_dims(task, self.eval_envs, obs_dim, act_dim)
        self.start = time.perf_counter() - loop["wall_time"]
        self.average = Average(watch=() if self.agent.check_each_update else LOSSES)

    def offline(self, bar: Any) -> None:
        """The dataset alone: blocks of `log_every` updates, a row each, a checkpoint every `checkpoint_every`
        updates; the offline score ends it."""
        cfg, agent, done = self.cfg, self.agent, False
        while not done:
            n = min(cfg.log_every, cfg.offline_updates - agent.num_updates)
            for _ in range(n):
                self.average.add(agent.update(self.buffer.sample(cfg.batch_size, self.rng)))
            bar.update(n)
            done = agent.num_updates >= cfg.offline_updates
            averaged = self.pop()  # before the evaluation: a diverged block is named by its update
            scored = {"online_samples": 0, **self.evaluate(final=cfg.online_samples == 0)} if done else {}
            self.logger.log({**averaged, **scored, "wall_time": self.elapsed()}, agent.num_updates)
            if done or agent.num_updates % cfg.checkpoint_every == 0:
                self.save()

    def online(self, bar: Any) -> None:
        """One environment step, then one update, until `online_samples`: a row at each episode's end (and one for
        an evaluation mid-episode), a checkpoint at the first episode's end `checkpoint_every` steps on."""
        cfg, agent, since_save, obs = self.cfg, self.agent, 0, None
        while self.online_samples < cfg.online_samples:
            if obs is None:  # episodes start at checkpoints' boundaries, so a resumed run plays the same ones
                obs, _ = self.env.reset(seed=int(self.rng.integers(0, 2**31 - 1)))
                episode_return, episode_length = 0.0, 0
            action = agent.act(obs[None], deterministic=False)[0]
            next_obs, reward, terminated, truncated, _ = self.env.step(action)
            self.buffer.add(obs=obs[None], act=action[None], rew=np.array([reward * self.scale + self.shift]),
                            next_obs=next_obs[None], done=np.array([float(terminated)]))
            self.average.add(agent.update(self.buffer.sample(cfg.batch_size, self.rng)))
            self.online_samples += 1
            episode_return, episode_length, since_save = episode_return + reward, episode_length + 1, since_save + 1
            bar.update(1)
            last = self.online_samples >= cfg.online_samples
            scores = self.evaluate(final=last) if last or self.online_samples % cfg.eval_every == 0 else {}
            obs = None if terminated or truncated else next_obs
            if obs is None or last:
                self.logger.log({**self.pop(), **scores, "online_samples": self.online_samples,
                                 "explore_return": episode_return, "explore_length": episode_length,
                                 "wall_time": self.elapsed()}, agent.num_updates)
                if last or since_save >= cfg.checkpoint_every:
                    self.save()
                    since_save = 0
            elif scores:  # mid-episode: the evaluation's own row (every row carries wall_time, the sentinel)
                self.logger.log({**scores, "online_samples": self.online_samples, "wall_time": self.elapsed()},
                                agent.num_updates)

    def evaluate(self, *, final: bool) -> dict[str, float]:
        """Mean actions, one episode per evaluation env, on the seeds of (seed, evaluation number); the scores join
        the curve and are reported."""
        scores = evaluate_policy(functools.partial(self.agent.act, deterministic=True), self.eval_envs,
                                 seed=self.seed, index=len(self.evaluations), task=self.task,
                                 num_updates=self.agent.num_updates, learning_rate=self.cfg.learning_rate)
        self.evaluations.append({"online_samples": self.online_samples, **scores})
        self.logger.report(headline(scores), self.agent.num_updates, final)
        return scores

    def pop(self) -> dict[str, float]:
        """The losses and statistics averaged since the last row; on CUDA, a non-finite loss raises `Diverged`
        naming the first update at fault."""
        averaged = self.average.pop()
        fault = self.average.first_non_finite()
        if fault is not None:
            after, values = fault
            name = next(k for k in LOSSES if not math.isfinite(values[k]))
            raise Diverged(self.agent.num_updates - after, name.replace("_", " "), values[name],
                           learning_rate=self.cfg.learning_rate)
        return averaged

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def save(self) -> None:
        if self.checkpoint is not None:
            loop = {"evaluations": self.evaluations, "online_samples": self.online_samples, "wall_time": self.elapsed(),
                    "scale": self.scale, "shift": self.shift}
            save_checkpoint(self.checkpoint, {"agent": self.agent.state_dict(), "buffer": self.buffer.state_dict(),
                                              "numpy_rng": self.rng.bit_generator.state,
                                              "torch_rng": torch.get_rng_state(), "loop": loop})

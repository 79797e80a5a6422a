"""Soft Actor-Critic from scratch at the online budget (Haarnoja et al. 2018): Table 5.1's SAC column.

stable-baselines3's SAC with the paper's settings (two 256-unit layers, lr 3e-4, batch 256,
one update per environment step, automatic entropy tuning), uniformly random actions for
the first `random_steps` (at most a tenth of the budget). Evaluated like every other
algorithm here: deterministic actions, `eval_episodes` episodes on odt's evaluation seeds.

    run = sac(SACConfig(online_samples=...), env_fn, task="hopper-medium-v2", seed=0)

The loop is SB3's `learn`; evaluation, logging and checkpoints happen in its callback
(`_Callback`, after each environment step), through `_SACRun`. Checkpoints (weights,
optimisers, replay buffer, counters; no pickles) are taken after an episode's last step has
been stored and learned from; a resumed run starts a fresh episode there, so it continues the
same run but is not bit-identical to one never interrupted (SB3 does not keep the
environment's RNG).
Logged rows are stepped by environment steps (odt/logger.py says why): SAC makes one update per step
after its random phase, and each row carries `updates` too.
SB3 updates inside `learn`, out of reach: its logged losses (host floats already) are read after each
update, a non-finite one raises `Diverged` (odt/divergence.py), and the weights are checked before each
checkpoint and when SB3 cannot sample actions from them: no checkpoint or score holds a NaN.
"""
from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure

from odt.checkpoint import save_checkpoint
from odt.config import SACConfig
from odt.divergence import Diverged
from odt.envs import check_dims, vector_env
from odt.logger import Logger, NullLogger
from odt.runs import EnvFn, Run, evaluate_policy, headline, names_divergence, resume

BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")
LOSSES = ("train/critic_loss", "train/actor_loss", "train/ent_coef_loss", "train/ent_coef")  # SB3's, per update


@names_divergence("sac")
def sac(cfg: SACConfig, env_fn: EnvFn, *, task: str | None = None, seed: int = 0, device: str = "cpu",
        logger: Logger | None = None, checkpoint: str | Path | None = None, progress: bool = True) -> Run:
    """SAC for `cfg.online_samples` environment steps; evaluations at 0, every `eval_every` steps and at the end."""
    env, eval_envs = env_fn(), vector_env(env_fn, cfg.eval_episodes)
    model = SAC("MlpPolicy", env, learning_rate=cfg.learning_rate,
                buffer_size=min(cfg.buffer_size, max(1, cfg.online_samples)),
                learning_starts=min(cfg.random_steps, cfg.online_samples // 10), batch_size=cfg.batch_size, tau=cfg.tau,
                gamma=cfg.discount, train_freq=1, gradient_steps=1,
                policy_kwargs={"net_arch": [cfg.hidden_dim] * cfg.n_hidden}, seed=seed, device=device)
    model.set_logger(configure(None, []))  # SB3's own output off; its latest losses are read below
    check_dims(task, eval_envs, *env.observation_space.shape, *env.action_space.shape)
    state = resume(checkpoint)
    loop = {"evaluations": [], "wall_time": 0.0} if state is None else _restore(model, state)
    run = _SACRun(model, cfg, eval_envs, logger or NullLogger(), checkpoint, seed=seed, task=task,
                  evaluations=loop["evaluations"], start=time.perf_counter() - loop["wall_time"])
    if not run.evaluations:  # the initial policy, before any step: the curve's first point
        run.logger.log({"online_samples": 0, **run.evaluate(cfg.online_samples == 0), "wall_time": run.elapsed()}, 0)
    remaining = cfg.online_samples - model.num_timesteps
    if remaining > 0:
        try:
            model.learn(total_timesteps=remaining, callback=_Callback(run), reset_num_timesteps=state is None,
                        progress_bar=progress)
        except ValueError:  # torch's Normal refusing a NaN mean: SB3 sampled from weights the last update broke
            run.check(weights=True)
            raise
    run.check(weights=True)  # the last update came after the last callback
    if run.evaluations[-1]["online_samples"] < cfg.online_samples:  # the budget ended mid-callback bookkeeping
        run.evaluate(True)
    run.save()
    env.close()
    eval_envs.close()
    return Run(model, run.evaluations, run.elapsed(), model._n_updates)


class _SACRun:
    """What the loop around SB3's `learn` keeps: evaluations, wall time, where to log and checkpoint."""

    def __init__(self, model: SAC, cfg: SACConfig, eval_envs: Any, logger: Logger, checkpoint: str | Path | None, *,
                 seed: int, task: str | None, evaluations: list[dict[str, float]], start: float):
        self.model, self.cfg, self.eval_envs, self.logger, self.checkpoint = model, cfg, eval_envs, logger, checkpoint
        self.seed, self.task, self.evaluations, self.start = seed, task, evaluations, start

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def evaluate(self, final: bool) -> dict[str, float]:
        """Deterministic actions on the seeds of (seed, evaluation number); the scores join the curve and are
        reported."""
        model = self.model
        scores = evaluate_policy(lambda o: model.predict(o, deterministic=True)[0], self.eval_envs, seed=self.seed,
                                 index=len(self.evaluations), task=self.task, num_updates=model._n_updates,
                                 learning_rate=self.cfg.learning_rate)
        self.evaluations.append({"online_samples": model.num_timesteps, **scores})
        self.logger.report(headline(scores), model.num_timesteps, final)
        return scores

    def check(self, weights: bool = False) -> None:
        """The latest update's losses as SB3 logged them, and with `weights` the networks' (a gradient can be
        non-finite under a finite loss): a non-finite one stops the run before anything is saved or scored."""
        model, diverged = self.model, functools.partial(Diverged, learning_rate=self.cfg.learning_rate)
        for key in LOSSES:
            value = model.logger.name_to_value.get(key)
            if value is not None and not math.isfinite(value):
                raise diverged(model._n_updates, key.removeprefix("train/").replace("_", " "), float(value))
        if weights:
            with torch.no_grad():
                norm = float(torch.stack([p.norm() for p in model.policy.parameters()]).norm())
            if not math.isfinite(norm):
                raise diverged(model._n_updates, "weight norm", norm)

    def save(self) -> None:
        self.check(weights=True)
        if self.checkpoint is not None:
            save_checkpoint(self.checkpoint, _state(self.model, {"evaluations": self.evaluations,
                                                                 "wall_time": self.elapsed()}))


class _Callback(BaseCallback):
    """After each environment step (SB3 stored it and made its update): evaluate every `eval_every` steps, log a
    row at an episode's end (every `log_every` steps or more) and with each evaluation, checkpoint between two
    steps after an episode's end every `checkpoint_every` steps or more."""

    def __init__(self, run: _SACRun) -> None:
        super().__init__()
        self.run = run
        self.episode_return, self.episode_length = 0.0, 0
        self.logged = self.saved = run.model.num_timesteps
        self.due = False  # an episode ended and a checkpoint is due: taken before the next step

    def _on_step(self) -> bool:
        run, model, cfg = self.run, self.run.model, self.run.cfg
        run.check()
        steps, last = model.num_timesteps, model.num_timesteps >= cfg.online_samples
        self.episode_return += float(self.locals["rewards"][0])
        self.episode_length += 1
        scores = run.evaluate(last) if last or steps % cfg.eval_every == 0 else {}
        ended = bool(self.locals["dones"][0])
        if scores or last or (ended and steps - self.logged >= cfg.log_every):
            losses = {k.removeprefix("train/"): v for k, v in model.logger.name_to_value.items()
                      if k in ("train/actor_loss", "train/critic_loss", "train/ent_coef")}
            episode = {"explore_return": self.episode_return, "explore_length": self.episode_length} if ended else {}
            run.logger.log({**losses, **scores, **episode, "online_samples": steps, "updates": model._n_updates,
                            "wall_time": run.elapsed()}, steps)
            self.logged = steps
        if ended:
            self.episode_return, self.episode_length = 0.0, 0
            self.due = steps - self.saved >= cfg.checkpoint_every
        return True

    def _on_rollout_start(self) -> None:
        """Between two steps: the last step's transition is stored and its update made, a consistent state."""
        self.run.check()
        if self.due:
            self.run.save()
            self.saved, self.due = self.run.model.num_timesteps, False


def _state(model, loop: dict[str, Any]) -> dict[str, Any]:
    """Weights, optimisers, entropy coefficient, replay buffer, counters and RNGs, as tensors and numbers only."""
    buf = model.replay_buffer
    size = buf.buffer_size if buf.full else buf.pos
    np_state = np.random.get_state()  # SB3 samples its replay buffer with numpy's global generator
    return {"params": model.get_parameters(), "log_ent_coef": model.log_ent_coef.detach().cpu(),
            "num_timesteps": model.num_timesteps, "n_updates": model._n_updates, "pos": buf.pos, "full": buf.full,
            "buffer": {k: torch.from_numpy(np.ascontiguousarray(getattr(buf, k)[:size])) for k in BUFFER_ARRAYS},
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": [torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "loop": loop}


def _restore(model, state: dict[str, Any]) -> dict[str, Any]:
    model.set_parameters(state["params"], exact_match=True)
    with torch.no_grad():
        model.log_ent_coef.copy_(state["log_ent_coef"])
    model.num_timesteps, model._n_updates = int(state["num_timesteps"]), int(state["n_updates"])
    buf = model.replay_buffer
    for k in BUFFER_ARRAYS:
        array = state["buffer"][k].numpy()
        getattr(buf, k)[: len(array)] = array
    buf.pos, buf.full = int(state["pos"]), bool(state["full"])
    torch.set_rng_state(state["torch_rng"])
    keys, *rest = state["numpy_rng"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), *rest))
    return state["loop"]

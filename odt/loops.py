"""The paper's two loops: offline pretraining (Algorithm 2) and online finetuning (Algorithm 1).

Each loop reads top to bottom: what happens at update N, or in round N (train, evaluate,
log, checkpoint), is inline. Given a `checkpoint` path, a loop writes there everything it
needs to continue, and called again with the same arguments it resumes from that file to
the same numbers as a run that was never interrupted (a finished run returns at once).
A non-finite loss, gradient norm or score stops a loop with `Diverged` (odt/divergence.py), one
line naming the phase, task, seed, update and the learning rate to lower; nothing of that
update is logged and no checkpoint is written after it.

    run = pretrain(trajectories, model_cfg, PretrainConfig(...), env_fn, task="hopper-medium-v2")
    run = finetune(run.trainer, FinetuneConfig(...), env_fn, seed=1, offline=pretrain_cfg)
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from odt.checkpoint import load_checkpoint, save_checkpoint
from odt.config import EvalConfig, FinetuneConfig, ModelConfig, PretrainConfig
from odt.data import conditioned_returns_to_go
from odt.envs import check_dims, vector_env
from odt.evaluation import RolloutResult
from odt.logger import Logger, NullLogger
from odt.replay import TrajectoryReplayBuffer
from odt.runs import Data, EnvFn, Run, headline, names_divergence, resume, trajectories
from odt.trainer import ODTTrainer

# what a run's dynamics keep of a logged row: where in finetuning, then the training metrics
DYNAMICS = ("round", "online_samples", "g_online", "loss", "nll", "entropy", "temperature")


@names_divergence("pretrain")
def pretrain(data: Data, model_cfg: ModelConfig, cfg: PretrainConfig, env_fn: EnvFn, *, task: str | None = None,
             seed: int = 0, device: str = "auto", logger: Logger | None = None, checkpoint: str | Path | None = None,
             progress: bool = True) -> Run:
    """Algorithm 2: `cfg.pretrain_updates` updates on the offline data (all of it in the buffer; trajectories, or
    a D4RL-layout HDF5 file read with `task`).

    Logs a row every `log_every` updates, evaluates every `eval_every` and at the end (the
    final evaluation uses index 0, the rule finetuning's offline score uses too), and
    checkpoints every `checkpoint_every` updates and at the end.
    """
    logger = logger or NullLogger()
    state = resume(checkpoint)
    data = trajectories(data, task)
    if state is None:
        buffer = TrajectoryReplayBuffer(len(data), data)
        trainer = ODTTrainer(model_cfg, cfg, buffer, seed=seed, device=device, task=task)
        evaluations, dynamics, elapsed = [], [], 0.0
    else:
        trainer = ODTTrainer.from_state(state["trainer"], optim=cfg, device=device, data=data)
        evaluations, dynamics, elapsed = state["evaluations"], state.get("dynamics", []), state["wall_time"]
    envs = _envs(env_fn, cfg.eval_episodes, trainer)  # a dims mismatch fails here, before any update
    start = time.perf_counter() - elapsed
    total = cfg.pretrain_updates
    with tqdm(total=total, initial=trainer.num_updates, desc="pretrain", disable=not progress, mininterval=1.0) as bar:
        while not evaluations or evaluations[-1]["updates"] < total:  # the final evaluation ends the run
            n = min(cfg.log_every, total - trainer.num_updates)
            metrics = trainer.train_updates(n)
            step = trainer.num_updates
            bar.update(n)
            bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.3f}", refresh=False)
            last = step >= total
            if last or (cfg.eval_every and step % cfg.eval_every == 0):
                evaluation = trainer.evaluate(envs, cfg, index=0 if last else step)
                evaluations.append({"updates": step, **evaluation})
                metrics |= evaluation
                logger.report(headline(evaluation), step, last)
            logger.log({**metrics, "wall_time": time.perf_counter() - start}, step)
            dynamics.append(_dynamics(step, metrics))
            if last or step % cfg.checkpoint_every == 0:  # the buffer is the offline data: not copied
                _save(checkpoint, trainer, buffer=False, evaluations=evaluations, dynamics=dynamics,
                      wall_time=time.perf_counter() - start)
    envs.close()
    return Run(trainer, evaluations, time.perf_counter() - start, trainer.num_updates, online=False, dynamics=dynamics)


@names_divergence("finetune")
def finetune(pretrained: ODTTrainer | str | Path, cfg: FinetuneConfig, env_fn: EnvFn, *, data: Data | None = None,
             seed: int = 0, offline: EvalConfig | None = None, device: str = "auto", logger: Logger | None = None,
             checkpoint: str | Path | None = None, progress: bool = True) -> Run:
    """Algorithm 1: rounds of exploration and updates from a pretrained trainer until `cfg.online_samples`.

    `pretrained` (a trainer, left untouched, or its checkpoint file with `data`, the offline
    trajectories or their HDF5 file, which pretraining checkpoints do not copy) starts with `seed`'s own RNG
    streams and the top `buffer_size` offline trajectories (`buffer_init`). It is scored first with
    `offline`'s evaluation settings (the pretraining's; default: `cfg`'s) and with `cfg`'s
    (the curve's first point). Each round explores with g_online (or the curriculum's RTG),
    adds the rollouts to the buffer (FIFO, hindsight RTGs unless `hindsight_relabel` is off)
    and runs `updates_per_round` updates; every `eval_every_rounds` rounds and at the end it
    evaluates with g_eval. Each round's training metrics are kept as `Run.dynamics`.
    """
    logger = logger or NullLogger()
    state = resume(checkpoint)
    trainer = _online_trainer(pretrained, cfg, seed=seed, device=device, data=data) if state is None \
        else ODTTrainer.from_state(state["trainer"], optim=cfg, device=device)
    eval_envs = _envs(env_fn, cfg.eval_episodes, trainer)
    explore_envs = vector_env(env_fn, cfg.rollouts_per_round)
    if state is None:  # the starting policy scored: the offline score, and the curve's first point
        start = time.perf_counter()
        offline_score, first = _score_start(trainer, cfg, offline, env_fn, eval_envs)
        evaluations, rounds, online_samples, dynamics = [{"round": 0, "online_samples": 0, **first}], 0, 0, []
        logger.report(headline(first), trainer.num_updates, cfg.online_samples == 0)
        logger.log({"online_samples": 0, **{k.replace("eval_", "offline_"): v for k, v in offline_score.items()},
                    **first, "wall_time": time.perf_counter() - start}, trainer.num_updates)
        _save(checkpoint, trainer, buffer=True, evaluations=evaluations, offline=offline_score, rounds=0,
              online_samples=0, dynamics=dynamics, wall_time=time.perf_counter() - start)
    else:
        evaluations, offline_score, dynamics = state["evaluations"], state["offline"], state.get("dynamics", [])
        rounds, online_samples = state["rounds"], state["online_samples"]
        start = time.perf_counter() - state["wall_time"]
    budget = cfg.online_samples
    with tqdm(total=budget, initial=min(online_samples, budget), desc="finetune", unit="step", disable=not progress,
              mininterval=1.0) as bar:
        while online_samples < budget:
            result, g_online = _explore(trainer, explore_envs, cfg)
            bar.update(min(online_samples + int(result.lengths.sum()), budget) - online_samples)
            online_samples += int(result.lengths.sum())
            rounds += 1
            metrics = trainer.train_updates(cfg.updates_per_round)
            metrics |= {"online_samples": online_samples, "round": rounds, "g_online": g_online,
                        "explore_return": float(result.returns.mean()), "explore_length": float(result.lengths.mean())}
            last = online_samples >= budget
            if last or rounds % cfg.eval_every_rounds == 0:
                evaluation = trainer.evaluate(eval_envs, cfg, index=rounds)
                evaluations.append({"round": rounds, "online_samples": online_samples, **evaluation})
                metrics |= evaluation
                bar.set_postfix(eval_return=f"{evaluation['eval_return']:.1f}", refresh=False)
                logger.report(headline(evaluation), trainer.num_updates, last)
            logger.log({**metrics, "wall_time": time.perf_counter() - start}, trainer.num_updates)
            dynamics.append(_dynamics(trainer.num_updates, metrics))
            if last or rounds % cfg.checkpoint_every_rounds == 0:
                _save(checkpoint, trainer, buffer=True, evaluations=evaluations, offline=offline_score, rounds=rounds,
                      online_samples=online_samples, dynamics=dynamics, wall_time=time.perf_counter() - start)
    eval_envs.close()
    explore_envs.close()
    return Run(trainer, evaluations, time.perf_counter() - start, trainer.num_updates, offline_score,
               dynamics=dynamics)


def _online_trainer(pretrained: ODTTrainer | str | Path, cfg: FinetuneConfig, *, seed: int, device: str,
                    data: Data | None) -> ODTTrainer:
    """The pretrained trainer (a copy, or read from its checkpoint file) with the finetuning's optimiser values,
    `seed`'s own RNG streams and the top `buffer_size` offline trajectories in its buffer."""
    if isinstance(pretrained, (str, Path)):
        trainer = ODTTrainer.from_state(load_checkpoint(pretrained)["trainer"], device=device, data=data)
    else:
        trainer = pretrained.copy()
    if cfg.init_temperature is not None:  # lambda restarts there, with fresh moments; else it continues
        with torch.no_grad():
            trainer.log_temperature.fill_(math.log(cfg.init_temperature))
        trainer.temperature_optimizer.state.clear()
    trainer.switch_phase(cfg, restart_warmup=cfg.restart_warmup)  # (a CUDA graph is captured again after it)
    trainer.reseed(seed)
    # top-N offline (or N drawn with the seed's training RNG)
    trainer.buffer = TrajectoryReplayBuffer(cfg.buffer_size, trainer.buffer.trajectories, init=cfg.buffer_init,
                                            rng=trainer.rng)
    return trainer


def _score_start(trainer: ODTTrainer, cfg: FinetuneConfig, offline: EvalConfig | None, env_fn: EnvFn,
                 eval_envs: gym.vector.VectorEnv) -> tuple[dict[str, float], dict[str, float]]:
    """The starting policy's (offline score with `offline`'s evaluation settings, first point with `cfg`'s); without
    `offline`, both are the one evaluation with `cfg`'s."""
    if offline is None:
        first = trainer.evaluate(eval_envs, cfg, index=0)
        return first, first
    same = offline.eval_episodes == cfg.eval_episodes
    offline_envs = eval_envs if same else vector_env(env_fn, offline.eval_episodes)
    return trainer.evaluate(offline_envs, offline, index=0), trainer.evaluate(eval_envs, cfg, index=0)


def exploration_rtg(cfg: FinetuneConfig, buffer: TrajectoryReplayBuffer) -> float:
    """The RTG a round explores with: g_online, or with `curriculum_percentile` q the q-th percentile of the returns
    of the trajectories in the buffer now (Sec. 5.2, Fig. 5.3)."""
    if cfg.curriculum_percentile is None:
        return float(cfg.g_online)
    return float(np.percentile(buffer.returns, cfg.curriculum_percentile))


def _explore(trainer: ODTTrainer, envs: gym.vector.VectorEnv, cfg: FinetuneConfig) -> tuple[RolloutResult, float]:
    """One round's rollouts, with their exploration RTG, added to the buffer: with the RTGs they achieved (hindsight
    relabelling) or, with `hindsight_relabel` off, those they were conditioned on."""
    g_online = exploration_rtg(cfg, trainer.buffer)
    result = trainer.explore(envs, cfg, g_online)
    trainer.buffer.add(result.trajectories, None if cfg.hindsight_relabel else
                       [conditioned_returns_to_go(t.rewards, g_online) for t in result.trajectories])
    return result, g_online


def _dynamics(updates: int, metrics: dict[str, float]) -> dict[str, float]:
    """A row of the training dynamics (Fig. 4.1, G.1): the update count, where in finetuning (round, online samples,
    g_online), then loss, NLL, entropy and lambda averaged over the updates since the last row (a deterministic
    model has the loss only)."""
    return {"updates": updates} | {k: metrics[k] for k in DYNAMICS if k in metrics}


def _envs(env_fn: EnvFn, n: int, trainer: ODTTrainer) -> gym.vector.VectorEnv:
    envs = vector_env(env_fn, n)
    check_dims(trainer.task, envs, trainer.model_cfg.state_dim, trainer.model_cfg.act_dim)
    return envs


def _save(checkpoint: str | Path | None, trainer: ODTTrainer, *, buffer: bool, **loop: Any) -> None:
    """The trainer (`buffer`: with its replay buffer) and the loop's own state: all a rerun needs."""
    if checkpoint is not None:
        save_checkpoint(checkpoint, {"trainer": trainer.state_dict(buffer=buffer), **loop})

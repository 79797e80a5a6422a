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

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
from tqdm.auto import tqdm

from odt import curves
from odt.checkpoint import load_checkpoint, save_checkpoint
from odt.config import EvalConfig, FinetuneConfig, PretrainConfig
from odt.data import Data, trajectories
from odt.envs import check_dims, vector_env
from odt.logger import Logger, NullLogger
from odt.model import ModelConfig
from odt.replay import TrajectoryReplayBuffer
from odt.divergence import Diverged
from odt.trainer import ODTTrainer

EnvFn = Callable[[], gym.Env]


@dataclass
class Run:
    """What a loop leaves: the trainer, its evaluations in order (the last is the final score), wall time."""

    trainer: Any  # ODTTrainer; a baseline's learner for odt.baselines
    evaluations: list[dict[str, float]]  # pretraining: {"updates", eval_*}; online: {"online_samples", eval_*, ...}
    wall_time: float  # seconds, summed over every resumed piece
    offline: dict[str, float] | None = None  # an online run's starting policy, scored (eval_* keys)
    online: bool = True  # False: an offline run (pretraining), whose final evaluation is its offline score

    @property
    def final(self) -> dict[str, float]:
        return self.evaluations[-1]

    def write_curve(self, path: str | Path) -> Path:
        """The evaluations as CSV (odt.curves): the x columns they have (round, online_samples; or updates), the scores."""
        x = [k for k in ("round", "online_samples", "updates") if k in self.final]
        return curves.write_csv(Path(path), self.evaluations, [*x, *curves.SCORES])

    def scores(self) -> dict[str, float]:
        """The scores a results table reads: offline_* (the policy before any online sample: pretraining's final
        one, or an online run's start), online_* (after the online budget), best_* (the best on the way)."""
        def scored(prefix: str, e: dict[str, float]) -> dict[str, float]:
            keys = ("normalized", "normalized_std", "return", "return_std", "length", "length_std")
            return {f"{prefix}_{k}": e[f"eval_{k}"] for k in keys if f"eval_{k}" in e}

        start = self.offline if self.online else self.final
        out = scored("offline", start) if start is not None else {}
        if self.online:
            out |= scored("online", self.final) | {"online_samples": self.final["online_samples"]}
        best = max(self.evaluations, key=lambda e: e.get("eval_normalized", e["eval_return"]))
        at = "updates" if "updates" in best else "online_samples"
        return out | {k.replace("offline", "best"): v for k, v in scored("offline", best).items() if "std" not in k} | {
            f"best_{at}": best[at], "wall_time": self.wall_time}


def names_divergence(phase: str):
    """A loop whose `Diverged` is re-raised as one line naming `phase`, the task and seed (as the learner
    named them, else the loop's `task` and `seed` keywords) and the setting to lower, `<phase>.learning_rate`."""
    def wrap(loop: Callable[..., Run]) -> Callable[..., Run]:
        @functools.wraps(loop)
        def run(*args: Any, **kwargs: Any) -> Run:
            try:
                return loop(*args, **kwargs)
            except Diverged as err:
                task, seed = kwargs.get("task"), kwargs.get("seed", 0)
                who = err.where or (f"{task} seed {seed}" if task else f"seed {seed}")
                raise err.named(f"{phase} {who}", f"{phase}.learning_rate") from None
        return run
    return wrap


@names_divergence("pretrain")
def pretrain(
    data: Data,
    model_cfg: ModelConfig,
    cfg: PretrainConfig,
    env_fn: EnvFn,
    *,
    task: str | None = None,
    seed: int = 0,
    device: str = "auto",
    logger: Logger | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
) -> Run:
    """Algorithm 2: `cfg.pretrain_updates` updates on the offline data (all of it in the buffer; trajectories, or
    a D4RL-layout HDF5 file read with `task`).

    Logs a row every `log_every` updates, evaluates every `eval_every` and at the end (the
    final evaluation uses index 0, the rule finetuning's offline score uses too), and
    checkpoints every `checkpoint_every` updates and at the end.
    """
    logger = logger or NullLogger()
    state = _resume(checkpoint)
    data = trajectories(data, task)
    if state is None:
        trainer = ODTTrainer(model_cfg, cfg, TrajectoryReplayBuffer(len(data), data), seed=seed, device=device, task=task)
        evaluations, elapsed = [], 0.0
    else:
        trainer = ODTTrainer.from_state(state["trainer"], optim=cfg, device=device, data=data)
        evaluations, elapsed = state["evaluations"], state["wall_time"]
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
                logger.report(evaluation.get("eval_normalized", evaluation["eval_return"]), step, last)
            logger.log({**metrics, "wall_time": time.perf_counter() - start}, step)
            if last or step % cfg.checkpoint_every == 0:  # the buffer is the offline data: not copied
                _save(checkpoint, trainer, buffer=False, evaluations=evaluations, wall_time=time.perf_counter() - start)
    envs.close()
    return Run(trainer, evaluations, time.perf_counter() - start, online=False)


@names_divergence("finetune")
def finetune(
    pretrained: ODTTrainer | str | Path,
    cfg: FinetuneConfig,
    env_fn: EnvFn,
    *,
    data: Data | None = None,
    seed: int = 0,
    offline: EvalConfig | None = None,
    device: str = "auto",
    logger: Logger | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
) -> Run:
    """Algorithm 1: rounds of exploration and updates from a pretrained trainer until `cfg.online_samples`.

    `pretrained` (a trainer, left untouched, or its checkpoint file with `data`, the offline
    trajectories or their HDF5 file, which pretraining checkpoints do not copy) starts with `seed`'s own RNG
    streams and the top `buffer_size` offline trajectories. It is scored first with
    `offline`'s evaluation settings (the pretraining's; default: `cfg`'s) and with `cfg`'s
    (the curve's first point). Each round explores with g_online, adds the rollouts to
    the buffer (FIFO, hindsight RTGs) and runs `updates_per_round` updates; every
    `eval_every_rounds` rounds and at the end it evaluates with g_eval.
    """
    logger = logger or NullLogger()
    state = _resume(checkpoint)
    if state is None:
        trainer = ODTTrainer.load(pretrained, device=device, data=data) if isinstance(pretrained, (str, Path)) \
            else pretrained.copy()
        trainer.use(cfg)
        trainer.reseed(seed)
        trainer.buffer = TrajectoryReplayBuffer(cfg.buffer_size, trainer.buffer.trajectories)  # top-N offline
    else:
        trainer = ODTTrainer.from_state(state["trainer"], optim=cfg, device=device)
    eval_envs = _envs(env_fn, cfg.eval_episodes, trainer)
    explore_envs = vector_env(env_fn, cfg.rollouts_per_round)
    if state is None:
        start = time.perf_counter()
        if offline is None:  # scored with the finetuning's own settings: that is the curve's first point too
            offline_score = first = trainer.evaluate(eval_envs, cfg, index=0)
        else:
            offline_envs = eval_envs if offline.eval_episodes == cfg.eval_episodes else vector_env(env_fn, offline.eval_episodes)
            offline_score = trainer.evaluate(offline_envs, offline, index=0)
            first = trainer.evaluate(eval_envs, cfg, index=0)
        evaluations, rounds, online_samples = [{"round": 0, "online_samples": 0, **first}], 0, 0
        logger.report(first.get("eval_normalized", first["eval_return"]), trainer.num_updates, cfg.online_samples == 0)
        logger.log({"online_samples": 0, **{k.replace("eval_", "offline_"): v for k, v in offline_score.items()},
                    **first, "wall_time": time.perf_counter() - start}, trainer.num_updates)
        _save(checkpoint, trainer, buffer=True, evaluations=evaluations, offline=offline_score, rounds=0,
              online_samples=0, wall_time=time.perf_counter() - start)
    else:
        evaluations, offline_score = state["evaluations"], state["offline"]
        rounds, online_samples = state["rounds"], state["online_samples"]
        start = time.perf_counter() - state["wall_time"]
    budget = cfg.online_samples
    with tqdm(total=budget, initial=min(online_samples, budget), desc="finetune", unit="step", disable=not progress,
              mininterval=1.0) as bar:
        while online_samples < budget:
            result = trainer.explore(explore_envs, cfg)
            trainer.buffer.add(result.trajectories)
            bar.update(min(online_samples + int(result.lengths.sum()), budget) - online_samples)
            online_samples += int(result.lengths.sum())
            rounds += 1
            metrics = trainer.train_updates(cfg.updates_per_round)
            metrics |= {"online_samples": online_samples, "round": rounds,
                        "explore_return": float(result.returns.mean()), "explore_length": float(result.lengths.mean())}
            last = online_samples >= budget
            if last or rounds % cfg.eval_every_rounds == 0:
                evaluation = trainer.evaluate(eval_envs, cfg, index=rounds)
                evaluations.append({"round": rounds, "online_samples": online_samples, **evaluation})
                metrics |= evaluation
                bar.set_postfix(eval_return=f"{evaluation['eval_return']:.1f}", refresh=False)
                logger.report(evaluation.get("eval_normalized", evaluation["eval_return"]), trainer.num_updates, last)
            logger.log({**metrics, "wall_time": time.perf_counter() - start}, trainer.num_updates)
            if last or rounds % cfg.checkpoint_every_rounds == 0:
                _save(checkpoint, trainer, buffer=True, evaluations=evaluations, offline=offline_score, rounds=rounds,
                      online_samples=online_samples, wall_time=time.perf_counter() - start)
    eval_envs.close()
    explore_envs.close()
    return Run(trainer, evaluations, time.perf_counter() - start, offline_score)


def _envs(env_fn: EnvFn, n: int, trainer: ODTTrainer) -> gym.vector.VectorEnv:
    envs = vector_env(env_fn, n)
    check_dims(trainer.task, envs, trainer.model_cfg.state_dim, trainer.model_cfg.act_dim)
    return envs


def _resume(checkpoint: str | Path | None) -> dict[str, Any] | None:
    return load_checkpoint(checkpoint) if checkpoint is not None and Path(checkpoint).is_file() else None


def _save(checkpoint: str | Path | None, trainer: ODTTrainer, *, buffer: bool, **loop: Any) -> None:
    """The trainer (`buffer`: with its replay buffer) and the loop's own state: all a rerun needs."""
    if checkpoint is not None:
        save_checkpoint(checkpoint, {"trainer": trainer.state_dict(buffer=buffer), **loop})

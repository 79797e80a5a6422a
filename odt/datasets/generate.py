"""Generated D4RL-style data: medium and medium-replay from one SAC run, for offline work.

D4RL built `<env>-medium` by rolling out a SAC policy trained to about a third of expert
return, and `<env>-medium-replay` from the replay buffer of that SAC run up to that
point. This does the same with stable-baselines3 SAC in the gymnasium environment the
task runs in. It is not D4RL's data (other simulator, other seed, usually a far smaller
training budget), so results on it compare with the paper in trend only.

One SAC run serves both tasks of an environment: it is cached, atomically and under a
lock, in `<cache_dir>/<env>-seed<seed>-steps<N>-target<R>-n<M>/`, so fetching
hopper-medium-v2 and hopper-medium-replay-v2 with the same settings trains once.

Where the package ships behaviour policies for the env (`odt/policies/<env>/manifest.json`,
odt.datasets.behaviour), `generate_task` rolls them out instead (odt.datasets.rollout: no
training, minutes instead of hours) unless it is given `train_steps` or `target_return`,
which ask for a SAC run here.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from odt.atomic import atomic_dir
from odt.data import Trajectory
from odt.datasets.hdf5 import write_d4rl_hdf5
from odt.envs import make_env
from odt.lock import file_lock
from odt.tasks import TaskSpec, get_task

DEFAULT_TRAIN_STEPS = 1_000_000  # D4RL's SAC budget; training stops earlier at the target return
DEFAULT_TRANSITIONS = 1_000_000  # size of D4RL's medium files
EVAL_EPISODES = 3
DATASETS = ("medium", "medium-replay")


class GenerateError(ValueError):
    """Generation was asked for something it cannot make; one line."""


def default_target_return(spec: TaskSpec) -> float:
    """D4RL's medium policies reach about a third of the expert (reference max) return."""
    return spec.ref_min + (spec.ref_max - spec.ref_min) / 3.0


def run_name(env: str, seed: int, train_steps: int, target_return: float, transitions: int, env_version: str) -> str:
    return f"{env}-{env_version}-seed{seed}-steps{train_steps}-target{target_return:g}-n{transitions}"


def _steps_to_trajectories(obs, actions, rewards, terminated, done) -> list[Trajectory]:
    """Cut a stream of steps at episode ends (`done`); the unfinished last episode is kept as a tail."""
    ends = np.flatnonzero(done)
    if not len(ends) or ends[-1] != len(done) - 1:
        ends = np.append(ends, len(done) - 1)
    starts = np.concatenate(([0], ends[:-1] + 1))
    return [Trajectory(obs[s : e + 1], actions[s : e + 1], rewards[s : e + 1], terminated[s : e + 1])
            for s, e in zip(starts, ends)]


def _evaluate(model, env, episodes: int, seed: int) -> float:
    """Mean return of the stochastic policy (the one that collects the medium data)."""
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=False)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def _rollout(model, env, transitions: int, seed: int, progress: bool) -> list[Trajectory]:
    """`transitions` steps of the stochastic policy; episodes end at termination or the time limit."""
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    obs_buf = np.zeros((transitions, obs_dim), dtype=np.float32)
    act_buf = np.zeros((transitions, act_dim), dtype=np.float32)
    rew = np.zeros(transitions, dtype=np.float32)
    term = np.zeros(transitions, dtype=bool)
    done = np.zeros(transitions, dtype=bool)
    obs, _ = env.reset(seed=seed)
    for i in tqdm(range(transitions), desc="medium rollout", disable=not progress, mininterval=1.0, file=sys.stderr):
        action, _ = model.predict(obs, deterministic=False)
        obs_buf[i], act_buf[i] = obs, action
        obs, reward, terminated, truncated, _ = env.step(action)
        rew[i], term[i], done[i] = reward, terminated, terminated or truncated
        if done[i]:
            obs, _ = env.reset()
    return _steps_to_trajectories(obs_buf, act_buf, rew, term, done)


def _replay_trajectories(model) -> list[Trajectory]:
    """The SAC replay buffer, in the order it was filled, as trajectories (actions back in env units)."""
    buf = model.replay_buffer
    n = buf.buffer_size if buf.full else buf.pos
    obs = buf.observations[:n, 0]
    actions = model.policy.unscale_action(buf.actions[:n, 0])
    rewards = buf.rewards[:n, 0]
    done = buf.dones[:n, 0].astype(bool)
    terminated = done & ~buf.timeouts[:n, 0].astype(bool)
    return _steps_to_trajectories(obs, actions, rewards, terminated, done)


def train_sac(spec: TaskSpec, *, seed: int, train_steps: int, target_return: float, env_version: str = "v5",
              progress: bool = False):
    """SAC (stable-baselines3 defaults, CPU) until `train_steps` or until the evaluation return reaches the target."""
    from stable_baselines3.common.callbacks import BaseCallback  # noqa: PLC0415 (optional: pyproject's pipeline extra)


    eval_env = make_env(spec, env_version)
    eval_every = max(1000, min(10_000, train_steps // 10))
    history: list[dict[str, float]] = []

    class StopAtTarget(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % eval_every and self.num_timesteps < train_steps:
                return True
            score = _evaluate(self.model, eval_env, EVAL_EPISODES, seed=seed + 100_000 + self.num_timesteps)
            history.append({"step": int(self.num_timesteps), "eval_return": score})
            if progress:
                print(f"SAC {spec.env} step {self.num_timesteps}: return {score:.1f} (target {target_return:.1f})",
                      file=sys.stderr)
            return score < target_return

    model = make_sac(spec, seed=seed, train_steps=train_steps, env_version=env_version)
    model.learn(total_timesteps=train_steps, callback=StopAtTarget())
    return model, history


def make_sac(spec: TaskSpec, *, seed: int, train_steps: int, env_version: str = "v5"):
    """The SAC of every generated dataset: stable-baselines3 defaults (two 256-unit layers, lr 3e-4, batch 256,
    automatic entropy) on CPU, in the task's env, a replay buffer that holds the whole run, 100 random steps first."""
    from stable_baselines3 import SAC  # noqa: PLC0415 (optional: pyproject's pipeline extra)


    return SAC("MlpPolicy", make_env(spec, env_version), seed=seed, device="cpu", buffer_size=train_steps,
               learning_starts=min(100, train_steps // 2), verbose=0)


def generate_run(spec: TaskSpec, run_dir: Path, *, seed: int, train_steps: int, target_return: float,
                 transitions: int, env_version: str = "v5", progress: bool = False) -> dict[str, Any]:
    """Train SAC once and write `medium.hdf5`, `medium-replay.hdf5` and `run.json` into `run_dir`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # determinism, and SAC's small networks gain nothing from more
    try:
        model, history = train_sac(spec, seed=seed, train_steps=train_steps, target_return=target_return,
                                   env_version=env_version, progress=progress)
        replay = _replay_trajectories(model)
        torch.manual_seed(seed)  # the rollout samples actions
        medium = _rollout(model, make_env(spec, env_version), transitions, seed + 10_000, progress)
    finally:
        torch.set_num_threads(threads)
    info = {
        "generator": "stable-baselines3 SAC",
        "env": spec.env,
        "env_version": env_version,
        "seed": seed,
        "train_steps": train_steps,
        "target_return": target_return,
        "transitions": transitions,
        "sac_steps": int(model.num_timesteps),
        "reached_target": bool(history and history[-1]["eval_return"] >= target_return),
        "eval_history": history,
    }
    for name, trajectories in (("medium", medium), ("medium-replay", replay)):
        write_d4rl_hdf5(run_dir / f"{name}.hdf5", trajectories,
                        metadata={"source": "generate", "env": spec.env, "dataset": name, "seed": seed,
                                  "tail": not trajectories[-1].terminals[-1]})
    (run_dir / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def generate_task(task: str | TaskSpec, *, seed: int = 0, train_steps: int | None = None,
                  target_return: float | None = None, transitions: int | None = None,
                  cache_dir: str | os.PathLike = ".cache/generate", env_version: str | None = None,
                  progress: bool = False, policies: str | os.PathLike | None = None) -> tuple[Path, dict[str, Any]]:
    """(path of the task's generated D4RL-layout file, its record); cached.

    Rolls out the behaviour policies in `policies`, or by default the shipped ones of the task's env
    (odt/policies/<env>) when there are some and neither `train_steps` nor `target_return` is given;
    otherwise trains SAC (`train_steps` default 1M, stopping at `target_return`) and uses its rollout and buffer.
    `transitions`: the dataset's size (SAC: the medium rollout's; policies: either dataset's, see odt.datasets.rollout).
    """
    spec = get_task(task) if isinstance(task, str) else task
    if not spec.generatable:
        raise GenerateError(f"{spec.name}: AntMaze data cannot be generated (D4RL's comes from a scripted planner in "
                            f"the maze); use --source d4rl or --source minari")
    if spec.dataset not in DATASETS:
        raise GenerateError(f"{spec.name}: only {' and '.join(DATASETS)} datasets can be generated")
    training = train_steps is not None or target_return is not None
    if policies is not None and training:
        raise GenerateError("policies rolls out trained behaviour policies, train_steps and target_return train SAC "
                            "here: give one or the other")
    if not training:
        from odt.datasets import rollout  # noqa: PLC0415 (a cycle: rollout imports this module)

        package = Path(policies) if policies is not None else rollout.shipped(spec.env)
        if package is not None:
            made_in = rollout.read_manifest(package)["env_version"]
            if env_version is not None and env_version != made_in:
                raise GenerateError(
                    f"the behaviour policies in {package} act in {spec.env} {made_in}, not {env_version}"
                )
            if transitions is not None and int(transitions) < 1:
                raise GenerateError(f"transitions must be >= 1, got {transitions}")
            return rollout.policy_task(spec, package, seed=seed, transitions=transitions,
                                       cache_dir=Path(cache_dir) / "policies", progress=progress)
    env_version = "v5" if env_version is None else env_version
    train_steps = DEFAULT_TRAIN_STEPS if train_steps is None else int(train_steps)
    transitions = DEFAULT_TRANSITIONS if transitions is None else int(transitions)
    target_return = default_target_return(spec) if target_return is None else float(target_return)
    if train_steps < 2 or transitions < 1:
        raise GenerateError(f"train_steps must be >= 2 and transitions >= 1, got {train_steps} and {transitions}")
    cache_dir = Path(cache_dir)
    name = run_name(spec.env, seed, train_steps, target_return, transitions, env_version)
    run_dir = cache_dir / name
    with file_lock(cache_dir / f"{name}.lock"):  # a concurrent fetch of the sibling task waits for this run
        if not (run_dir / "run.json").is_file():
            with atomic_dir(run_dir) as tmp:  # also clears what a killed run left beside it
                generate_run(spec, tmp, seed=seed, train_steps=train_steps, target_return=target_return,
                             transitions=transitions, env_version=env_version, progress=progress)
    info = json.loads((run_dir / "run.json").read_text())
    return run_dir / f"{spec.dataset}.hdf5", {**info, "run_dir": str(run_dir)}

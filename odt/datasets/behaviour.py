"""Behaviour policies: SAC trained once per environment, its actor snapshots shipped in the package.

D4RL's `medium` data is a rollout of a SAC policy trained to about a third of expert
return, its `medium-replay` data the replay buffer of that run. `train` runs generate.py's
SAC recipe (stable-baselines3 defaults, the task's gymnasium env) and, every
`snapshot_every` environment steps, saves the actor (the policy network alone) and scores
the stochastic policy; it stops when that score reaches the target or at `max_steps`.
Each snapshot records how many replay-buffer transitions were collected since the one
before (its share of `medium-replay`), so the data can be rebuilt from the shipped actors
alone: the last snapshot is the `medium` policy.

Training takes hours on a CPU, so it checkpoints and resumes. Every `checkpoint_every`
steps, at the next episode end (a resumed run starts a fresh episode, so every stored
episode is whole), `out_dir` gets:

    checkpoint.pt              weights, optimisers, entropy coefficient, counters, RNGs, progress
                               (tensors and plain data, loaded with weights_only: no pickles)
    buffer/<start>-<end>.pt    the transitions collected since the checkpoint before: each
                               checkpoint writes only its new chunk, not the whole buffer again
    snapshots/actor-<step>.pt  the float32 actor of each snapshot
    progress.json              the progress, for reading while it runs

every file written atomically (odt.atomic), the chunk and snapshots before the checkpoint
that names them, so a SIGKILL at any moment leaves the previous checkpoint usable. The same
call again resumes there (`learn(reset_num_timesteps=False)`); a finished run returns at once.

`export` writes the snapshots in float16 with `manifest.json` into a package directory
(`odt/policies/<env>/`); `load_actor` checks a file against the manifest and gives a torch
module with the actor's layers (no stable-baselines3 needed) that acts for N environments
in one forward.

    python -m odt.datasets.behaviour train --env hopper --out .cache/behaviour/hopper --seed 0
    python -m odt.datasets.behaviour export --run .cache/behaviour/hopper --to odt/policies/hopper
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from odt.atomic import WriteError, atomic_dir, write_json
from odt.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from odt.datasets.download import sha256_file
from odt.datasets.generate import DEFAULT_TRAIN_STEPS, GenerateError, default_target_return, make_sac
from odt.envs import gym_id, make_vector_env
from odt.evaluation import eval_seeds, run_episodes, score
from odt.lock import LockBusy, file_lock
from odt.losses import TanhNormal
from odt.tasks import TaskSpec, get_task

ENVS = ("hopper", "walker2d", "halfcheetah", "ant")
FORMAT = "odt-behaviour-1"
SNAPSHOT_EVERY = 10_000
CHECKPOINT_EVERY = 10_000
EVAL_EPISODES = 10
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # stable-baselines3's SAC actor clamps log_std to these
FP16_ACTION_TOL = 1e-2  # largest |a_fp16 - a_fp32| (env units) export accepts; measured ~1e-3, see the manifest
FP16_RETURN_SE = 3.0  # mean returns of the float16 and float32 medium policy at most this many standard errors apart
BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")
# what must match for a checkpoint to be resumed by a call (checkpoint_every may change between calls)
RUN_KEYS = ("env", "env_version", "seed", "max_steps", "target_return", "snapshot_every", "eval_episodes")


def task_spec(env: str) -> TaskSpec:
    if env not in ENVS:
        raise GenerateError(f"unknown environment '{env}'; behaviour policies are trained for {', '.join(ENVS)}")
    return get_task(f"{env}-medium-v2")


def snapshot_name(step: int) -> str:
    return f"actor-{step:07d}.pt"


class BehaviourActor(nn.Module):
    """stable-baselines3's SAC actor without stable-baselines3: the same layers and state-dict keys.

    forward(obs (N, obs_dim)) -> (mean, log_std) of the Gaussian before tanh, log_std clamped as SB3 does;
    `distribution` is the tanh-Gaussian over [-1, 1]; `act` gives actions in the env's units for N envs at once.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (256, 256),
                 action_low=None, action_high=None):
        super().__init__()
        layers: list[nn.Module] = []
        last = obs_dim
        for width in hidden:
            layers += [nn.Linear(last, width), nn.ReLU()]
            last = width
        self.latent_pi = nn.Sequential(*layers)
        self.mu = nn.Linear(last, act_dim)
        self.log_std = nn.Linear(last, act_dim)
        low = torch.full((act_dim,), -1.0) if action_low is None else torch.as_tensor(action_low, dtype=torch.float32)
        high = torch.full((act_dim,), 1.0) if action_high is None else torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_low", low, persistent=False)  # not in the state dict: SB3's has none
        self.register_buffer("action_high", high, persistent=False)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latent = self.latent_pi(obs)
        return self.mu(latent), self.log_std(latent).clamp(LOG_STD_MIN, LOG_STD_MAX)

    def distribution(self, obs: torch.Tensor) -> TanhNormal:
        return TanhNormal(*self(obs))

    @torch.no_grad()
    def act(self, obs, deterministic: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Actions for a batch of observations (array or tensor), scaled to the action space as SB3's predict does."""
        obs = torch.as_tensor(np.asarray(obs, dtype=np.float32) if not torch.is_tensor(obs) else obs,
                              dtype=self.mu.weight.dtype)
        mean, log_std = self(obs)
        if deterministic:
            squashed = torch.tanh(mean)
        else:
            noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
            squashed = torch.tanh(mean + log_std.exp() * noise)
        return self.action_low + 0.5 * (squashed + 1.0) * (self.action_high - self.action_low)


# ---------------------------------------------------------------------------------------------- training


def train(env_name: str, out_dir: str | os.PathLike, *, seed: int = 0, target_return: float | None = None,
          max_steps: int = DEFAULT_TRAIN_STEPS, snapshot_every: int = SNAPSHOT_EVERY,
          checkpoint_every: int = CHECKPOINT_EVERY, eval_episodes: int = EVAL_EPISODES, env_version: str = "v5",
          progress: bool = False) -> dict[str, Any]:
    """Train (or resume, or return at once when finished) the behaviour SAC of `env_name`; returns its progress."""
    spec = task_spec(env_name)
    target_return = default_target_return(spec) if target_return is None else float(target_return)
    if max_steps < 2 or snapshot_every < 1 or checkpoint_every < 1 or eval_episodes < 1:
        raise GenerateError(f"max_steps must be >= 2 and snapshot_every, checkpoint_every, eval_episodes >= 1, got "
                            f"{max_steps}, {snapshot_every}, {checkpoint_every}, {eval_episodes}")

    run = {"env": env_name, "env_version": env_version, "gym_id": gym_id(spec, env_version), "seed": int(seed),
           "max_steps": int(max_steps), "target_return": float(target_return), "snapshot_every": int(snapshot_every),
           "eval_episodes": int(eval_episodes)}
    out = Path(out_dir)
    try:
        with file_lock(out / "train.lock", wait=False):
            threads = torch.get_num_threads()
            # as generate.py: SAC's small networks gain nothing from more, and it is deterministic
            torch.set_num_threads(1)
            try:
                return _train(spec, out, run, checkpoint_every=int(checkpoint_every), progress=progress)
            finally:
                torch.set_num_threads(threads)
    except LockBusy:
        raise GenerateError(f"{out} is being trained by another process; wait for it or stop it") from None


def _train(spec: TaskSpec, out: Path, run: dict[str, Any], *, checkpoint_every: int, progress: bool) -> dict[str, Any]:
    state = _load_state(out, run)
    if state is not None and state["progress"]["done"]:
        return state["progress"]
    model = make_sac(spec, seed=run["seed"], train_steps=run["max_steps"], env_version=run["env_version"])
    prog = _restore(model, out, state) if state is not None else {
        "format": FORMAT, "run": run, "steps": 0, "done": False, "reached_target": False, "snapshots": [],
        "chunks": [], "wall_time": 0.0, "resumed": 0}
    sac = _Run(spec, out, run, model, prog, progress)
    try:
        remaining = run["max_steps"] - model.num_timesteps
        if remaining > 0:
            model.learn(total_timesteps=remaining, callback=_callback(sac, checkpoint_every),
                        reset_num_timesteps=state is None)
        if not prog["done"]:  # the budget is spent: the last step's update came after the last callback
            step = min(model.num_timesteps, run["max_steps"])
            if step > _last_snapshot(prog):
                sac.snapshot(step)
            prog["done"] = True
            sac.checkpoint(step)
    finally:
        sac.close()
    return prog


class _Run:
    """A SAC training run between two of its steps: its model, its progress record (`prog`, progress.json), the
    environments that score its snapshots and its progress bar."""

    def __init__(self, spec: TaskSpec, out: Path, run: dict[str, Any], model, prog: dict[str, Any], progress: bool):
        self.spec, self.out, self.run, self.model, self.prog = spec, out, run, model, prog
        self.start = time.perf_counter() - prog["wall_time"]
        self.eval_envs = make_vector_env(spec, self.run["eval_episodes"], self.run["env_version"])
        self.bar = tqdm(total=self.run["max_steps"], initial=prog["steps"], desc=f"SAC {self.run['env']}", unit="step",
                        disable=not progress, mininterval=1.0, file=sys.stderr, dynamic_ncols=True)

    def snapshot(self, step: int) -> None:
        """Save the actor at `step`, score the stochastic policy, record its share of the buffer."""
        model, prog, run, seed = self.model, self.prog, self.run, self.run["seed"]
        index = len(prog["snapshots"])
        path = self.out / "snapshots" / snapshot_name(step)
        save_checkpoint(path, {k: v.detach().clone() for k, v in model.actor.state_dict().items()})
        with torch.random.fork_rng(devices=[]):  # the score never touches the training RNG
            torch.manual_seed(seed * 1_000_003 + step)
            result = score(run_episodes(lambda o: model.predict(o, deterministic=False)[0], self.eval_envs,
                                        eval_seeds(seed, index, run["eval_episodes"])), self.spec.name)
        previous = prog["snapshots"][-1]["step"] if prog["snapshots"] else 0
        prog["snapshots"].append({"step": step, "file": f"snapshots/{path.name}", "transitions": step - previous,
                                  "updates": int(model._n_updates), **result})
        self.bar.set_postfix_str(f"return {result['eval_return']:.0f} (target {run['target_return']:.0f})",
                                 refresh=False)
        if result["eval_return"] >= run["target_return"]:
            prog["reached_target"] = prog["done"] = True

    def checkpoint(self, step: int) -> None:
        """The buffer's new chunk, the checkpoint and progress.json at `step`, a consistent state to resume from."""
        prog, out = self.prog, self.out
        _check_finite(self.model, step, prog)
        first = prog["chunks"][-1][1] if prog["chunks"] else 0
        chunks = prog["chunks"] + ([[first, step]] if step > first else [])
        if step > first:
            buf = self.model.replay_buffer
            save_checkpoint(out / "buffer" / _chunk_name(first, step),
                            {k: torch.from_numpy(np.ascontiguousarray(getattr(buf, k)[first:step, 0]))
                             for k in BUFFER_ARRAYS})
        new = {**prog, "steps": step, "chunks": chunks, "wall_time": time.perf_counter() - self.start}
        save_checkpoint(out / "checkpoint.pt", _state(self.model, new))
        prog.update(new)
        write_json(out / "progress.json", prog)
        _remove_unnamed_chunks(out, chunks)

    def close(self) -> None:
        self.bar.close()
        self.eval_envs.close()
        self.model.env.close()


def _callback(sac: _Run, checkpoint_every: int):
    """SB3's callback for `sac`: a snapshot every `snapshot_every` steps, a checkpoint at the first episode end
    `checkpoint_every` steps after the last, and a stop once a snapshot reaches the target."""
    from stable_baselines3.common.callbacks import BaseCallback  # noqa: PLC0415 (optional: pyproject's pipeline extra)

    every, prog = sac.run["snapshot_every"], sac.prog

    class Loop(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.ended = False

        def _on_step(self) -> bool:
            self.ended = bool(self.locals["dones"][0])
            sac.bar.update(1)
            return not prog["done"]  # reached the target: stop before storing this extra step

        def _on_rollout_start(self) -> None:
            """Between two steps: the last transition is stored and learned from, a consistent state."""
            step = sac.model.num_timesteps
            if step % every == 0 and step > _last_snapshot(prog):
                sac.snapshot(step)
                if prog["done"]:
                    sac.checkpoint(step)
                    return
            if self.ended and step - prog["steps"] >= checkpoint_every:
                sac.checkpoint(step)

    return Loop()


def _last_snapshot(prog: dict[str, Any]) -> int:
    return prog["snapshots"][-1]["step"] if prog["snapshots"] else 0


def _chunk_name(start: int, end: int) -> str:
    return f"{start:09d}-{end:09d}.pt"


def _remove_unnamed_chunks(out: Path, chunks: list[list[int]]) -> None:
    """Chunks a killed run wrote after its last checkpoint: the resumed run writes its own."""
    named = {_chunk_name(a, b) for a, b in chunks}
    for path in (out / "buffer").glob("*.pt"):
        if path.name not in named:
            path.unlink(missing_ok=True)


def _check_finite(model, step: int, prog: dict[str, Any]) -> None:
    with torch.no_grad():
        norm = float(torch.stack([p.norm() for p in model.policy.parameters()]).norm())
    if not math.isfinite(norm) or not math.isfinite(float(model.log_ent_coef.detach())):
        raise GenerateError(f"SAC diverged by step {step} (non-finite weights); the checkpoint at step {prog['steps']} "
                            f"is kept: train with another --seed or --out")


def _state(model, prog: dict[str, Any]) -> dict[str, Any]:
    """Everything but the buffer (which is in its chunks), as tensors and plain data."""
    np_state = np.random.get_state()  # SB3 samples its replay buffer with numpy's global generator
    return {"format": FORMAT, "progress": json.loads(json.dumps(prog)), "params": model.get_parameters(),
            "log_ent_coef": model.log_ent_coef.detach().clone(), "num_timesteps": int(prog["steps"]),
            "n_updates": int(model._n_updates), "episode_num": int(model._episode_num),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": [torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}


def _load_state(out: Path, run: dict[str, Any]) -> dict[str, Any] | None:
    path = out / "checkpoint.pt"
    if not path.is_file():
        return None
    how = f"delete {out} to start over"
    state = load_checkpoint(path, how=how)
    if state.get("format") != FORMAT or "progress" not in state:
        raise CheckpointError(f"checkpoint {path} is not a behaviour-policy checkpoint; {how}")
    held = state["progress"]["run"]
    for key in RUN_KEYS:
        if held.get(key) != run[key]:
            raise GenerateError(f"{out} holds a run with {key}={held.get(key)!r}, not {run[key]!r}; "
                                f"give the same arguments to resume it, or another --out")
    return state


def _restore(model, out: Path, state: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's model, counters, buffer and RNGs into `model`; the progress to continue."""
    prog = state["progress"]
    steps = int(state["num_timesteps"])
    model.set_parameters(state["params"], exact_match=True)
    with torch.no_grad():
        model.log_ent_coef.copy_(state["log_ent_coef"])
    model.num_timesteps, model._n_updates, model._episode_num = (
        steps,
        int(state["n_updates"]),
        int(state["episode_num"]),
    )
    buf = model.replay_buffer
    for start, end in prog["chunks"]:
        chunk = load_checkpoint(out / "buffer" / _chunk_name(start, end), how=f"delete {out} to start over")
        for k in BUFFER_ARRAYS:
            array = chunk[k].numpy() if k in chunk else None
            if array is None or len(array) != end - start:
                raise CheckpointError(f"checkpoint chunk {out / 'buffer' / _chunk_name(start, end)} does not hold "
                                      f"{end - start} {k}; delete {out} to start over")
            getattr(buf, k)[start:end, 0] = array
    buf.pos, buf.full = steps, False
    model.set_random_seed(prog["run"]["seed"] + steps)  # the fresh episode's reset; then the RNGs as they were
    torch.set_rng_state(state["torch_rng"])
    keys, *rest = state["numpy_rng"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), *rest))
    _remove_unnamed_chunks(out, prog["chunks"])
    return {**prog, "resumed": prog.get("resumed", 0) + 1}


def read_progress(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The progress of the run in `out_dir` as its last checkpoint has it (None before the first)."""
    path = Path(out_dir) / "checkpoint.pt"
    if not path.is_file():
        return None
    return load_checkpoint(path, how=f"delete {out_dir} to start over")["progress"]


def replay_observations(out_dir: str | os.PathLike, limit: int | None = None) -> np.ndarray:
    """Observations of the run's replay buffer (the stored chunks), `limit` of them evenly spaced."""
    out = Path(out_dir)
    prog = read_progress(out) or {"chunks": []}
    obs = [load_checkpoint(out / "buffer" / _chunk_name(a, b))["observations"].numpy() for a, b in prog["chunks"]]
    if not obs:
        return np.zeros((0, 0), dtype=np.float32)
    obs = np.concatenate(obs)
    if limit is not None and len(obs) > limit:
        obs = obs[np.linspace(0, len(obs) - 1, limit).astype(np.int64)]
    return obs.astype(np.float32)


def replay_episodes(out_dir: str | os.PathLike, until: int | None = None) -> dict[str, np.ndarray]:
    """The episodes of the run's replay buffer, in the order they were collected, up to environment step `until`:
    `returns`, `lengths` and `start` (the step each began), whole episodes only (a last one still running is left
    out). What `medium-replay` rebuilt from the snapshots stands in for (odt.datasets.rollout)."""
    out = Path(out_dir)
    prog = read_progress(out) or {"chunks": []}
    parts = [
        load_checkpoint(out / "buffer" / _chunk_name(a, b)) for a, b in prog["chunks"] if until is None or a < until
    ]
    rewards = np.concatenate([p["rewards"].numpy() for p in parts]) if parts else np.zeros(0)
    dones = np.concatenate([p["dones"].numpy() for p in parts]) if parts else np.zeros(0)
    if until is not None:
        rewards, dones = rewards[:until], dones[:until]
    ends = np.flatnonzero(dones > 0.5) + 1
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    returns = np.array([rewards[a:b].sum() for a, b in zip(starts, ends)], dtype=np.float64)
    return {"returns": returns, "lengths": (ends - starts).astype(np.int64), "start": starts}


# ---------------------------------------------------------------------------------------------- export / load


def _actor_from(state_dict: dict[str, torch.Tensor], low, high) -> BehaviourActor:
    hidden = tuple(state_dict[k].shape[0] for k in sorted(state_dict, key=_layer_order)
                   if k.startswith("latent_pi.") and k.endswith(".weight"))
    actor = BehaviourActor(state_dict["latent_pi.0.weight"].shape[1], state_dict["mu.weight"].shape[0], hidden,
                           low, high)
    actor.load_state_dict({k: v.float() for k, v in state_dict.items()})
    return actor.eval()


def _layer_order(key: str) -> int:
    parts = key.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else 0


def export(out_dir: str | os.PathLike, package_dir: str | os.PathLike, *, every: int | None = None,
           check_episodes: int = 50, check_observations: int = 4096) -> dict[str, Any]:
    """The finished run's snapshots as float16 actor files and `manifest.json`, replacing `package_dir` atomically.

    `every`: keep the snapshots at multiples of `every` steps (and the last); a dropped snapshot's transitions
    go to the next kept one. Each half-precision actor is checked against its float32 original on the run's
    own observations (largest action difference, at most FP16_ACTION_TOL), and the medium policy by
    `check_episodes` stochastic rollouts of both (the dynamics are chaotic: one episode's return moves with a
    rounding, so it is the distribution that must match, `same_returns`); the figures go into the manifest.
    """
    out, package = Path(out_dir), Path(package_dir)
    if check_episodes < 2:
        raise GenerateError(
            f"check_episodes must be >= 2 to compare the float16 policy's returns, got {check_episodes}"
        )
    prog = read_progress(out)
    if prog is None:
        raise GenerateError(f"{out} holds no training run (no checkpoint.pt); train one there first")
    if not prog["done"]:
        raise GenerateError(f"the run in {out} is at step {prog['steps']} of {prog['run']['max_steps']} and has not "
                            f"reached its target; finish it with the train command first")
    run = prog["run"]
    spec = task_spec(run["env"])
    snaps = _keep_every(prog["snapshots"], every)
    envs = make_vector_env(spec, check_episodes, run["env_version"])
    bounds = envs.single_action_space.low, envs.single_action_space.high
    obs = torch.from_numpy(replay_observations(out, check_observations))
    with atomic_dir(package) as tmp:
        entries = [_half_precision(out / snap["file"], snap, tmp, obs, bounds) for snap in snaps]
        seeds = eval_seeds(run["seed"] + 1, 0, check_episodes)
        returns = {}
        for label, sd in (("float32", load_checkpoint(out / snaps[-1]["file"])),
                          ("float16", torch.load(tmp / entries[-1]["file"], weights_only=True))):
            actor, noise = _actor_from(sd, *bounds), torch.Generator().manual_seed(run["seed"] + 1)
            returns[label] = run_episodes(lambda o: actor.act(o, generator=noise).numpy(), envs, seeds).returns
        envs.close()
        check = same_returns(returns["float32"], returns["float16"])
        if not check["same"]:
            raise GenerateError(f"{out / snaps[-1]['file']} in float16 returns {check['float16_mean']:.0f} on average "
                                f"where float32 returns {check['float32_mean']:.0f} over {check_episodes} episodes, "
                                f"more than {FP16_RETURN_SE:g} standard errors apart; keep it in float32")
        fp16_check = {"tolerance": FP16_ACTION_TOL,
                      "max_action_error": max([0.0, *(e["fp16_max_action_error"] for e in entries)]),
                      "observations": int(len(obs)), "episodes": check_episodes, "seeds": seeds,
                      "policy": "stochastic, as the data is rolled out", **check,
                      "medium_return_float32": [round(float(r), 2) for r in returns["float32"]],
                      "medium_return_float16": [round(float(r), 2) for r in returns["float16"]]}
        hidden = [m.out_features for m in actor.latent_pi if isinstance(m, nn.Linear)]
        manifest = _manifest(prog, spec, every or run["snapshot_every"], hidden, bounds, fp16_check, entries)
        write_json(tmp / "manifest.json", manifest)
    return manifest


def _keep_every(snaps: list[dict[str, Any]], every: int | None) -> list[dict[str, Any]]:
    """The snapshots at multiples of `every` steps and the last; a dropped one's transitions go to the next kept."""
    if every is None:
        return snaps
    kept, pending = [], 0
    for i, snap in enumerate(snaps):
        pending += snap["transitions"]
        if snap["step"] % every == 0 or i == len(snaps) - 1:
            kept.append({**snap, "transitions": pending})
            pending = 0
    return kept


def _half_precision(source: Path, snap: dict[str, Any], tmp: Path, obs: torch.Tensor, bounds) -> dict[str, Any]:
    """The snapshot's actor written in float16 into `tmp`, checked on `obs` against float32: its manifest entry."""
    full = load_checkpoint(source, how="train the run again")
    half = {k: v.to(torch.float16).contiguous() for k, v in full.items()}
    name = snapshot_name(snap["step"])
    save_checkpoint(tmp / name, half)
    a32, a16 = _actor_from(full, *bounds), _actor_from(half, *bounds)
    error = 0.0
    if len(obs):
        error = float((a32.act(obs, deterministic=True) - a16.act(obs, deterministic=True)).abs().max())
    if not error <= FP16_ACTION_TOL:
        raise GenerateError(f"{source} in float16 moves actions by {error:.2g} > {FP16_ACTION_TOL:g}; "
                            "keep it in float32")
    return {"file": name, "step": snap["step"], "transitions": snap["transitions"],
            "eval_return": snap["eval_return"], "eval_return_std": snap["eval_return_std"],
            "eval_length": snap["eval_length"], "eval_normalized": snap.get("eval_normalized"),
            "fp16_max_action_error": error, "bytes": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}


def _manifest(prog: dict[str, Any], spec: TaskSpec, every: int, hidden: list[int], bounds,
              fp16_check: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any]:
    run, (low, high) = prog["run"], bounds
    return {
        "format": FORMAT, "env": run["env"], "gym_id": run["gym_id"], "env_version": run["env_version"],
        "make_env": "odt.envs.make_env(task, env_version)" + (" (Ant-v4, use_contact_forces=True)"
                                                              if run["env"] == "ant" else ""),
        "versions": {"gymnasium": gymnasium.__version__, "mujoco": _version("mujoco"),
                     "stable_baselines3": _version("stable_baselines3"), "torch": torch.__version__.split("+")[0]},
        "algorithm": "stable-baselines3 SAC, its defaults (odt.datasets.generate.make_sac)",
        "seed": run["seed"], "target_return": run["target_return"], "reached_target": prog["reached_target"],
        "max_steps": run["max_steps"], "steps": prog["steps"], "snapshot_every": every,
        "eval": "stochastic policy (odt.evaluation.eval_seeds(seed, snapshot index))",
        "eval_episodes": run["eval_episodes"],
        "obs_dim": spec.obs_dim, "act_dim": spec.act_dim,
        "hidden": hidden,
        "action_low": [float(x) for x in low], "action_high": [float(x) for x in high],
        "dtype": "float16",
        "transitions": "replay-buffer transitions collected since the snapshot before (this snapshot's share of "
                       "medium-replay); they sum to the run's steps",
        "medium": entries[-1]["file"],
        "fp16_check": fp16_check,
        "snapshots": entries,
    }


def same_returns(a, b) -> dict[str, Any]:
    """Do two samples of episode returns come from one policy, as far as their means tell? Their difference within
    FP16_RETURN_SE standard errors (Welch's), the figures kept for the manifest."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    se = float(np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)))
    diff = float(b.mean() - a.mean())
    return {"float32_mean": float(a.mean()), "float32_std": float(a.std(ddof=1)), "float16_mean": float(b.mean()),
            "float16_std": float(b.std(ddof=1)), "standard_error": se, "same": bool(abs(diff) <= FP16_RETURN_SE * se)}


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def read_manifest(package_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(package_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise GenerateError(f"{path} does not exist; export a trained run there first") from None
    except (OSError, ValueError) as err:
        raise GenerateError(
            f"{path} cannot be read ({type(err).__name__}); restore it with `git checkout {path}`"
        ) from None
    if manifest.get("format") != FORMAT:
        raise GenerateError(f"{path} is not a behaviour-policy manifest; restore it with `git checkout {path}`")
    return manifest


def load_actor(package_dir: str | os.PathLike, snapshot: str | int = "medium") -> BehaviourActor:
    """The actor of a snapshot (`"medium"`, a training step, or a file name) after checking its sha256."""
    manifest = read_manifest(package_dir)
    name = (
        manifest["medium"]
        if snapshot == "medium"
        else snapshot_name(snapshot)
        if isinstance(snapshot, int)
        else snapshot
    )
    entry = next((e for e in manifest["snapshots"] if e["file"] == name), None)
    if entry is None:
        steps = ", ".join(str(e["step"]) for e in manifest["snapshots"])
        raise GenerateError(f"{Path(package_dir) / 'manifest.json'} has no snapshot {snapshot!r}; it has steps {steps}")
    path = Path(package_dir) / name
    if not path.is_file():
        raise GenerateError(f"{path} is missing; restore it with `git checkout {path}`")
    if sha256_file(path) != entry["sha256"]:
        raise GenerateError(f"{path} does not match its manifest; restore it with `git checkout {path}`")
    state = torch.load(path, map_location="cpu", weights_only=True)
    actor = _actor_from(state, manifest["action_low"], manifest["action_high"])
    if (actor.latent_pi[0].in_features, actor.mu.out_features) != (manifest["obs_dim"], manifest["act_dim"]):
        raise GenerateError(f"{path} does not match its manifest's dims; restore it with `git checkout {path}`")
    return actor


# ---------------------------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: the last checkpoint stays, exit 143."""


def _terminate(signum, frame):
    raise _Terminated


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m odt.datasets.behaviour",
                     description="Train behaviour SAC policies (checkpointed, resumable) and export their snapshots.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser("train", help="train, or resume, or return at once when finished")
    t.add_argument("--env", required=True, choices=ENVS)
    t.add_argument("--out", required=True, help="run directory (checkpoint, buffer chunks, snapshots)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--target-return", type=float, default=None,
                   help="default: D4RL's medium level, ref_min + (ref_max - ref_min) / 3")
    t.add_argument("--max-steps", type=int, default=DEFAULT_TRAIN_STEPS)
    t.add_argument("--snapshot-every", type=int, default=SNAPSHOT_EVERY)
    t.add_argument("--checkpoint-every", type=int, default=CHECKPOINT_EVERY)
    t.add_argument("--eval-episodes", type=int, default=EVAL_EPISODES)
    t.add_argument("--env-version", default="v5", choices=("v4", "v5"))
    t.add_argument("--no-progress", action="store_true")
    e = sub.add_parser("export", help="write a finished run's snapshots (float16) and manifest.json")
    e.add_argument("--run", required=True, help="the train command's --out")
    e.add_argument("--to", required=True, help="package directory, e.g. odt/policies/hopper (replaced)")
    e.add_argument("--every", type=int, default=None, help="keep snapshots at multiples of this many steps")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Ctrl-C and SIGTERM leave the last checkpoint, also where the shell that started us ignored SIGINT (a job
    # started with `&` by a script): Python would not install its handler then
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)

    try:
        if args.command == "train":
            prog = train(args.env, args.out, seed=args.seed, target_return=args.target_return, max_steps=args.max_steps,
                         snapshot_every=args.snapshot_every, checkpoint_every=args.checkpoint_every,
                         eval_episodes=args.eval_episodes, env_version=args.env_version, progress=not args.no_progress)
            last = prog["snapshots"][-1]
            print(f"{args.env}: {'reached' if prog['reached_target'] else 'did not reach'} the target "
                  f"{prog['run']['target_return']:.1f} at step {prog['steps']} (return {last['eval_return']:.1f}); "
                  f"{len(prog['snapshots'])} snapshots in {args.out}")
        else:
            manifest = export(args.run, args.to, every=args.every)
            size = sum(s["bytes"] for s in manifest["snapshots"])
            print(
                f"{args.to}: {len(manifest['snapshots'])} snapshots, {size / 1e6:.2f} MB, "
                f"medium = {manifest['medium']} "
                f"(float16: largest action change {manifest['fp16_check']['max_action_error']:.2g})"
            )
    except KeyboardInterrupt as stop:
        where = ""
        if args.command == "train":
            try:
                prog = read_progress(args.out)
                where = f"; the checkpoint at step {prog['steps']} is kept" if prog else "; no checkpoint yet"
            except (CheckpointError, OSError):
                pass
        print(f"{'terminated' if isinstance(stop, _Terminated) else 'interrupted'}{where}: rerun the same command "
              f"to resume", file=sys.stderr)
        return 143 if isinstance(stop, _Terminated) else 130
    except (GenerateError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except WriteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

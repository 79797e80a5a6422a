"""Generated data from the shipped behaviour policies: `medium` and `medium-replay` rolled out, no SAC training.

`odt/policies/<env>/` holds the actor snapshots of one SAC run with `manifest.json`
(odt.datasets.behaviour). From them:

    <env>-medium-v2          the manifest's `medium` snapshot, stochastic (as D4RL's medium data was collected),
                             `transitions` steps (default 1M, D4RL's size)
    <env>-medium-replay-v2   every snapshot in training order, each stochastic, for its share of the run's
                             replay buffer: by default exactly the transitions the run collected with it (so the
                             dataset is as large as the run's buffer up to the medium snapshot, as D4RL's is);
                             with `transitions`, the shares scaled to that total (largest remainder rounding)

A snapshot's share is the transitions collected since the snapshot before; its rollout stands
in for them with the policy at the end of that stretch.

N environments step together (a plain list stepped in a loop: measured faster than gymnasium's
SyncVectorEnv here), one batched `actor.act` per step for all N, torch on one thread. Episodes
end at termination or the env's time limit (a timeout in the file). The data of a rollout is
its episodes in the order they started, cut at the quota: every episode is whole but the last,
which is kept as a cut-off tail (the file's `tail`, as in generate.py; inside medium-replay a
snapshot's cut episode reads as a timeout). Episodes that start after the quota is reached are
never run, and ones that turn out to lie past it are stopped; no episode is chosen by its
length, so N envs give the data one env would, in another order.

Deterministic: episode k of snapshot rollout p resets its env with a seed drawn from
(seed, dataset, p, k) and the policy's noise comes from one torch.Generator per rollout, so
the same seed gives the same bytes whatever the timing or thread count. Which snapshot made
which trajectories (a contiguous range each) is in the provenance (`rollout.json`, and the
fetched task's json under `origin`).
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

import odt
from odt.atomic import atomic_dir, write_json
from odt.data import Trajectory
from odt.datasets.behaviour import load_actor, read_manifest
from odt.datasets.download import sha256_file
from odt.datasets.generate import DATASETS, DEFAULT_TRANSITIONS, GenerateError
from odt.datasets.hdf5 import write_d4rl_hdf5
from odt.envs import make_env
from odt.lock import file_lock
from odt.tasks import TaskSpec, get_task

FORMAT = "odt-policy-data-1"  # part of the cache key: a change to how data is rolled out changes this
N_ENVS = 16
POLICIES = Path(odt.__file__).resolve().parent / "policies"
_STREAM = {"medium": 0, "medium-replay": 1}


def shipped(env: str, root: str | os.PathLike | None = None) -> Path | None:
    """`odt/policies/<env>` when it holds a manifest (the package's behaviour policies), else None."""
    package = Path(POLICIES if root is None else root) / env
    return package if (package / "manifest.json").is_file() else None


def quotas(manifest: dict[str, Any], dataset: str, transitions: int | None) -> list[tuple[dict[str, Any], int]]:
    """(snapshot entry, transitions to roll out with it) for `dataset` of the manifest's run."""
    snaps = manifest["snapshots"]
    if dataset == "medium":
        entry = next(e for e in snaps if e["file"] == manifest["medium"])
        return [(entry, DEFAULT_TRANSITIONS if transitions is None else int(transitions))]
    last = next(i for i, e in enumerate(snaps) if e["file"] == manifest["medium"])
    snaps = snaps[: last + 1]  # the buffer up to the medium policy
    shares = [int(e["transitions"]) for e in snaps]
    total = sum(shares)
    if transitions is None or transitions == total:
        return list(zip(snaps, shares))
    exact = [transitions * s for s in shares]
    counts = [x // total for x in exact]
    by_remainder = sorted(range(len(snaps)), key=lambda i: (-(exact[i] % total), i))
    for i in by_remainder[: transitions - sum(counts)]:
        counts[i] += 1
    return list(zip(snaps, counts))


def _seed(seed: int, *key: int) -> int:
    return int(np.random.SeedSequence(seed, spawn_key=key).generate_state(1, np.uint64)[0])


class _Episode:
    __slots__ = ("env", "length", "terminated", "finished", "obs", "act", "rew")

    def __init__(self, env: int):
        self.env, self.length, self.terminated, self.finished = env, 0, False, False
        self.obs = self.act = self.rew = None


def rollout(
    actor, envs: list, quota: int, *, seed: int, key: tuple[int, ...], bar=None
) -> tuple[list[Trajectory], bool]:
    """`quota` transitions of the stochastic `actor` over `envs` stepped together: (trajectories, last one cut?).

    The episodes in the order they started, the last cut at the quota (see the module's docstring).
    """
    n = len(envs)
    limit = envs[0].spec.max_episode_steps
    obs_dim, act_dim = envs[0].observation_space.shape[0], envs[0].action_space.shape[0]
    generator = torch.Generator().manual_seed(_seed(seed, *key))
    obs = np.zeros((n, obs_dim), dtype=np.float32)
    obs_buf = np.zeros((n, limit, obs_dim), dtype=np.float32)
    act_buf = np.zeros((n, limit, act_dim), dtype=np.float32)
    rew_buf = np.zeros((n, limit), dtype=np.float32)
    episodes: list[_Episode] = []
    running: list[int | None] = [None] * n  # the episode each env runs
    started = 0  # steps taken by the episodes started so far
    settled = (0, 0)  # (index, steps before it): episodes before it are finished and inside the quota

    def keep(i: int, e: _Episode) -> None:
        e.obs, e.act, e.rew = (
            obs_buf[i, : e.length].copy(),
            act_buf[i, : e.length].copy(),
            rew_buf[i, : e.length].copy(),
        )
        running[i] = None

    while True:
        if started < quota:  # a new episode starts at position `started` of the data: still inside the quota
            for i in range(n):
                if running[i] is None:
                    first, _ = envs[i].reset(seed=_seed(seed, *key, len(episodes)))
                    obs[i] = first
                    running[i] = len(episodes)
                    episodes.append(_Episode(i))
        active = [i for i in range(n) if running[i] is not None]
        if not active:
            break
        actions = actor.act(obs, generator=generator).numpy()  # all N rows always: the noise drawn never varies
        for i in active:
            e = episodes[running[i]]
            t = e.length
            if t == limit:
                raise GenerateError(f"{envs[i].spec.id} ran past its time limit of {limit} steps")
            obs_buf[i, t], act_buf[i, t] = obs[i], actions[i]
            nxt, reward, terminated, truncated, _ = envs[i].step(actions[i])
            rew_buf[i, t] = reward
            obs[i] = nxt
            e.length += 1
            if terminated or truncated:
                e.terminated, e.finished = bool(terminated), True
                keep(i, e)
        started += len(active)
        if bar is not None:
            bar.update(len(active))
        if started >= quota:  # the last stretch: stop the episodes the data no longer needs, or needs no more of
            settled = _settle(episodes, settled, quota, keep)
    return _cut(episodes, quota)


def _settle(episodes: list[_Episode], settled: tuple[int, int], quota: int, keep) -> tuple[int, int]:
    """Once the episodes started hold `quota` steps: each running episode that holds all the data needs of it is
    stopped (`keep`; its need only shrinks as others grow). `settled` is (index, steps before it): the episodes
    before it are finished and inside the quota; returns it moved on."""
    index, before = settled
    while index < len(episodes) and episodes[index].finished and before + episodes[index].length < quota:
        before += episodes[index].length
        index += 1
    settled = (index, before)
    for e in episodes[index:]:
        if e.obs is None and before + e.length >= quota:  # still running
            keep(e.env, e)
        before += e.length
    return settled


def _cut(episodes: list[_Episode], quota: int) -> tuple[list[Trajectory], bool]:
    """The episodes in the order they started, as trajectories, the last cut at the quota: (them, last one cut?)."""
    trajectories, cut, before = [], False, 0
    for e in episodes:
        if before >= quota:
            break
        take = min(e.length, quota - before)
        cut = take < e.length or not e.finished
        terminals = np.zeros(take, dtype=bool)
        terminals[-1] = e.terminated and not cut
        trajectories.append(Trajectory(e.obs[:take], e.act[:take], e.rew[:take], terminals))
        before += take
    return trajectories, cut


def _check(spec: TaskSpec, package: Path, manifest: dict[str, Any]) -> None:
    where = package / "manifest.json"
    if manifest.get("env") != spec.env:
        raise GenerateError(f"{where} holds {manifest.get('env')} policies, not {spec.env}'s")
    if (manifest.get("obs_dim"), manifest.get("act_dim")) != (spec.obs_dim, spec.act_dim):
        raise GenerateError(f"{where} has dims {manifest.get('obs_dim')}/{manifest.get('act_dim')}, {spec.name} "
                            f"needs {spec.obs_dim}/{spec.act_dim}")


def from_policies(task: str | TaskSpec, out_dir: str | os.PathLike, *, seed: int, transitions: int | None = None,
                  package_dir: str | os.PathLike | None = None, n_envs: int = N_ENVS,
                  progress: bool = False) -> tuple[Path, dict[str, Any]]:
    """Roll out `task`'s data from the behaviour policies in `package_dir` (default: the shipped ones of its env)
    into `out_dir`/<task>.hdf5 (D4RL layout) and `out_dir`/rollout.json (provenance); returns (path, provenance)."""
    spec = get_task(task) if isinstance(task, str) else task
    if spec.dataset not in DATASETS or not spec.generatable:
        raise GenerateError(f"{spec.name}: only {' and '.join(DATASETS)} data of the locomotion envs can be rolled out")
    package = Path(package_dir) if package_dir is not None else shipped(spec.env)
    if package is None:
        raise GenerateError(f"no behaviour policies for {spec.env} in {POLICIES / spec.env}; train and export them "
                            f"(python -m odt.datasets.behaviour) or train SAC here (--train-steps)")
    if seed < 0 or (transitions is not None and transitions < 1) or n_envs < 1:
        raise GenerateError(f"seed must be >= 0, transitions and n_envs >= 1, got {seed}, {transitions}, {n_envs}")
    manifest = read_manifest(package)
    _check(spec, package, manifest)
    plan = quotas(manifest, spec.dataset, transitions)
    actors = [load_actor(package, entry["file"]) for entry, _ in plan]  # checks each file's sha256 first
    limit = spec.max_episode_steps
    width = max(1, min(n_envs, max(math.ceil(q / limit) for _, q in plan)))
    envs = [make_env(spec, manifest["env_version"]) for _ in range(width)]
    run_steps = sum(int(e["transitions"]) for e in manifest["snapshots"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # measured faster for these small networks, and nothing depends on it
    bar = tqdm(total=sum(q for _, q in plan), desc=f"{spec.name} rollout", unit="step", disable=not progress,
               mininterval=1.0, file=sys.stderr, dynamic_ncols=True)
    trajectories, parts, cut = [], [], False
    try:
        for (entry, quota), actor in zip(plan, actors):
            part = manifest["snapshots"].index(entry)
            # fewer envs for a small quota: the episodes past the quota that get stopped are then fewer
            use = envs[: max(1, min(width, math.ceil(quota / limit)))]
            made, part_cut = rollout(actor, use, quota, seed=seed, key=(_STREAM[spec.dataset], part), bar=bar) \
                if quota else ([], False)
            cut = part_cut if made else cut  # the file's tail: the last trajectory of the last part with any
            parts.append({"file": entry["file"], "step": entry["step"], "sha256": entry["sha256"],
                          "eval_return": entry.get("eval_return"), "buffer_transitions": int(entry["transitions"]),
                          "buffer_share": int(entry["transitions"]) / run_steps, "transitions": int(quota),
                          "n_envs": len(use) if quota else 0, "first_trajectory": len(trajectories),
                          "n_trajectories": len(made), "cut": bool(part_cut)})
            trajectories += made
    finally:
        bar.close()
        torch.set_num_threads(threads)
        for env in envs:
            env.close()
    info = {
        "generator": "behaviour policies (odt.datasets.rollout), stochastic", "format": FORMAT, "task": spec.name,
        "dataset": spec.dataset, "seed": int(seed), "transitions": sum(p["transitions"] for p in parts),
        "policies": str(package), "manifest_sha256": sha256_file(package / "manifest.json"),
        "env": manifest["env"], "gym_id": manifest["gym_id"], "env_version": manifest["env_version"],
        "run_seed": manifest["seed"], "run_steps": run_steps, "versions": manifest.get("versions"),
        "medium": manifest["medium"], "snapshots": parts,
    }
    out = Path(out_dir)
    path = write_d4rl_hdf5(out / f"{spec.name}.hdf5", trajectories,
                           metadata={"source": "generate", "generator": "policies", "env": spec.env,
                                     "dataset": spec.dataset, "seed": int(seed), "tail": cut})
    write_json(out / "rollout.json", info)
    return path, info


def cache_name(spec: TaskSpec, seed: int, transitions: int | None, manifest_sha256: str, n_envs: int) -> str:
    size = "default" if transitions is None else str(int(transitions))
    return f"{spec.name}-policies{manifest_sha256[:12]}-seed{seed}-n{size}-e{n_envs}-{FORMAT}"


def policy_task(spec: TaskSpec, package_dir: str | os.PathLike, *, seed: int = 0, transitions: int | None = None,
                cache_dir: str | os.PathLike = ".cache/generate", n_envs: int = N_ENVS,
                progress: bool = False) -> tuple[Path, dict[str, Any]]:
    """`from_policies`, cached under `cache_dir` (atomically, under a lock) by task, seed, size and manifest; the
    snapshot files used are checked against the manifest on every call, cached or not."""
    package = Path(package_dir)
    manifest = read_manifest(package)
    _check(spec, package, manifest)
    for entry, _ in quotas(manifest, spec.dataset, transitions):
        load_actor(package, entry["file"])  # a GenerateError naming the file when its sha256 does not match
    cache = Path(cache_dir)
    name = cache_name(spec, seed, transitions, sha256_file(package / "manifest.json"), n_envs)
    run_dir = cache / name
    with file_lock(cache / f"{name}.lock"):
        if not (run_dir / "rollout.json").is_file():
            with atomic_dir(run_dir) as tmp:
                from_policies(spec, tmp, seed=seed, transitions=transitions, package_dir=package, n_envs=n_envs,
                              progress=progress)
    info = json.loads((run_dir / "rollout.json").read_text())
    return run_dir / f"{spec.name}.hdf5", {**info, "run_dir": str(run_dir)}

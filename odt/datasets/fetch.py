"""A task's dataset from any source, written in D4RL's HDF5 layout with a JSON summary beside it.

    fetch("hopper-medium-v2", "generate", "data/hopper-medium-v2", seed=0, train_steps=5000)

Sources: `d4rl` (download the original file), `minari` (the Minari dataset holding D4RL's
data), `generate` (made here: rolled out from the shipped behaviour policies of the env,
odt/policies/<env>, or from a SAC run trained here; see odt.datasets.generate) and `file`
(a D4RL-layout .hdf5 you have). Generated data's provenance is the JSON's `origin` (for
policies: the manifest's run, each snapshot's step, sha256, share and trajectories). The
output directory gets <task>.hdf5 and <task>.json (where it came from, trajectory count,
returns, sha256 of the file, and for Ant the contact-force dims the environment must pin:
`odt.envs.load_fixed_obs`), both written into a temp directory that then replaces it. Actions
outside [-1, 1] are rejected unless `clip_actions` (then clipped, and counted in the JSON).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from odt.atomic import atomic_dir, write_json
from odt.data import Trajectory
from odt.datasets.download import fetch_d4rl, sha256_file
from odt.datasets.hdf5 import DatasetError, ends_with_tail, load_d4rl_hdf5, write_d4rl_hdf5
from odt.datasets.minari_io import load_minari
from odt.envs import fixed_obs_json, fixed_observation_dims
from odt.tasks import get_task, normalized_score

SOURCES = ("d4rl", "minari", "generate", "file")
ACTION_BOUND = 1.0  # every task's action space is [-1, 1]


def load_source(task: str, source: str, *, url: str | None = None, path: str | Path | None = None,
                cache: Path = Path(".cache"), progress: bool = True,
                **generate: Any) -> tuple[list[Trajectory], dict[str, Any], bool]:
    """(trajectories, provenance, whether the last trajectory is a cut-off tail); `generate`: seed, train_steps,
    target_return, transitions, policies (odt.datasets.generate.generate_task)."""
    spec = get_task(task)
    if source == "minari":
        trajectories, dataset_id = load_minari(spec)
        return trajectories, {"minari_id": dataset_id}, False
    if source == "file":
        check_file(Path(path))
        origin = {"path": str(path)}
    elif source == "d4rl":
        url = url or spec.url
        path = fetch_d4rl(url, Path(cache) / "d4rl", sha256=spec.sha256, progress=progress)
        origin = {"url": url, "path": str(path)}
    elif source == "generate":
        from odt.datasets.generate import generate_task  # noqa: PLC0415 (torch: 1.2 s more for every other source)

        path, origin = generate_task(spec, cache_dir=Path(cache) / "generate", progress=progress, **generate)
    else:
        raise ValueError(f"unknown source {source!r} (choose from: {', '.join(SOURCES)})")
    trajectories = load_d4rl_hdf5(path, task)
    return trajectories, {**origin, "input_sha256": sha256_file(path)}, ends_with_tail(path)


def check_file(path: Path) -> None:
    """`--source file --path PATH`: one line when PATH is missing or a directory, naming the .hdf5 files inside."""
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.hdf5"))[:3]
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        raise DatasetError(f"--path {path} is a directory{hint}; --path names the D4RL-layout .hdf5 file itself")
    if not path.exists():
        raise DatasetError(f"--path {path}: no such file")


def check_actions(trajectories: list[Trajectory], where: str, *, clip: bool = False) -> int:
    """Actions must lie in [-1, 1], the environments' range and the policy's tanh: a DatasetError saying how many
    do not (and their min and max), or with `clip`, clip them (new arrays) and return how many were clipped."""
    actions = [t.actions for t in trajectories]
    outside = sum(int((np.abs(a) > ACTION_BOUND).sum()) for a in actions)
    if outside and not clip:
        lo, hi = min(float(a.min()) for a in actions), max(float(a.max()) for a in actions)
        total = sum(a.size for a in actions)
        raise DatasetError(
            f"{where}: {outside} of {total} action values lie outside [-1, 1] (min {lo:.4g}, max {hi:.4g}); "
            f"fix the data, or pass --clip-actions (fetch block: clip-actions: true) to clip them"
        )
    for t in trajectories if outside else ():
        t.actions = np.clip(t.actions, -ACTION_BOUND, ACTION_BOUND)
    return outside


def summarize(task: str, trajectories: list[Trajectory]) -> dict[str, Any]:
    """What a user checks first: sizes, returns raw and normalized, the dims the environment must pin."""
    spec = get_task(task)
    returns = np.array([t.episode_return for t in trajectories])
    lengths = np.array([len(t) for t in trajectories])
    norm = np.asarray(normalized_score(task, returns))
    return {
        "task": task, "obs_dim": spec.obs_dim, "act_dim": spec.act_dim,
        "n_trajectories": len(trajectories), "n_transitions": int(lengths.sum()),
        "n_terminals": int(sum(bool(t.terminals[-1]) for t in trajectories)), "length_mean": float(lengths.mean()),
        "return_mean": float(returns.mean()), "return_std": float(returns.std()),
        "return_min": float(returns.min()), "return_max": float(returns.max()),
        "normalized_mean": float(norm.mean()), "normalized_min": float(norm.min()), "normalized_max": float(norm.max()),
        "fixed_obs": fixed_obs_json(fixed_observation_dims(task, trajectories)),
    }


def fetch(task: str, source: str, out: str | Path, *, clip_actions: bool = False, **options: Any) -> dict[str, Any]:
    """Load `task` from `source` (options as `load_source`) into `out`/<task>.hdf5 and <task>.json; returns the JSON.

    Actions outside [-1, 1] are rejected (DatasetError), or with `clip_actions` clipped, the
    JSON's `clipped_actions` saying how many.
    """
    trajectories, origin, tail = load_source(task, source, **options)
    where = origin.get("path") or origin.get("minari_id") or source
    clipped = check_actions(trajectories, where, clip=clip_actions)
    meta = {"source": source, **summarize(task, trajectories), "origin": origin,
            "n_action_values": sum(t.actions.size for t in trajectories), "clipped_actions": clipped}
    if source == "generate":
        how = ("rolled out from behaviour policies trained with SAC in gymnasium" if "policies" in origin
               else "generated with SAC in gymnasium")
        meta["note"] = f"{how}, not D4RL data: compare with the paper in trend only"
    with atomic_dir(out) as tmp:
        h5 = write_d4rl_hdf5(
            tmp / f"{task}.hdf5", trajectories, metadata={"task": task, "source": source, "tail": tail}
        )
        meta = {**meta, "tail": tail, "sha256": sha256_file(h5), "file": f"{task}.hdf5"}
        write_json(tmp / f"{task}.json", meta)
    return meta

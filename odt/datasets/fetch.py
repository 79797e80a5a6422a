"""A task's dataset from any source, written in D4RL's HDF5 layout with a JSON summary beside it.

    fetch("hopper-medium-v2", "generate", "data/hopper-medium-v2", seed=0, train_steps=5000)

Sources: `d4rl` (download the original file), `minari` (the Minari dataset holding D4RL's
data), `generate` (SAC data made here) and `file` (a D4RL-layout .hdf5 you have). The
output directory gets <task>.hdf5 and <task>.json (where it came from, trajectory count,
returns, sha256 of the file, and for Ant the contact-force dims the environment must pin:
`odt.envs.load_fixed_obs`), both written into a temp directory that then replaces it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from odt.atomic import atomic_dir, write_json
from odt.data import Trajectory
from odt.datasets.download import sha256_file
from odt.datasets.hdf5 import ends_with_tail, load_d4rl_hdf5, write_d4rl_hdf5
from odt.tasks import get_task, normalized_score

SOURCES = ("d4rl", "minari", "generate", "file")


def load_source(task: str, source: str, *, url: str | None = None, path: str | Path | None = None,
                cache: Path = Path(".cache"), progress: bool = True,
                **generate: Any) -> tuple[list[Trajectory], dict[str, Any], bool]:
    """(trajectories, provenance, whether the last trajectory is a cut-off tail); `generate`: seed, train_steps, ..."""
    spec = get_task(task)
    if source == "minari":
        from odt.datasets.minari_io import load_minari  # noqa: PLC0415

        trajectories, dataset_id = load_minari(spec)
        return trajectories, {"minari_id": dataset_id}, False
    if source == "file":
        origin = {"path": str(path)}
    elif source == "d4rl":
        from odt.datasets.download import fetch_d4rl  # noqa: PLC0415

        url = url or spec.url
        path = fetch_d4rl(url, Path(cache) / "d4rl", sha256=spec.sha256, progress=progress)
        origin = {"url": url, "path": str(path)}
    elif source == "generate":
        from odt.datasets.generate import generate_task  # noqa: PLC0415

        path, origin = generate_task(spec, cache_dir=Path(cache) / "generate", progress=progress, **generate)
    else:
        raise ValueError(f"unknown source {source!r} (choose from: {', '.join(SOURCES)})")
    trajectories = load_d4rl_hdf5(path, task)
    return trajectories, {**origin, "input_sha256": sha256_file(path)}, ends_with_tail(path)


def summarize(task: str, trajectories: list[Trajectory]) -> dict[str, Any]:
    """What a user checks first: sizes, returns raw and normalized, the dims the environment must pin."""
    from odt.envs import fixed_obs_json, fixed_observation_dims  # noqa: PLC0415

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


def fetch(task: str, source: str, out: str | Path, **options: Any) -> dict[str, Any]:
    """Load `task` from `source` (options as `load_source`) into `out`/<task>.hdf5 and <task>.json; returns the JSON."""
    trajectories, origin, tail = load_source(task, source, **options)
    meta = {"source": source, **summarize(task, trajectories), "origin": origin}
    if source == "generate":
        meta["note"] = "generated with SAC in gymnasium, not D4RL data: compare with the paper in trend only"
    with atomic_dir(out) as tmp:
        h5 = write_d4rl_hdf5(tmp / f"{task}.hdf5", trajectories, metadata={"task": task, "source": source, "tail": tail})
        meta = {**meta, "tail": tail, "sha256": sha256_file(h5), "file": f"{task}.hdf5"}
        write_json(tmp / f"{task}.json", meta)
    return meta

"""DVC stage `fetch@<task>`: one dataset per task in D4RL's HDF5 layout, whatever the source.

    python -m pipeline.fetch --task hopper-medium-v2 --source generate --seed 0 --train-steps 5000 \\
        --transitions 20000 --out data/hopper-medium-v2
    python -m pipeline.fetch --task hopper-medium-v2 --source d4rl --out data/hopper-medium-v2
    python -m pipeline.fetch --task antmaze-umaze-v2 --source minari --out data/antmaze-umaze-v2
    python -m pipeline.fetch --task hopper-medium-v2 --source file --path hopper_medium-v2.hdf5 --out data/hopper-medium-v2

Writes DIR/<task>.hdf5 (float32, `next_observations`, terminals/timeouts as D4RL) and
DIR/<task>.json (where it came from, trajectory count, returns, sha256 of the .hdf5, and
for Ant the contact-force dims the environment must pin: `odt.envs.load_fixed_obs`).
Both are written into a temp directory that then replaces DIR, so DIR is never half-written.
Downloads and generated SAC runs are cached under --cache (default $ODT_CACHE or .cache).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from odt.atomic import atomic_dir

SOURCES = ("d4rl", "minari", "generate", "file")
ROOT = Path(__file__).resolve().parents[1]


class _BadArgs(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + message
        raise _BadArgs(message)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = _Parser(prog="python -m pipeline.fetch", description=__doc__.splitlines()[0])
    ap.add_argument("--task", required=True, help="D4RL task name, e.g. hopper-medium-v2")
    ap.add_argument("--source", required=True, choices=SOURCES)
    ap.add_argument("--url", help="d4rl: download from here instead of the task's D4RL address")
    ap.add_argument("--path", help="file: the D4RL-layout .hdf5 to use")
    ap.add_argument("--cache", help="cache root for downloads and SAC runs (default $ODT_CACHE or .cache)")
    ap.add_argument("--seed", type=int, default=0, help="generate: seed of the SAC run")
    ap.add_argument("--train-steps", type=int, help="generate: SAC environment-step budget")
    ap.add_argument("--target-return", type=float, help="generate: stop SAC once evaluation reaches this return")
    ap.add_argument("--transitions", type=int, help="generate: size of the medium dataset")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("--out", required=True, help="output directory (data/<task>)")
    args = ap.parse_args(argv)
    for key in ("seed", "train_steps", "transitions"):
        value = getattr(args, key)
        if value is not None and value < (0 if key == "seed" else 1):
            raise _BadArgs(f"--{key.replace('_', '-')} must be {'>= 0' if key == 'seed' else 'positive'}, got {value}")
    if args.source == "file" and not args.path:
        raise _BadArgs("--source file needs --path FILE (a D4RL-layout .hdf5)")
    if args.path and args.source != "file":
        raise _BadArgs(f"--path is for --source file; with --source {args.source} drop it")
    if args.url and args.source != "d4rl":
        raise _BadArgs(f"--url is for --source d4rl; with --source {args.source} drop it")
    return args


def cache_root(cache: str | None) -> Path:
    return Path(cache or os.environ.get("ODT_CACHE") or ROOT / ".cache")


def load_source(args: argparse.Namespace) -> tuple[list, dict[str, Any], bool]:
    """(trajectories, provenance, whether the last trajectory is a cut-off tail)."""
    from odt.datasets.hdf5 import ends_with_tail, load_d4rl_hdf5  # noqa: PLC0415
    from odt.tasks import get_task  # noqa: PLC0415

    from pipeline.common import file_sha  # noqa: PLC0415

    spec = get_task(args.task)
    progress = not args.no_progress
    if args.source == "minari":
        from odt.datasets.minari_io import load_minari  # noqa: PLC0415

        trajectories, dataset_id = load_minari(spec)
        return trajectories, {"minari_id": dataset_id}, False
    if args.source == "file":
        path, origin = Path(args.path), {"path": str(args.path)}
    elif args.source == "d4rl":
        from odt.datasets.download import fetch_d4rl  # noqa: PLC0415

        url = args.url or spec.url
        path = fetch_d4rl(url, cache_root(args.cache) / "d4rl", sha256=spec.sha256, progress=progress)
        origin = {"url": url, "path": str(path)}
    else:
        from odt.datasets.generate import generate_task  # noqa: PLC0415

        path, origin = generate_task(
            spec, seed=args.seed, train_steps=args.train_steps, target_return=args.target_return,
            transitions=args.transitions, cache_dir=cache_root(args.cache) / "generate", progress=progress,
        )
    trajectories = load_d4rl_hdf5(path, args.task)
    return trajectories, {**origin, "input_sha256": file_sha(path)}, ends_with_tail(path)


def summarize(task: str, trajectories: list) -> dict[str, Any]:
    from odt.envs import fixed_obs_json, fixed_observation_dims  # noqa: PLC0415
    from odt.tasks import get_task, normalized_score  # noqa: PLC0415

    spec = get_task(task)
    returns = np.array([t.episode_return for t in trajectories])
    lengths = np.array([len(t) for t in trajectories])
    norm = np.asarray(normalized_score(task, returns))
    return {
        "task": task,
        "obs_dim": spec.obs_dim,
        "act_dim": spec.act_dim,
        "n_trajectories": len(trajectories),
        "n_transitions": int(lengths.sum()),
        "n_terminals": int(sum(bool(t.terminals[-1]) for t in trajectories)),
        "length_mean": float(lengths.mean()),
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "return_min": float(returns.min()),
        "return_max": float(returns.max()),
        "normalized_mean": float(norm.mean()),
        "normalized_min": float(norm.min()),
        "normalized_max": float(norm.max()),
        "fixed_obs": fixed_obs_json(fixed_observation_dims(task, trajectories)),
    }


def write_dataset(out: Path, task: str, trajectories: list, meta: dict[str, Any], tail: bool) -> dict[str, Any]:
    """DIR/<task>.hdf5 and DIR/<task>.json, built in a temp directory beside DIR, then swapped in."""
    from odt.datasets.hdf5 import write_d4rl_hdf5  # noqa: PLC0415

    from pipeline.common import file_sha, write_json  # noqa: PLC0415

    with atomic_dir(out) as tmp:
        attrs = {"task": task, "source": meta["source"], "tail": tail}
        h5 = write_d4rl_hdf5(tmp / f"{task}.hdf5", trajectories, metadata=attrs)
        meta = {**meta, "tail": tail, "sha256": file_sha(h5), "file": f"{task}.hdf5"}
        write_json(tmp / f"{task}.json", meta)
    return meta


def fetch(args: argparse.Namespace) -> dict[str, Any]:
    trajectories, origin, tail = load_source(args)
    meta = {"source": args.source, **summarize(args.task, trajectories), "origin": origin}
    if args.source == "generate":
        meta["note"] = "generated with SAC in gymnasium, not D4RL data: compare with the paper in trend only"
    return write_dataset(Path(args.out), args.task, trajectories, meta, tail)


def main(argv: list[str] | None = None) -> int:
    from pipeline.common import fail  # noqa: PLC0415

    try:
        args = parse_args(argv)
    except _BadArgs as err:
        return fail(str(err))
    from odt.datasets.hdf5 import DatasetError  # noqa: PLC0415
    from odt.tasks import UnknownTaskError  # noqa: PLC0415

    from odt.datasets.download import DownloadError  # noqa: PLC0415
    from odt.datasets.generate import GenerateError  # noqa: PLC0415
    from odt.datasets.hdf5 import DatasetError  # noqa: PLC0415
    from odt.tasks import UnknownTaskError  # noqa: PLC0415

    try:
        meta = fetch(args)
    except (DatasetError, GenerateError, UnknownTaskError) as err:
        return fail(str(err))
    except DownloadError as err:  # the input may be fine; the network was not
        return fail(str(err), code=1)
    except Exception as err:
        return fail(f"fetch {args.task} failed: {type(err).__name__}: {err}", code=1, trace=True)
    print(f"{args.task}: {meta['n_trajectories']} trajectories, {meta['n_transitions']} transitions, "
          f"normalized return {meta['normalized_mean']:.1f} (mean) from {args.source} -> {Path(args.out) / (args.task + '.hdf5')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

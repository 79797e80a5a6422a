"""DVC stage `fetch@<task>`: one dataset per task in D4RL's HDF5 layout, whatever the source.

    python -m pipeline.fetch --task hopper-medium-v2 --source generate --seed 0 --train-steps 5000 \\
        --transitions 20000 --out data/hopper-medium-v2
    python -m pipeline.fetch --task hopper-medium-v2 --source d4rl --out data/hopper-medium-v2
    python -m pipeline.fetch --task antmaze-umaze-v2 --source minari --out data/antmaze-umaze-v2
    python -m pipeline.fetch --task hopper-medium-v2 --source file --path hopper_medium-v2.hdf5 \
        --out data/hopper-medium-v2

Runs odt.datasets.fetch: DIR/<task>.hdf5 (float32, `next_observations`, terminals/timeouts as
D4RL) and DIR/<task>.json (provenance, sizes, returns, sha256, the dims Ant's environment pins),
written into a temp directory that then replaces DIR, so DIR is never half-written. Actions
outside [-1, 1] are rejected with one line; `--clip-actions` clips them instead, with a warning.
`--source generate` rolls out the env's shipped behaviour policies (odt/policies/<env>, or
--policies DIR) when there are some and neither --train-steps nor --target-return is given;
otherwise it trains SAC. Downloads and generated data are cached under --cache (default
$ODT_CACHE or .cache).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from odt.datasets.download import DownloadError
from odt.tasks import UnknownTaskError
from pipeline.cli import Parser, run_guarded
from pipeline.paths import ROOT

SOURCES = ("d4rl", "minari", "generate", "file")  # odt.datasets.fetch's; not imported, so --help needs no torch


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The flags, or exit 2 with one `error:` line."""
    ap = Parser(prog="python -m pipeline.fetch", description=__doc__.splitlines()[0])
    ap.add_argument("--task", required=True, help="D4RL task name, e.g. hopper-medium-v2")
    ap.add_argument("--source", required=True, choices=SOURCES)
    ap.add_argument("--url", help="d4rl: download from here instead of the task's D4RL address")
    ap.add_argument("--path", help="file: the D4RL-layout .hdf5 to use")
    ap.add_argument("--cache", help="cache root for downloads and SAC runs (default $ODT_CACHE or .cache)")
    ap.add_argument("--seed", type=int, default=0, help="generate: seed of the SAC run, or of the policies' rollout")
    ap.add_argument("--train-steps", type=int, help="generate: SAC environment-step budget")
    ap.add_argument("--target-return", type=float, help="generate: stop SAC once evaluation reaches this return")
    ap.add_argument("--transitions", type=int, help="generate: size of the dataset (SAC: of the medium rollout; "
                    "policies: default 1M for medium, the run's buffer for medium-replay)")
    ap.add_argument("--policies", help="generate: roll out the behaviour policies in this directory (default: "
                    "odt/policies/<env> when it holds manifest.json and neither --train-steps nor --target-return "
                    "is given, which train SAC instead)")
    ap.add_argument(
        "--clip-actions",
        action="store_true",
        help="clip actions outside [-1, 1] to it, with a warning saying how many (default: reject the data)",
    )
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("--out", required=True, help="output directory (data/<task>)")
    args = ap.parse_args(argv)
    for key in ("seed", "train_steps", "transitions"):
        value = getattr(args, key)
        if value is not None and value < (0 if key == "seed" else 1):
            ap.error(f"--{key.replace('_', '-')} must be {'>= 0' if key == 'seed' else 'positive'}, got {value}")
    if args.source == "file" and not args.path:
        ap.error("--source file needs --path FILE (a D4RL-layout .hdf5)")
    if args.path and args.source != "file":
        ap.error(f"--path is for --source file; with --source {args.source} drop it")
    if args.url and args.source != "d4rl":
        ap.error(f"--url is for --source d4rl; with --source {args.source} drop it")
    if args.policies and args.source != "generate":
        ap.error(f"--policies is for --source generate; with --source {args.source} drop it")
    if args.policies and (args.train_steps is not None or args.target_return is not None):
        ap.error(
            "--policies rolls out trained policies, --train-steps and --target-return train SAC: give one or the other"
        )
    return args


def cache_root(cache: str | None) -> Path:
    return Path(cache or os.environ.get("ODT_CACHE") or ROOT / ".cache")


def fetch(args: argparse.Namespace) -> dict[str, Any]:
    from odt.datasets.fetch import fetch as fetch_task

    options = {"url": args.url} if args.source == "d4rl" else {"path": args.path} if args.source == "file" else {}
    if args.source == "generate":
        options = {"seed": args.seed, "train_steps": args.train_steps, "target_return": args.target_return,
                   "transitions": args.transitions, "policies": args.policies}
    return fetch_task(
        args.task,
        args.source,
        Path(args.out),
        cache=cache_root(args.cache),
        progress=not args.no_progress,
        clip_actions=args.clip_actions,
        **options,
    )


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as done:  # --help (0) or bad flags (2, the line printed)
        return done.code
    from odt.datasets.generate import GenerateError
    from odt.datasets.hdf5 import DatasetError

    # DownloadError: the input may be fine; the network was not (exit 1)
    code, meta = run_guarded(f"fetch {args.task}", lambda: fetch(args), failed=(DownloadError,),
                             bad=(DatasetError, GenerateError, UnknownTaskError))
    if code:
        return code
    if meta.get("clipped_actions"):
        print(f"warning: {meta['clipped_actions']} of {meta['n_action_values']} action values were outside [-1, 1] "
              f"and are clipped to it (--clip-actions)", file=sys.stderr)
    print(
        f"{args.task}: {meta['n_trajectories']} trajectories, {meta['n_transitions']} transitions, "
        f"normalized return {meta['normalized_mean']:.1f} (mean) from {args.source} "
        f"-> {Path(args.out) / (args.task + '.hdf5')}"
    )
    return 0

if __name__ == "__main__":
    sys.exit(main())

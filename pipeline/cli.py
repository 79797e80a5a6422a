"""The command line every per-task stage shares, and its one-line errors."""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from odt.config import ConfigError


def fail(message: str, code: int = 2, *, trace: bool = False) -> int:
    """One line on stderr starting with `error:`; code 2 for bad input, 1 for a failed run."""
    if trace:
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    return code


def load_or_exit(path: str | Path, task: str | None = None):
    """Validated params (every task checked) and the plan of `task` (None without one), or exit 2 with one line naming the bad key."""
    from pipeline.params import load_params  # noqa: PLC0415

    try:
        params, plans = load_params(path, [task] if task else None)
    except ConfigError as err:
        sys.exit(fail(str(err)))
    return params, plans.get(task) if task else None


def stage_main(argv: list[str] | None, *, doc: str, stage: str, run: Callable[..., dict[str, Any]], root_help: str,
               failed: tuple[type[Exception], ...] = ()) -> int:
    """--task, --params, --root, --no-track, then `run(plan, params, root=..., track=...)`.

    `run` returns the one-line JSON summary to print. Bad input is one `error:` line and
    exit 2; a failed run (or one of `failed`) exits 1.
    """
    from odt.datasets.hdf5 import DatasetError  # noqa: PLC0415
    from odt.envs import EnvMismatchError  # noqa: PLC0415

    ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    ap.add_argument("--task", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--root", default=".", help=root_help)
    ap.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    args = ap.parse_args(argv)
    params, plan = load_or_exit(args.params, args.task)
    try:
        summary = run(plan, params, root=Path(args.root), track=not args.no_track)
    except (FileNotFoundError, ConfigError, EnvMismatchError, DatasetError) as err:
        return fail(str(err))
    except failed as err:
        return fail(str(err), code=1)
    except Exception as err:
        return fail(f"{stage} {args.task} failed: {type(err).__name__}: {err}", code=1, trace=True)
    print(json.dumps(summary))
    return 0

"""The command line every stage shares, and its one-line errors.

Bad input (a flag, a params.yaml key, a dataset or checkpoint that cannot be used) is one
`error:` line and exit 2; an environment error (a read-only or full output directory, a
file-size limit) is one line naming the path and the cause, exit 1; Ctrl-C is one line,
exit 130, and the rerun resumes. Parsing a flag imports neither torch nor the stage's tools.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from odt.atomic import WriteError
from odt.config import ConfigError
from pipeline import interrupts
from pipeline.heartbeat import StageBusy
from pipeline.params import load_params, plan_task
from pipeline.tracking import StoreError

INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it


def fail(message: str, code: int = 2, *, trace: bool = False) -> int:
    """One line on stderr starting with `error:`; code 2 for bad input, 1 for a failed run."""
    if trace:
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one `error:` line and exit 2, without the usage block."""

    def error(self, message: str):
        sys.exit(fail(f"{message} (see {self.prog} --help)"))


def environment_error(err: OSError) -> str:
    """`cannot write PATH: CAUSE` (odt.atomic's WriteError), else `PATH: CAUSE`, else the message as it is."""
    if isinstance(err, WriteError) or err.filename is None:
        return str(err)
    names = err.filename if err.filename2 is None else f"{err.filename} -> {err.filename2}"
    return f"{names}: {err.strerror or type(err).__name__}"


def bad_input() -> tuple[type[Exception], ...]:
    """The exceptions that mean the input is unusable (exit 2); imported once the flags are parsed."""
    from odt.checkpoint import CheckpointError
    from odt.datasets.hdf5 import DatasetError
    from odt.envs import EnvMismatchError

    return ConfigError, CheckpointError, DatasetError, EnvMismatchError


def run_guarded(what: str, body: Callable[[], Any], *, failed: tuple[type[Exception], ...] = (),
                bad: tuple[type[Exception], ...] = ()) -> tuple[int, Any]:
    """(exit code, body's value): every way a stage ends, as one line on stderr and its exit code."""
    failed = (*failed, StageBusy, StoreError)  # another live run holds the work directory; an unreadable MLflow store
    try:
        try:
            interrupts.arm()
            value = body()
        finally:
            interrupts.settle()  # the end is decided: a later Ctrl-C or SIGTERM changes nothing
        return 0, value
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (pipeline/interrupts.py)
        code, how = (err.code, err.how) if isinstance(err, interrupts.Interrupted) else (INTERRUPTED, "interrupted")
        return fail(f"{what} {how}; rerun to resume", code=code), None
    except bad as err:
        return fail(str(err)), None
    except FileNotFoundError as err:
        if err.filename is None:  # ours: a missing input, the message says which and what to run
            return fail(str(err)), None
        return fail(environment_error(err), code=1), None
    except OSError as err:
        return fail(environment_error(err), code=1), None
    except failed as err:
        return fail(str(err), code=1), None
    except Exception as err:
        return fail(f"{what} failed: {type(err).__name__}: {err}", code=1, trace=True), None


def load_or_exit(path: str | Path, task: str | None = None):
    """Validated params (every task planned: the whole file is checked) and the plan of `task`, or exit 2."""
    try:
        params, plans = load_params(path)
        if task is not None and task not in plans:
            plan_task(params, task)  # raises the one line that lists the tasks
    except ConfigError as err:
        sys.exit(fail(str(err)))
    return params, plans.get(task) if task else None


def stage_args(stage: str, doc: str, argv: list[str] | None,
               root_help: str = "repository root (data/, runs/ and mlflow.db live there)") -> argparse.Namespace:
    """A seeds stage's flags: --task, --params, --root, --no-track; a bad one is one `error:` line and exit 2."""
    ap = Parser(prog=f"python -m pipeline.{stage}", description=doc.strip().splitlines()[0])
    ap.add_argument("--task", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--root", default=".", type=Path, help=root_help)
    ap.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    return ap.parse_args(argv)


def print_summary(code: int, out: dict[str, Any] | None, fields: tuple[str, ...]) -> int:
    """A seeds stage's end (run_guarded's exit code and pipeline.seeds.run's value): on success, the summary's
    `fields` as one line of JSON. Returns the exit code."""
    if code == 0:
        print(json.dumps({k: out["summary"][k] for k in fields}))
    return code

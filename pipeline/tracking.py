"""MLflow: one experiment per task, a parent run per stage, a child run per seed; odt's Logger adapter.

Runs are found again by the tag `odt.run_key` (stage, task, fingerprint, seed), so a
stage killed and rerun continues its run instead of opening a duplicate (found, or else
created, under a file lock in the repository, so two processes never both create it), and metric rows
already in the store are not logged twice (a row is new when its step is past the last
logged step; a summary value is new when its key has no value at that step). Metrics go in
batches through MlflowClient.log_batch.

A run belongs to the checkout that made it (the tag `odt.checkout`, host and path): two
clones sharing one store (MLFLOW_TRACKING_URI) with the same settings each write their own
runs, never one run from two processes, and the second says so. Artifacts live beside a
sqlite store (`<store's folder>/mlartifacts/`, the repository's for the default store), so
they go where every run sharing that store says. A store that cannot be read is one line
(StoreError) when it is opened.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from odt.lock import file_lock
from pipeline import interrupts

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

RUN_KEY = "odt.run_key"
CHECKOUT = "odt.checkout"
SENTINEL = "wall_time"  # every metric row carries it: its history tells how far a run got
T = TypeVar("T")


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve()}/mlflow.db"


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "none"
    except (OSError, subprocess.SubprocessError):
        return "none"


def stage_tags(root: Path, profile: str, stage: str, **extra: Any) -> dict[str, Any]:
    """The tags every run of a stage carries: profile, DVC stage, the commit it ran at."""
    commit = git_commit(root)
    return {"profile": profile, "dvc_stage": stage, "git_commit": commit, "mlflow.source.git.commit": commit, **extra}


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: a result key as MLflow params."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _retry(fn: Callable[..., T], *args, **kwargs) -> T:
    """One call to the store, never cut short by Ctrl-C or SIGTERM (pipeline/interrupts.py: they are raised when it
    returns; a transaction cut short would keep the sqlite database locked against the stage's own cleanup).
    sqlite allows one writer at a time: parallel seeds retry a locked database."""
    for attempt in range(8):
        try:
            with interrupts.deferred():
                return fn(*args, **kwargs)
        except Exception as err:  # MlflowException wrapping sqlite3.OperationalError
            if "locked" not in str(err).lower() or attempt == 7:
                raise
            time.sleep(0.1 * 2**attempt)
    raise AssertionError("unreachable")


class StoreError(RuntimeError):
    """The tracking store cannot be read; one line naming it and what to do."""


def _sqlite_path(uri: str) -> Path | None:
    path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else None
    return Path(path) if path and path != ":memory:" else None


class Tracker:
    """Experiments and runs in the store at `uri` (default: sqlite mlflow.db in the repo root)."""

    def __init__(self, root: Path, uri: str | None = None):
        from mlflow.tracking import MlflowClient

        self.root = Path(root).resolve()
        self.uri = uri or tracking_uri(self.root)
        self.local = not self.uri.startswith(("http://", "https://", "databricks"))
        self.checkout = f"{socket.gethostname()}:{self.root}"
        self.shared_with: str | None = None  # another checkout's runs of the same settings, when found
        db = _sqlite_path(self.uri)
        # opening a store creates its tables: two processes doing it at once on a new sqlite
        # file race ("duplicate column name"); the lock beside the file serialises them
        with self.lock() if db is not None and db.parent.is_dir() else contextlib.nullcontext():
            try:
                self.client = _retry(MlflowClient, self.uri)  # a new store's tables are created here
                _retry(self.client.search_experiments, max_results=1)  # opened here: a broken store fails once
            except Exception as err:
                cause = " ".join(str(err).split("\n")[0].split())
                fix = (f"move it aside (mv {db} {db}.broken) to start a new one" if db is not None
                       else "check that the server is up and the URI right")
                raise StoreError(f"the MLflow store {self.uri} cannot be read ({cause}); {fix}, or point "
                                 "MLFLOW_TRACKING_URI at another store") from None

    def lock(self):
        """Find-then-create under one lock, beside a sqlite store (else in the repository): two processes with one
        run key make one run. The lock file is removed when released."""
        db = _sqlite_path(self.uri)
        return file_lock(db.with_name(db.name + ".lock") if db else self.root / ".mlflow-runs.lock")

    def experiment(self, name: str) -> str:
        with self.lock():
            exp = _retry(self.client.get_experiment_by_name, name)
            if exp is not None:
                if exp.lifecycle_stage == "deleted":
                    _retry(self.client.restore_experiment, exp.experiment_id)
                return exp.experiment_id
            db = _sqlite_path(self.uri)
            base = db.parent if db is not None else self.root  # beside the store: where every checkout sharing it looks
            location = (base / "mlartifacts" / name.replace("/", "_")).as_uri() if self.local else None
            try:
                return _retry(self.client.create_experiment, name, artifact_location=location)
            except Exception:  # created meanwhile by a process that does not share this lock (another machine)
                return _retry(self.client.get_experiment_by_name, name).experiment_id

    def find(self, experiment_id: str, key: str, *, announce: bool = False):
        """This checkout's run with this key (a run older than the checkout tag counts as this checkout's).

        `announce` (a stage's parent run): say so when the store holds another checkout's runs of these settings.
        Parents are opened under the store's lock, so of two checkouts starting at once exactly one, the second,
        says it; their children's opening interleaves, and either could find the other's first."""
        runs = _retry(self.client.search_runs, [experiment_id], filter_string=f"tags.`{RUN_KEY}` = '{key}'",
                      max_results=100, order_by=["attributes.start_time ASC"])
        mine = [r for r in runs if r.data.tags.get(CHECKOUT, self.checkout) == self.checkout]
        if announce and runs and not mine and self.shared_with is None:
            self.shared_with = runs[0].data.tags[CHECKOUT]
            print(f"MLflow: {self.uri} holds runs of these settings from another checkout ({self.shared_with}); "
                  "this checkout writes its own", flush=True)
        return mine[0] if mine else None

    def run(self, experiment_id: str, key: str, name: str, tags: dict[str, Any], parent: str | None = None) -> str:
        """The run with this key: found (and marked running again unless finished) or created."""
        tags = {k: str(v) for k, v in tags.items()}
        with self.lock():
            found = self.find(experiment_id, key, announce=parent is None)
            if found is None:
                all_tags = {RUN_KEY: key, CHECKOUT: self.checkout, "mlflow.runName": name, **tags}
                if parent:
                    all_tags["mlflow.parentRunId"] = parent
                run = _retry(self.client.create_run, experiment_id, tags=all_tags, run_name=name)
                return run.info.run_id
        run_id = found.info.run_id
        for k, v in tags.items():
            _retry(self.client.set_tag, run_id, k, v)
        if found.info.status != "FINISHED":
            _retry(self.client.update_run, run_id, status="RUNNING")
        return run_id

    def status(self, run_id: str) -> str:
        return _retry(self.client.get_run, run_id).info.status

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            _retry(self.client.log_batch, run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        """Values at `step`, each once: a key the run holds at that step already (a row of its loop, or a
        publish cut short and redone) is not logged again."""
        held = _retry(self.client.get_run, run_id).data.metrics
        new = {k: v for k, v in metrics.items()
               if k not in held or all(m.step != step for m in _retry(self.client.get_metric_history, run_id, k))}
        RunLogger(self.uri, run_id).log_summary(new, step)

    def open(self, experiment_id: str, key: str, name: str, tags: dict[str, Any], params: dict[str, Any],
             parent: str | None = None) -> tuple[str, bool]:
        """(run id, finished before): the run with this key, its params logged once."""
        run_id = self.run(experiment_id, key, name, tags, parent)
        finished = self.status(run_id) == "FINISHED"
        if not finished:
            self.log_params(run_id, params)
        return run_id, finished

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        _retry(self.client.log_batch, run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifacts(self, run_id: str, paths: list[Path], artifact_path: str | None = None) -> None:
        for p in paths:
            if Path(p).is_file():
                _retry(self.client.log_artifact, run_id, str(p), artifact_path)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        _retry(self.client.set_terminated, run_id, status)

    def stop_runs(self, experiment_id: str, key_prefix: str, status: str) -> None:
        """This checkout's runs whose key starts with `key_prefix` and that are still RUNNING, ended as `status`."""
        runs = _retry(self.client.search_runs, [experiment_id], filter_string=f"tags.`{RUN_KEY}` LIKE '{key_prefix}%'",
                      max_results=1000)
        for r in runs:
            if r.info.status == "RUNNING" and r.data.tags.get(CHECKOUT, self.checkout) == self.checkout:
                self.finish(r.info.run_id, status)


class RunLogger:
    """odt's Logger for one MLflow run: picklable (a worker process builds its own client).

    A row is sent only when its step is past the last logged one, so a loop resumed from a
    checkpoint, which logs again the steps after it, logs each step once.
    """

    def __init__(self, uri: str, run_id: str):
        self.uri, self.run_id = uri, run_id
        self._client = None
        self._last_step: float | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "run_id": self.run_id, "_client": None, "_last_step": None}

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = _retry(MlflowClient, self.uri)
        return self._client

    def last_step(self) -> float:
        if self._last_step is None:
            history = _retry(self.client.get_metric_history, self.run_id, SENTINEL)
            self._last_step = max((m.step for m in history), default=-1)
        return self._last_step

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """One row, in one log_batch call (rows of a loop carry `wall_time`, the sentinel)."""
        if step > self.last_step():
            self.log_summary(metrics, step)
            self._last_step = step

    def report(self, value: float, step: int, final: bool) -> None:
        pass  # evaluations are in the rows already

    def log_summary(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Values logged as they are, without the step bookkeeping (a run's final numbers)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            _retry(self.client.log_batch, self.run_id, metrics=items[i : i + 1000])

"""The seeds of a stage: in parallel, each resumable in its own directory, each a child MLflow run.

A stage script describes itself as a `Stage`: its result key (what determines its results:
the work directory and the MLflow runs are keyed by its fingerprint) and one function
`job(seed, seed_dir, logger)` that runs a seed (or resumes it from what `seed_dir` holds) and
returns its result (pipeline/jobs.py). `run` runs every seed and publishes the stage. A
finished seed leaves `result.json` (written last), so a rerun skips it. While the seeds run
the stage holds its work directory with a heartbeat (pipeline/heartbeat.py): a worker whose
stage is gone ends itself, and a second live run of the stage is refused.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from odt import curves
from odt.atomic import atomic_dir, atomic_path, copy_file, write_json
from odt.divergence import Diverged
from pipeline import caching, heartbeat, parallel, paths
from pipeline.tracking import RunLogger, Tracker, flat, stage_tags

Job = Callable[[int, Path, Any], dict[str, Any]]  # (seed, seed_dir, logger or None) -> result


class SeedsFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Stage:
    """What `run` needs of a stage: every seed of `task` runs `job` in its own directory and leaves `files` there."""

    name: str  # pretrain, finetune, dt, iql, sac: runs/<task>/<name>/ and the MLflow parent run's name
    task: str
    params: Any  # pipeline.params.Params: seeds, parallel, profile
    root: Path  # absolute: a dask or ray worker may run in another directory
    key: dict[str, Any]  # everything that determines the results, seeds left out (MLflow params too)
    job: Job
    files: tuple[str, ...]  # published per seed in runs/<task>/<name>/seed_<k>/
    step: int = 0  # the MLflow step of the summary: updates or online samples
    tags: dict[str, Any] = field(default_factory=dict)  # on the stage's MLflow runs, beside stage_tags'
    extra: Callable[[list[dict[str, Any]]], dict[str, Any]] = lambda results: {}  # the summary's own keys
    # an experiment's variant (experiment, variant): its own MLflow runs, tagged with both, published in `out`
    # (experiments/<experiment>/<task>/<variant>/<name>/); the work directory is keyed by `key` alone, so
    # variants (of any experiment) that share a phase share its seeds' work
    variant: tuple[str, str] | None = None
    out: Path | None = None  # where the seeds' files go; None: runs/<task>/<name>/

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())


def run(stage: Stage, *, track: bool = True) -> dict[str, Any]:
    """Every seed of the stage (those without a result run, in parallel), then its outputs published.

    Returns the summary (runs/<task>/<name>.json), the seeds' results in seed order, the work
    directory and the workers each seed ran on.
    """
    par, seeds = stage.params.parallel, list(range(stage.params.seeds))
    # planned for all seeds, not the ones left: a resumed seed runs with the threads it started with
    workers, threads = parallel.plan_workers(par.n_jobs, len(seeds), par.backend, par.threads_per_worker)
    key = {**stage.key, "torch_threads": threads}  # torch's CPU results depend on it
    fp = caching.fingerprint(key)
    work = paths.work_root(stage.root, stage.task) / f"{stage.name}-{fp}"
    what = f"{stage.name} {stage.task}" + (f" ({'/'.join(stage.variant)})" if stage.variant else "")
    with heartbeat.heartbeat(work, what) as hb:
        pending = [s for s in seeds if caching.done(work / f"seed_{s}" / "result.json") is None]
        workers = max(1, min(workers, len(pending)))
        # a variant's: not an extension of the stage's own key, which `_stopped` matches as a prefix
        mlflow_key = f"{stage.name}{'@' + '/'.join(stage.variant) if stage.variant else ''}:{fp}"
        how: dict[str, Any] = {"work_dir": work, "tracker": None, "exp": None, "key": mlflow_key,
                               "parent": None, "children": {}}
        try:
            if track:
                _open_runs(stage, how, key, pending, {"backend": par.backend, "workers": workers,
                                                      "threads_per_worker": threads})
            print(f"{what}: {len(pending)} of {len(seeds)} seeds to run ({len(seeds) - len(pending)} done "
                  f"before); {par.backend}, {workers} workers x {threads} torch threads", flush=True)
            jobs = [dict(stage=stage, seed=s, seed_dir=work / f"seed_{s}", threads=threads, hb=hb,
                         tracking=(how["tracker"].uri, how["children"][s]) if track else None) for s in pending]
            outcomes = parallel.run_parallel(_seed, jobs, backend=par.backend, n_jobs=workers, address=par.address)
        except BaseException as err:
            interrupted = isinstance(err, KeyboardInterrupt)
            if interrupted:
                parallel.stop_workers(par.backend)
            _stopped(how, interrupted)
            raise
    results = _results(stage, how, outcomes)
    summary = _publish(stage, how, results)
    return {"summary": summary, "results": results, "work_dir": str(work),
            "workers": [{"seed": o["seed"], "pid": o["pid"], "threads": o["threads"]} for o in outcomes]}


def _open_runs(stage: Stage, how: dict[str, Any], key: dict[str, Any], pending: list[int], ran: dict[str, Any]) -> None:
    """The stage's MLflow parent run and a child run per seed, found again by key after a rerun; a seed that finished
    before a crash but was not yet published is published now. `how` records each step as it is taken."""
    tracker = how["tracker"] = Tracker(stage.root)
    exp = how["exp"] = tracker.experiment(f"odt/{stage.task}")
    variant = dict(zip(("experiment", "variant"), stage.variant or ()))
    dvc_stage = f"experiment@{stage.variant[0]}" if stage.variant else f"{stage.name}@{stage.task}"
    tags = stage_tags(stage.root, stage.params.profile, dvc_stage, task=stage.task, **ran,
                      algorithm=key.get("algorithm", stage.name), **variant, **stage.tags)
    run_params = flat({k: v for k, v in key.items() if k != "stage"})
    parent = how["parent"] = tracker.open(exp, how["key"], stage.name, tags, run_params)[0]
    for s in range(stage.params.seeds):
        how["children"][s], _ = tracker.open(exp, f"{how['key']}:seed{s}", f"seed {s}", {**tags, "seed": s},
                                             {**run_params, "seed": s}, parent=parent)
        if s not in pending:  # finished before a crash but not yet published
            seed_dir = how["work_dir"] / f"seed_{s}"
            publish_run(tracker, how["children"][s], seed_dir, caching.done(seed_dir / "result.json"), stage.files)


def _seed(stage: Stage, seed: int, seed_dir: Path, threads: int, tracking: tuple[str, str] | None,
          hb: dict | None = None) -> dict[str, Any]:
    """One seed in a worker process: never raises, so the other seeds finish and keep their results."""
    import torch

    stop = heartbeat.watch(hb)  # ends this process if the stage dies
    torch.set_num_threads(threads)
    info = {"seed": seed, "pid": os.getpid(), "threads": torch.get_num_threads()}
    try:
        result = caching.done(seed_dir / "result.json")
        if result is None:
            result = stage.job(seed, seed_dir, None if tracking is None else RunLogger(*tracking))
            write_json(seed_dir / "result.json", result)  # the done marker: written last
            scores = " -> ".join(f"{p} {result[f'{p}_normalized']:.2f}" for p in ("offline", "online")
                                 if f"{p}_normalized" in result)
            print(f"{stage.name} {result['task']} seed {seed}: {scores} ({result['wall_time']:.0f} s)", flush=True)
        if tracking is not None:
            publish_run(Tracker(stage.root, tracking[0]), tracking[1], seed_dir, result, stage.files)
        return {**info, "ok": True, "result": result}
    except Exception as err:  # reported by the stage, naming the seed
        if tracking is not None:
            try:
                Tracker(stage.root, tracking[0]).finish(tracking[1], "FAILED")
            except Exception:  # the store itself may be the problem; the stage reports the seed anyway
                pass

        said = isinstance(err, (OSError, Diverged))  # a full disk, a read-only dir, NaN: the message says it all
        error = " ".join(str(err).split())  # one line
        return {**info, "ok": False, "error": error if said else f"{type(err).__name__}: {error}",
                "traceback": None if said else traceback.format_exc()}
    finally:
        if stop is not None:
            stop.set()


def publish_run(tracker, run_id: str, seed_dir: Path, result: dict[str, Any], files: tuple[str, ...]) -> None:
    """A finished seed's numbers (its scores, counters), files (and its curve as a PNG), then its run marked
    finished."""
    if tracker.status(run_id) == "FINISHED":
        return
    # wall_time is a metric of every logged row already: a second value at the last row's step would be a duplicate
    numbers = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
               and k not in ("seed", "wall_time")}
    tracker.log_metrics(run_id, numbers, step=result.get("num_updates", 0))
    artifacts = [seed_dir / name for name in files]
    if (seed_dir / "curve.csv").is_file():
        artifacts.append(curves.plot_seed(seed_dir / "curve.png", curves.read_csv(seed_dir / "curve.csv"),
                                          seed=result["seed"], title=result["task"]))
    tracker.log_artifacts(run_id, artifacts)
    tracker.finish(run_id)


def _stopped(how: dict[str, Any], interrupted: bool) -> None:
    """The stage stops before it finished: its runs still RUNNING, however far it got in opening or publishing them,
    are marked KILLED (Ctrl-C, SIGTERM) or FAILED."""
    if how["exp"] is not None:
        with contextlib.suppress(Exception):  # the store itself may be what failed
            how["tracker"].stop_runs(how["exp"], how["key"], "KILLED" if interrupted else "FAILED")


def _results(stage: Stage, how: dict[str, Any], outcomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every seed's result in seed order, or SeedsFailed naming each failed seed (their tracebacks on stderr)."""
    failed = [o for o in outcomes if not o["ok"]]
    for o in failed:
        if o["traceback"]:
            print(f"--- {stage.task} seed {o['seed']} ---\n{o['traceback']}", file=sys.stderr)
    if failed:
        if how["tracker"] is not None:
            how["tracker"].finish(how["parent"], "FAILED")
        raise SeedsFailed("; ".join(f"{stage.name} {stage.task} seed {o['seed']} failed: {o['error']}" for o in failed)
                          + f" ({stage.params.seeds - len(failed)} other seeds finished and are kept for the rerun)")
    return [caching.done(how["work_dir"] / f"seed_{s}" / "result.json") for s in range(stage.params.seeds)]


def _publish(stage: Stage, how: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """The seeds' `files` (runs/<task>/<name>/seed_<k>/) and the summary over seeds (runs/<task>/<name>.json, the DVC
    metrics file: curves.summarize and the stage's `extra`) published together, then the summary logged at the
    stage's `step` to the MLflow parent run, which ends.

    Both outputs are written in full before either replaces what was there, so an error while
    writing (a full disk) leaves the old pair; a kill between the two renames leaves a
    mix that DVC sees as an unfinished stage and re-runs (tests/test_pipeline_e2e.py).
    """
    out = stage.out or paths.run_dir(stage.root, stage.task, stage.name)
    summary = {"task": stage.task, **curves.summarize(results), **stage.extra(results)}
    summary_path, work = out.parent / f"{stage.name}.json", how["work_dir"]
    try:
        with atomic_path(summary_path) as summary_tmp, atomic_dir(out) as tmp:
            for s in range(stage.params.seeds):
                for file in stage.files:
                    copy_file(work / f"seed_{s}" / file, tmp / f"seed_{s}" / file)
            summary_tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")  # as write_json writes it
        tracker, parent = how["tracker"], how["parent"]
        if tracker is not None and tracker.status(parent) != "FINISHED":
            numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
            tracker.log_metrics(parent, numbers, step=stage.step)
            tracker.log_artifacts(parent, [summary_path])
            tracker.finish(parent)
    except BaseException as err:
        _stopped(how, isinstance(err, KeyboardInterrupt))
        raise
    return summary

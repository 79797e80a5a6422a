"""The seeds of a stage: in parallel, each resumable in its own directory, each a child MLflow run.

A stage names its result key (what determines its results: the work directory and the
MLflow runs are keyed by its fingerprint) and one function `job(seed, seed_dir, logger)`
that runs a seed (or resumes it from what `seed_dir` holds) and returns its result. A
finished seed leaves `result.json` (written last), so a rerun skips it. While the seeds
run the stage holds its work directory with a heartbeat (pipeline/heartbeat.py): a worker
whose stage is gone ends itself, and a second live run of the stage is refused. `stage`
publishes the stage's output directory and its summary together, once every seed is done.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from odt import curves
from odt.atomic import atomic_dir, atomic_path, copy_file, write_json
from pipeline import caching, heartbeat, parallel, paths

Job = Callable[[int, Path, Any], dict[str, Any]]  # (seed, seed_dir, logger or None) -> result


class SeedsFailed(RuntimeError):
    pass


def _seed(job: Job, name: str, seed: int, seed_dir: Path, threads: int, tracking: tuple[str, str] | None,
          files: tuple[str, ...], root: Path, hb: dict | None = None) -> dict[str, Any]:
    """One seed in a worker process: never raises, so the other seeds finish and keep their results."""
    import torch  # noqa: PLC0415

    stop = heartbeat.watch(hb)  # ends this process if the stage dies
    torch.set_num_threads(threads)
    info = {"seed": seed, "pid": os.getpid(), "threads": torch.get_num_threads()}
    try:
        from pipeline.tracking import RunLogger, Tracker  # noqa: PLC0415

        result = caching.done(seed_dir / "result.json")
        if result is None:
            result = job(seed, seed_dir, None if tracking is None else RunLogger(*tracking))
            write_json(seed_dir / "result.json", result)  # the done marker: written last
            scores = " -> ".join(f"{p} {result[f'{p}_normalized']:.2f}" for p in ("offline", "online")
                                 if f"{p}_normalized" in result)
            print(f"{name} {result['task']} seed {seed}: {scores} ({result['wall_time']:.0f} s)", flush=True)
        if tracking is not None:
            publish_run(Tracker(root, tracking[0]), tracking[1], seed_dir, result, files)
        return {**info, "ok": True, "result": result}
    except Exception as err:  # reported by the stage, naming the seed
        if tracking is not None:
            try:
                Tracker(root, tracking[0]).finish(tracking[1], "FAILED")
            except Exception:  # the store itself may be the problem; the stage reports the seed anyway
                pass
        from odt.divergence import Diverged  # noqa: PLC0415

        said = isinstance(err, (OSError, Diverged))  # a full disk, a read-only dir, NaN: the message says it all
        error = " ".join(str(err).split())  # one line
        return {**info, "ok": False, "error": error if said else f"{type(err).__name__}: {error}",
                "traceback": None if said else traceback.format_exc()}
    finally:
        if stop is not None:
            stop.set()


def publish_run(tracker, run_id: str, seed_dir: Path, result: dict[str, Any], files: tuple[str, ...]) -> None:
    """A finished seed's numbers (its scores, counters), files (and its curve as a PNG), then its run marked finished."""
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


def run(name: str, plan, params, *, root: Path, key: dict[str, Any], job: Job, files: tuple[str, ...],
        track: bool = True, tags: dict[str, Any] | None = None, backend: str | None = None,
        n_jobs: int | None = None, address: str | None = None,
        threads_per_worker: int | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every seed of stage `name` (e.g. "finetune") for one task, each leaving `files` in its seed directory.

    Returns the seeds' results in seed order and how it ran: work dir, workers, the MLflow
    parent run (`tracker` and `parent`).
    """
    root = Path(root).resolve()  # absolute: a dask or ray worker may run in another directory
    par = params.parallel
    backend, address = backend or par.backend, address or par.address
    seeds = list(range(params.seeds))
    # planned for all seeds, not the ones left: a resumed seed runs with the threads it started with
    workers, threads = parallel.plan_workers(n_jobs or par.n_jobs, len(seeds), backend,
                                             threads_per_worker or par.threads_per_worker)
    key = {**key, "torch_threads": threads}  # torch's CPU results depend on it
    fp = caching.fingerprint(key)
    work = paths.work_root(root, plan.name) / f"{name}-{fp}"
    with heartbeat.heartbeat(work, f"{name} {plan.name}") as hb:
        pending = [s for s in seeds if caching.done(work / f"seed_{s}" / "result.json") is None]
        workers = max(1, min(workers, len(pending)))

        how: dict[str, Any] = {"work_dir": work, "tracker": None, "exp": None, "key": f"{name}:{fp}", "parent": None}
        children: dict[int, str] = {}
        try:
            if track:
                from pipeline.tracking import Tracker, flat, stage_tags  # noqa: PLC0415

                tracker = how["tracker"] = Tracker(root)
                exp = how["exp"] = tracker.experiment(f"odt/{plan.name}")
                tags = stage_tags(root, params.profile, f"{name}@{plan.name}", task=plan.name, backend=backend,
                                  workers=workers, threads_per_worker=threads, algorithm=key.get("algorithm", name),
                                  **(tags or {}))
                run_params = flat({k: v for k, v in key.items() if k != "stage"})
                parent = how["parent"] = tracker.open(exp, how["key"], name, tags, run_params)[0]
                for s in seeds:
                    children[s], _ = tracker.open(exp, f"{how['key']}:seed{s}", f"seed {s}", {**tags, "seed": s},
                                                  {**run_params, "seed": s}, parent=parent)
                    if s not in pending:  # finished before a crash but not yet published
                        publish_run(tracker, children[s], work / f"seed_{s}",
                                    caching.done(work / f"seed_{s}" / "result.json"), files)

            print(f"{name} {plan.name}: {len(pending)} of {len(seeds)} seeds to run ({len(seeds) - len(pending)} done "
                  f"before); {backend}, {workers} workers x {threads} torch threads", flush=True)
            jobs = [dict(job=job, name=name, seed=s, seed_dir=work / f"seed_{s}", threads=threads,
                         files=files, tracking=(how["tracker"].uri, children[s]) if track else None, root=root, hb=hb)
                    for s in pending]
            outcomes = parallel.run_parallel(_seed, jobs, backend=backend, n_jobs=workers, address=address)
        except BaseException as err:
            interrupted = isinstance(err, KeyboardInterrupt)
            if interrupted:
                parallel.stop_workers(backend)
            _stopped(how, interrupted)
            raise
    failed = [o for o in outcomes if not o["ok"]]
    for o in failed:
        if o["traceback"]:
            print(f"--- {plan.name} seed {o['seed']} ---\n{o['traceback']}", file=sys.stderr)
    if failed:
        if track:
            how["tracker"].finish(how["parent"], "FAILED")
        raise SeedsFailed("; ".join(f"{name} {plan.name} seed {o['seed']} failed: {o['error']}" for o in failed)
                          + f" ({len(seeds) - len(failed)} other seeds finished and are kept for the rerun)")
    results = [caching.done(work / f"seed_{s}" / "result.json") for s in seeds]
    return results, {**how, "workers": [{"seed": o["seed"], "pid": o["pid"], "threads": o["threads"]} for o in outcomes]}


def stage(name: str, plan, params, *, root: Path, key: dict[str, Any], job: Job, files: tuple[str, ...], step: int,
          extra: Callable[[list[dict[str, Any]]], dict[str, Any]] = lambda results: {}, track: bool = True,
          tags: dict[str, Any] | None = None, **parallel) -> dict[str, Any]:
    """A seeds stage end to end: `run` every seed, then publish the seeds' `files` (runs/<task>/<name>/seed_<k>/) and
    the summary over seeds (runs/<task>/<name>.json, the DVC metrics file: curves.summarize and `extra(results)`)
    together, then log the summary at `step` to the MLflow parent run and end it.

    Both outputs are written in full before either replaces what was there, so an error while
    writing (a full disk) leaves the old pair; a kill between the two renames leaves a
    mix that DVC sees as an unfinished stage and re-runs (tests/test_pipeline_e2e.py).
    """
    out = paths.run_dir(root, plan.name, name)
    results, how = run(name, plan, params, root=root, key=key, job=job, files=files, track=track, tags=tags, **parallel)
    summary = {"task": plan.name, **curves.summarize(results), **extra(results)}
    summary_path, work = out.parent / f"{name}.json", how["work_dir"]
    try:
        with atomic_path(summary_path) as summary_tmp, atomic_dir(out) as tmp:
            for s in range(params.seeds):
                for file in files:
                    copy_file(work / f"seed_{s}" / file, tmp / f"seed_{s}" / file)
            summary_tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")  # as write_json writes it
        tracker, parent = how["tracker"], how["parent"]
        if tracker is not None and tracker.status(parent) != "FINISHED":
            tracker.log_metrics(parent, {k: v for k, v in summary.items() if isinstance(v, (int, float))}, step=step)
            tracker.log_artifacts(parent, [summary_path])
            tracker.finish(parent)
    except BaseException as err:
        _stopped(how, isinstance(err, KeyboardInterrupt))
        raise
    return {"summary": summary, "results": results, "work_dir": str(work), "workers": how["workers"]}

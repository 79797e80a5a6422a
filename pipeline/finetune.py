"""DVC stage `finetune@<task>`: online finetuning from the pretrained checkpoint, one run per seed.

    python -m pipeline.finetune --task hopper-medium-v2

Seeds 0 .. seeds-1 run in parallel through joblib (parallel.backend: loky on this
machine, dask or ray on a cluster), each worker limited to `threads` torch threads so
that workers x threads <= cores. Writes runs/<task>/finetune/seed_<k>/{result.json,
curve.csv, policy.pt} and the summary runs/<task>/finetune.json. MLflow: a parent run
`finetune` in experiment `odt/<task>` with one child run per seed.

A killed stage resumes: finished seeds are read back, unfinished ones continue from their
last checkpoint, and the MLflow runs are the same ones. A failing seed fails the stage
with a message naming task and seed; the other seeds' results are kept for the rerun.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from odt.atomic import atomic_dir
from pipeline import common
from pipeline.params import Params, TaskPlan


class SeedsFailed(RuntimeError):
    pass


def seed_job(plan: TaskPlan, params: Params, seed: int, *, root: Path, checkpoint: Path, work_dir: Path,
             threads: int, tracking: tuple[str, str] | None = None) -> dict[str, Any]:
    """One seed in a worker process: never raises, so the other seeds finish and keep their results."""
    torch.set_num_threads(threads)
    info = {"seed": seed, "pid": os.getpid(), "threads": torch.get_num_threads()}
    logger = None
    try:
        if tracking is not None:
            from pipeline.tracking import RunLogger  # noqa: PLC0415

            logger = RunLogger(*tracking)
        result = common.run_finetune_seed(plan, params, seed, checkpoint=checkpoint, work_dir=work_dir, root=root,
                                          log_fn=logger)
        if tracking is not None:
            publish_seed_run(tracking, Path(work_dir) / f"seed_{seed}", plan.name, result)
        print(f"finetune {plan.name} seed {seed}: offline {result['offline_normalized']:.2f} -> "
              f"online {result['online_normalized']:.2f} ({result['online_samples']} samples, "
              f"{result['wall_time']:.0f} s)", flush=True)
        return {**info, "ok": True, "result": result}
    except Exception as err:  # reported by the stage, naming the seed
        import traceback  # noqa: PLC0415

        if tracking is not None:
            try:
                from pipeline.tracking import Tracker  # noqa: PLC0415

                Tracker(root, tracking[0]).finish(tracking[1], "FAILED")
            except Exception:  # the store itself may be the problem; the stage reports the seed anyway
                pass
        return {**info, "ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}


def publish_seed_run(tracking: tuple[str, str], seed_dir: Path, task: str, result: dict[str, Any]) -> None:
    """Summary metrics, curve CSV/PNG and final policy of a finished seed; then mark its run finished."""
    from pipeline.tracking import RunLogger, Tracker  # noqa: PLC0415

    uri, run_id = tracking
    tracker = Tracker(common.ROOT, uri)
    if tracker.status(run_id) == "FINISHED":
        return
    rows = json.loads((seed_dir / "rows.json").read_text())
    RunLogger(uri, run_id)(rows)  # anything a crash kept from the store
    if "online_normalized" not in tracker.client.get_run(run_id).data.metrics:  # not again after a crash
        RunLogger(uri, run_id).log({k: result[k] for k in ("offline_normalized", "offline_normalized_std",
                                                            "online_normalized", "online_normalized_std")},
                                   step=result["online_samples"])
    curve = common.read_csv(seed_dir / "curve.csv")
    png = common.plot_curve(seed_dir / "curve.png",
                            [{"online_samples": r["online_samples"], "mean": r["eval_normalized"],
                              "std": r["eval_normalized_std"], "seeds": 1} for r in curve],
                            title=f"{task} seed {result['seed']} (std over eval episodes)")
    tracker.log_artifacts(run_id, [seed_dir / "curve.csv", png, seed_dir / "policy.pt", seed_dir / "result.json"])
    tracker.finish(run_id)


def run_stage(plan: TaskPlan, params: Params, *, root: Path = common.ROOT, track: bool = True,
              backend: str | None = None, n_jobs: int | None = None, address: str | None = None,
              threads_per_worker: int | None = None) -> dict[str, Any]:
    """All seeds of one task; returns the summary and which worker ran which seed with how many threads."""
    root = Path(root).resolve()  # absolute: a dask or ray worker may run in another directory
    par = params.parallel
    backend = backend or par.backend
    address = address or par.address
    checkpoint = common.pretrain_dir(root, plan.name) / "checkpoint.pt"
    if not checkpoint.is_file():
        raise FileNotFoundError(f"pretrained checkpoint {checkpoint} does not exist; run `dvc repro pretrain@{plan.name}` first")
    common.make_envs(plan, 1, params, common.fixed_obs(root, plan.name)).close()  # a dims mismatch: one line, before any seed
    work = common.finetune_work_dir(plan, params, checkpoint=checkpoint, root=root)
    seeds = list(range(params.seeds))
    pending = [s for s in seeds if common.seed_done(work, s) is None]
    # planned for all seeds, not the ones left: a resumed seed runs with the threads it started with
    workers, threads = common.plan_workers(n_jobs or par.n_jobs, len(seeds), backend,
                                           threads_per_worker or par.threads_per_worker)
    workers = max(1, min(workers, len(pending)))

    tracker = parent = None
    children: dict[int, str] = {}
    if track:
        from pipeline.tracking import Tracker, git_commit  # noqa: PLC0415

        cfg, hparams = common.train_config(plan, params, "finetune", root=root)
        key = common.finetune_key(plan, params, cfg, checkpoint, root=root)
        fp = common.fingerprint(key)
        tracker = Tracker(root)
        exp = tracker.experiment(f"odt/{plan.name}")
        commit = git_commit(root)
        tags = {"task": plan.name, "profile": params.profile, "dvc_stage": f"finetune@{plan.name}",
                "git_commit": commit, "mlflow.source.git.commit": commit, "hparams_source": hparams["source"],
                "backend": backend, "workers": workers, "threads_per_worker": threads}
        parent = tracker.run(exp, f"finetune:{fp}", "finetune", tags)
        run_params = common.flat({k: v for k, v in key.items() if k != "stage"})
        if tracker.status(parent) != "FINISHED":
            tracker.log_params(parent, run_params)
        for s in seeds:
            children[s] = tracker.run(exp, f"finetune:{fp}:seed{s}", f"seed {s}", {**tags, "seed": s}, parent=parent)
            if tracker.status(children[s]) != "FINISHED":
                tracker.log_params(children[s], {**run_params, "seed": s})
        for s in seeds:  # finished before a crash but not yet published
            if s not in pending and tracker.status(children[s]) != "FINISHED":
                publish_seed_run((tracker.uri, children[s]), work / f"seed_{s}", plan.name, common.seed_done(work, s))

    print(f"finetune {plan.name}: {len(pending)} of {len(seeds)} seeds to run ({len(seeds) - len(pending)} done before); "
          f"{backend}, {workers} workers x {threads} torch threads", flush=True)
    jobs = [dict(plan=plan, params=params, seed=s, root=root, checkpoint=checkpoint, work_dir=work, threads=threads,
                 tracking=(tracker.uri, children[s]) if track else None) for s in pending]
    try:
        outcomes = common.run_parallel(seed_job, jobs, backend=backend, n_jobs=workers, address=address)
    except BaseException:
        if track:
            tracker.finish(parent, "FAILED")
        raise
    failed = [o for o in outcomes if not o["ok"]]
    if failed:
        for o in failed:
            print(f"--- {plan.name} seed {o['seed']} ---\n{o['traceback']}", file=sys.stderr)
        if track:
            tracker.finish(parent, "FAILED")
        done = len(seeds) - len(failed)
        raise SeedsFailed("; ".join(f"finetune {plan.name} seed {o['seed']} failed: {o['error']}" for o in failed)
                          + f" ({done} other seeds finished and are kept for the rerun)")

    results = [common.seed_done(work, s) for s in seeds]
    out = common.finetune_dir(root, plan.name)
    with atomic_dir(out) as tmp:
        for s in seeds:
            common.publish_seed(work / f"seed_{s}", tmp / f"seed_{s}")
    summary = {"task": plan.name, **common.summarize(results),
               "online_samples": plan.finetune.online_samples, "hparams": results[0]["hparams"]}
    common.write_json(out.parent / "finetune.json", summary)

    if track and tracker.status(parent) != "FINISHED":
        curves = [common.read_csv(work / f"seed_{s}" / "curve.csv") for s in seeds]
        curve = common.aggregate_curves(curves, plan.finetune.online_samples)
        csv = common.write_csv(work / "curve.csv", curve, list(curve[0]))
        png = common.plot_curve(work / "curve.png", curve, title=f"{plan.name}: finetuning", offline=summary["offline_mean"])
        tracker.log_metrics(parent, {k: summary[k] for k in ("offline_mean", "offline_std", "online_mean",
                                                               "online_std", "delta")}, step=plan.finetune.online_samples)
        tracker.log_artifacts(parent, [csv, png, out.parent / "finetune.json"])
        tracker.finish(parent)
    return {"summary": summary, "work_dir": str(work),
            "workers": [{"seed": o["seed"], "pid": o["pid"], "threads": o["threads"]} for o in outcomes]}


def main(argv: list[str] | None = None) -> int:
    def run(plan: TaskPlan, params: Params, **kwargs) -> dict:
        out = run_stage(plan, params, **kwargs)
        return {k: out["summary"][k] for k in ("task", "seeds", "offline_mean", "online_mean", "delta")}

    return common.stage_main(argv, doc=__doc__, stage="finetune", run=run, failed=(SeedsFailed,),
                             root_help="repository root (runs/, .cache/ and mlflow.db live there)")


if __name__ == "__main__":
    sys.exit(main())

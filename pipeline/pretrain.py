"""DVC stage `pretrain@<task>`: offline pretraining of ODT on the task's dataset (seed 0).

    python -m pipeline.pretrain --task hopper-medium-v2

Reads data/<task>/<task>.hdf5 and the task's `model` and `pretrain` blocks; runs
odt.loops.pretrain with `parallel.pretrain_threads` torch threads in a work directory keyed by everything that determines the result;
writes runs/<task>/pretrain/checkpoint.pt (the full trainer state finetuning starts from)
and runs/<task>/pretrain/eval.json (the pretrained policy's normalized return). Logs to
MLflow experiment `odt/<task>`, run `pretrain`. Killed and rerun, it resumes.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from odt.atomic import copy_file, write_json
from pipeline import caching, paths
from pipeline.params import Params, TaskPlan, phase_config


def pretrain(plan: TaskPlan, params: Params, cfg, work: Path, *, root: Path, logger=None) -> dict[str, Any]:
    """Pretrain (or resume) in `work`; leaves checkpoint.pt, policy.pt and result.json (written last) there."""
    from odt.datasets.hdf5 import load_d4rl_hdf5  # noqa: PLC0415
    from odt.loops import pretrain as pretrain_loop  # noqa: PLC0415

    import torch  # noqa: PLC0415

    data = load_d4rl_hdf5(paths.dataset(root, plan.name), task=plan.name)
    threads = torch.get_num_threads()
    torch.set_num_threads(params.parallel.pretrain_threads)  # as the finetune stage sets its workers'
    try:
        run = pretrain_loop(data, plan.model, cfg, plan.env_fn(root), task=plan.name, seed=0, device=params.device,
                            logger=logger, checkpoint=work / "checkpoint.pt")
    finally:
        torch.set_num_threads(threads)
    run.trainer.save_policy(work / "policy.pt", cfg)
    final = run.final
    return {"task": plan.name, "normalized_mean": final["eval_normalized"], "normalized_std": final["eval_normalized_std"],
              "return_mean": final["eval_return"], "return_std": final["eval_return_std"], "episodes": cfg.eval_episodes,
              "g_eval": cfg.g_eval, "eval_context_len": cfg.eval_context_len, "updates": run.trainer.num_updates,
              "wall_time": run.wall_time}


def run_stage(plan: TaskPlan, params: Params, *, root: Path = paths.ROOT, track: bool = True) -> dict[str, Any]:
    root = Path(root).resolve()
    data = paths.dataset(root, plan.name)
    if not data.is_file():
        raise FileNotFoundError(f"dataset {data} does not exist; run `dvc repro fetch@{plan.name}` first")
    cfg, hparams = phase_config(plan, params, "pretrain", root=root)
    key = caching.pretrain_key(plan, params, cfg, data)
    work = paths.work_root(root, plan.name) / f"pretrain-{caching.fingerprint(key)}"
    out = paths.pretrain_dir(root, plan.name)
    tracker = run_id = logger = None
    finished = False
    if track:
        from pipeline.tracking import RunLogger, Tracker, flat, stage_tags  # noqa: PLC0415

        tracker = Tracker(root)
        tags = stage_tags(root, params.profile, f"pretrain@{plan.name}", task=plan.name, seed=0,
                          hparams_source=hparams["source"])
        run_id, finished = tracker.open(tracker.experiment(f"odt/{plan.name}"), f"pretrain:{caching.fingerprint(key)}",
                                        "pretrain", tags, flat({k: v for k, v in key.items() if k != "stage"}))
        logger = None if finished else RunLogger(tracker.uri, run_id)
    try:
        result = caching.done(work / "result.json")
        if result is None:
            result = {**pretrain(plan, params, cfg, work, root=root, logger=logger), "hparams": hparams}
            write_json(work / "result.json", result)  # the done marker: written last
    except BaseException:
        if tracker is not None:
            tracker.finish(run_id, "FAILED")
        raise
    copy_file(work / "checkpoint.pt", out / "checkpoint.pt")
    write_json(out / "eval.json", result)
    if tracker is not None and not finished:
        tracker.log_metrics(run_id, {f"pretrained_{k}": result[k] for k in
                                     ("normalized_mean", "normalized_std", "return_mean", "return_std")},
                            step=result["updates"])
        tracker.log_artifacts(run_id, [work / "policy.pt", out / "eval.json"])
        tracker.log_artifacts(run_id, [paths.dataset_meta(root, plan.name)], "dataset")
        tracker.finish(run_id)
    return {**result, "work_dir": str(work)}


def main(argv: list[str] | None = None) -> int:
    from pipeline.cli import stage_main  # noqa: PLC0415

    def run(plan: TaskPlan, params: Params, **kwargs) -> dict:
        result = run_stage(plan, params, **kwargs)
        return {k: result[k] for k in ("task", "normalized_mean", "normalized_std", "updates")}

    return stage_main(argv, doc=__doc__, stage="pretrain", run=run,
                      root_help="repository root (data/, runs/ and mlflow.db live there)")


if __name__ == "__main__":
    sys.exit(main())

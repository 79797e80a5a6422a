"""DVC stage `pretrain@<task>`: offline pretraining of ODT on the task's dataset (seed 0).

    python -m pipeline.pretrain --task hopper-medium-v2

Writes runs/<task>/pretrain/checkpoint.pt (the full trainer state finetuning starts from)
and runs/<task>/pretrain/eval.json (normalized return of the pretrained policy). Logs to
MLflow experiment `odt/<task>`, run `pretrain`. Killed and rerun, it resumes.
"""
from __future__ import annotations

import sys
from pathlib import Path

from pipeline import common
from pipeline.params import Params, TaskPlan


def run_stage(plan: TaskPlan, params: Params, *, root: Path = common.ROOT, track: bool = True) -> dict:
    root = Path(root).resolve()
    out_dir = common.pretrain_dir(root, plan.name)
    data = common.data_path(root, plan.name)
    if not data.is_file():
        raise FileNotFoundError(f"dataset {data} does not exist; run `dvc repro fetch@{plan.name}` first")
    if not track:
        return common.run_pretrain(plan, params, out_dir=out_dir, root=root)

    from pipeline.tracking import RunLogger, Tracker, git_commit  # noqa: PLC0415

    cfg, hparams = common.train_config(plan, params, "pretrain", root=root)
    key = common.pretrain_key(plan, params, cfg, data)
    tracker = Tracker(root)
    exp = tracker.experiment(f"odt/{plan.name}")
    tags = {"task": plan.name, "seed": 0, "profile": params.profile, "dvc_stage": f"pretrain@{plan.name}",
            "git_commit": git_commit(root), "mlflow.source.git.commit": git_commit(root),
            "hparams_source": hparams["source"]}
    run_id = tracker.run(exp, f"pretrain:{common.fingerprint(key)}", "pretrain", tags)
    finished = tracker.status(run_id) == "FINISHED"
    if not finished:
        tracker.log_params(run_id, common.flat({k: v for k, v in key.items() if k != "stage"}))
    try:
        result = common.run_pretrain(plan, params, out_dir=out_dir, root=root,
                                     log_fn=None if finished else RunLogger(tracker.uri, run_id))
    except BaseException:
        tracker.finish(run_id, "FAILED")
        raise
    if not finished:
        work = Path(result["work_dir"])
        tracker.log_metrics(run_id, {f"pretrained_{k}": result[k] for k in
                                     ("normalized_mean", "normalized_std", "return_mean", "return_std")},
                            step=result["updates"])
        tracker.log_artifacts(run_id, [work / "policy.pt", out_dir / "eval.json", work / "rows.json"])
        tracker.log_artifacts(run_id, [data.with_suffix(".json")], "dataset")
        tracker.finish(run_id)
    return result


def main(argv: list[str] | None = None) -> int:
    def run(plan: TaskPlan, params: Params, **kwargs) -> dict:
        result = run_stage(plan, params, **kwargs)
        return {k: result[k] for k in ("task", "normalized_mean", "normalized_std", "updates")}

    return common.stage_main(argv, doc=__doc__, stage="pretrain", run=run,
                             root_help="repository root (data/, runs/ and mlflow.db live there)")


if __name__ == "__main__":
    sys.exit(main())

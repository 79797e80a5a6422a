"""DVC stage `pretrain@<task>`: offline pretraining of ODT on the task's dataset (seed 0).

    python -m pipeline.pretrain --task hopper-medium-v2

Writes runs/<task>/pretrain/checkpoint.pt (the full trainer state finetuning starts from)
and runs/<task>/pretrain/eval.json (normalized return of the pretrained policy). Logs to
MLflow experiment `odt/<task>`, run `pretrain`. Killed and rerun, it resumes.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from odt.config import ConfigError
from odt.datasets.hdf5 import DatasetError
from odt.envs import EnvMismatchError
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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--root", default=".", help="repository root (data/, runs/ and mlflow.db live there)")
    ap.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    args = ap.parse_args(argv)
    params, plan = common.load_or_exit(args.params, args.task)
    try:
        result = run_stage(plan, params, root=Path(args.root), track=not args.no_track)
    except (FileNotFoundError, ConfigError, EnvMismatchError, DatasetError) as err:
        return common.fail(str(err))
    except Exception as err:
        return common.fail(f"pretrain {args.task} failed: {type(err).__name__}: {err}", code=1, trace=True)
    print(json.dumps({k: result[k] for k in ("task", "normalized_mean", "normalized_std", "updates")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

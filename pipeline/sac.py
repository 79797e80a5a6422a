"""DVC stage `sac@<task>`: SAC from scratch at the online budget (stable-baselines3), one run per seed.

    python -m pipeline.sac --task hopper-medium-v2

odt.baselines.sac with the task's `sac` block, for the finetuning's online budget, in the
task's environment (the dataset is not used), scored like ODT. Writes
runs/<task>/sac/seed_<k>/{curve.csv, result.json} and runs/<task>/sac.json. MLflow: parent
run `sac`, a child run per seed, algorithm=sac.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

from pipeline import caching, cli, jobs, seeds
from pipeline.params import Params, TaskPlan

FIELDS = ("task", "seeds", "online_mean", "online_std")  # the summary's keys the command prints


def stage(plan: TaskPlan, params: Params, *, root: Path) -> seeds.Stage:
    """Every seed trains SAC with the task's `sac` block, in the task's environment."""
    root = Path(root).resolve()
    cfg = plan.baseline("sac")
    key = {"stage": "sac", "task": plan.name, "sac": cfg.model_dump(), "env_version": params.env_version,
           "code_sha256": caching.code_sha()}
    return seeds.Stage("sac", plan.name, params, root, key=key,
                       job=functools.partial(jobs.sac, jobs.Setup("sac", plan, cfg, params.device, root)),
                       files=("curve.csv", "result.json"), step=cfg.online_samples,
                       extra=lambda results: {"online_samples": cfg.online_samples})


def main(argv: list[str] | None = None) -> int:
    args = cli.stage_args("sac", __doc__, argv, root_help="repository root (runs/ and mlflow.db live there)")

    def body():
        params, plan = cli.load_or_exit(args.params, args.task)
        return seeds.run(stage(plan, params, root=args.root), track=not args.no_track)

    code, out = cli.run_guarded(f"sac {args.task}", body, failed=(seeds.SeedsFailed,), bad=cli.bad_input())
    return cli.print_summary(code, out, FIELDS)


if __name__ == "__main__":
    sys.exit(main())

"""DVC stage `iql@<task>`: the IQL baseline (Kostrikov et al. 2022), offline then online, one run per seed.

    python -m pipeline.iql --task hopper-medium-v2

odt.baselines.iql with the task's `iql` block: offline updates on the dataset, then the
finetuning's online budget with one update per environment step, scored like ODT (same
evaluation seeds and episodes). Writes runs/<task>/iql/seed_<k>/{curve.csv, result.json}
and runs/<task>/iql.json. MLflow: parent run `iql`, a child run per seed, algorithm=iql.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

from pipeline import caching, cli, jobs, paths, seeds
from pipeline.params import Params, TaskPlan

FIELDS = ("task", "seeds", "offline_mean", "online_mean", "delta")  # the summary's keys the command prints


def stage(plan: TaskPlan, params: Params, *, root: Path) -> seeds.Stage:
    """Every seed trains IQL with the task's `iql` block on the fetched dataset, then online."""
    root = Path(root).resolve()
    cfg = plan.baseline("iql")
    key = {"stage": "iql", "task": plan.name, "iql": cfg.model_dump(), "env_version": params.env_version,
           "data_sha256": caching.file_sha(paths.existing_dataset(root, plan.name)), "code_sha256": caching.code_sha()}
    return seeds.Stage("iql", plan.name, params, root, key=key,
                       job=functools.partial(jobs.iql, jobs.Setup("iql", plan, cfg, params.device, root)),
                       files=("curve.csv", "result.json"), step=cfg.online_samples,
                       extra=lambda results: {"online_samples": cfg.online_samples})


def main(argv: list[str] | None = None) -> int:
    args = cli.stage_args("iql", __doc__, argv)

    def body():
        params, plan = cli.load_or_exit(args.params, args.task)
        return seeds.run(stage(plan, params, root=args.root), track=not args.no_track)

    code, out = cli.run_guarded(f"iql {args.task}", body, failed=(seeds.SeedsFailed,), bad=cli.bad_input())
    return cli.print_summary(code, out, FIELDS)


if __name__ == "__main__":
    sys.exit(main())

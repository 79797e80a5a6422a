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
from typing import Any

from pipeline import caching, paths, seeds
from pipeline.params import Params, TaskPlan

FILES = ("curve.csv", "result.json")


def sac_seed(plan: TaskPlan, params: Params, seed: int, seed_dir: Path, logger, *, root: Path) -> dict[str, Any]:
    from odt.baselines.sac import sac  # noqa: PLC0415

    run = sac(plan.sac, plan.env_fn(root), task=plan.name, seed=seed, device=params.device, logger=logger,
              checkpoint=seed_dir / "state.pt", progress=False)
    run.write_curve(seed_dir / "curve.csv")
    (seed_dir / "state.pt").unlink()
    return {"task": plan.name, "seed": seed, **run.scores(), "num_updates": run.trainer._n_updates}


def run_stage(plan: TaskPlan, params: Params, *, root: Path = paths.ROOT, track: bool = True, **parallel) -> dict[str, Any]:
    root = Path(root).resolve()
    cfg = plan.baseline("sac")
    key = {"stage": "sac", "task": plan.name, "sac": cfg.model_dump(), "env_version": params.env_version,
           "code_sha256": caching.code_sha()}
    return seeds.stage("sac", plan, params, root=root, key=key, job=functools.partial(sac_seed, plan, params, root=root),
                       files=FILES, step=cfg.online_samples, track=track,
                       extra=lambda results: {"online_samples": cfg.online_samples}, **parallel)


def main(argv: list[str] | None = None) -> int:
    from pipeline.cli import stage_main  # noqa: PLC0415

    return stage_main(argv, doc=__doc__, stage="sac", run_stage=run_stage,
                      fields=("task", "seeds", "online_mean", "online_std"),
                      root_help="repository root (runs/ and mlflow.db live there)")


if __name__ == "__main__":
    sys.exit(main())

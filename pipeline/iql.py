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
from typing import Any

from pipeline import caching, paths, seeds
from pipeline.params import Params, TaskPlan

FILES = ("curve.csv", "result.json")


def iql_seed(plan: TaskPlan, params: Params, seed: int, seed_dir: Path, logger, *, root: Path) -> dict[str, Any]:
    from odt.baselines.iql import iql  # noqa: PLC0415

    run = iql(paths.dataset(root, plan.name), plan.iql, plan.env_fn(root), task=plan.name, seed=seed,
              device=params.device, logger=logger, checkpoint=seed_dir / "state.pt", progress=False)
    run.write_curve(seed_dir / "curve.csv")
    (seed_dir / "state.pt").unlink()  # the replay buffer makes it large
    return {"task": plan.name, "seed": seed, **run.scores(), "num_updates": run.trainer.updates}


def run_stage(plan: TaskPlan, params: Params, *, root: Path = paths.ROOT, track: bool = True, **parallel) -> dict[str, Any]:
    root = Path(root).resolve()
    cfg = plan.baseline("iql")
    key = {"stage": "iql", "task": plan.name, "iql": cfg.model_dump(), "env_version": params.env_version,
           "data_sha256": caching.file_sha(paths.existing_dataset(root, plan.name)), "code_sha256": caching.code_sha()}
    return seeds.stage("iql", plan, params, root=root, key=key, job=functools.partial(iql_seed, plan, params, root=root),
                       files=FILES, step=cfg.online_samples, track=track,
                       extra=lambda results: {"online_samples": cfg.online_samples}, **parallel)


def main(argv: list[str] | None = None) -> int:
    from pipeline.cli import stage_main  # noqa: PLC0415

    return stage_main(argv, doc=__doc__, stage="iql", run_stage=run_stage,
                      fields=("task", "seeds", "offline_mean", "online_mean", "delta"))


if __name__ == "__main__":
    sys.exit(main())

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

from odt.config import ConfigError
from pipeline import caching, curves, paths, seeds
from pipeline.params import Params, TaskPlan

FILES = ("curve.csv", "result.json")
CURVE = ["online_samples", *curves.SCORES]


def iql_seed(plan: TaskPlan, params: Params, seed: int, seed_dir: Path, logger, *, root: Path) -> dict[str, Any]:
    from odt.baselines.iql import iql  # noqa: PLC0415
    from odt.datasets.hdf5 import load_d4rl_hdf5  # noqa: PLC0415

    data = load_d4rl_hdf5(paths.dataset(root, plan.name), task=plan.name)
    run = iql(data, plan.iql, plan.env_fn(root), task=plan.name, seed=seed, device=params.device, logger=logger,
              checkpoint=seed_dir / "state.pt", progress=False)
    curves.write_csv(seed_dir / "curve.csv", run.evaluations, CURVE)
    (seed_dir / "state.pt").unlink()  # the replay buffer makes it large
    return {"task": plan.name, "seed": seed, **run.scores(), "num_updates": run.trainer.updates}


def run_stage(plan: TaskPlan, params: Params, *, root: Path = paths.ROOT, track: bool = True, **parallel) -> dict[str, Any]:
    root = Path(root).resolve()
    if plan.iql is None:
        raise ConfigError(f"params.yaml tasks.{plan.name} has no iql block; add it (see profiles/quick.yaml)")
    data = paths.dataset(root, plan.name)
    if not data.is_file():
        raise FileNotFoundError(f"dataset {data} does not exist; run `dvc repro fetch@{plan.name}` first")
    key = {"stage": "iql", "task": plan.name, "iql": plan.iql.model_dump(), "env_version": params.env_version,
           "data_sha256": caching.file_sha(data), "code_sha256": caching.code_sha()}
    out = paths.run_dir(root, plan.name, "iql")
    results, how = seeds.run("iql", plan, params, root=root, key=key, job=functools.partial(iql_seed, plan, params, root=root),
                             out=out, files=FILES, track=track, **parallel)
    summary = {"task": plan.name, **curves.summarize(results), "online_samples": plan.iql.online_samples}
    seeds.finish(how, summary, out.parent / "iql.json", step=plan.iql.online_samples)
    return {"summary": summary, "work_dir": str(how["work_dir"]), "workers": how["workers"]}


def main(argv: list[str] | None = None) -> int:
    from pipeline.cli import stage_main  # noqa: PLC0415

    def run(plan: TaskPlan, params: Params, **kwargs) -> dict:
        out = run_stage(plan, params, **kwargs)
        return {k: out["summary"][k] for k in ("task", "seeds", "offline_mean", "online_mean", "delta")}

    return stage_main(argv, doc=__doc__, stage="iql", run=run, failed=(seeds.SeedsFailed,),
                      root_help="repository root (data/, runs/ and mlflow.db live there)")


if __name__ == "__main__":
    sys.exit(main())

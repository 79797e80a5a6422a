"""DVC stage `pretrain@<task>`: offline pretraining of ODT on the task's dataset, one run per seed.

    python -m pipeline.pretrain --task hopper-medium-v2

Seed k pretrains with seed k (odt.loops.pretrain) and finetuning seed k continues from its
checkpoint: a seed is a whole run, as in the paper, so every column's spread is over
independent runs. Seeds run in parallel like finetuning's (pipeline/seeds.py). Writes
runs/<task>/pretrain/seed_<k>/{checkpoint.pt, curve.csv (evaluations during pretraining),
result.json} and the summary runs/<task>/pretrain.json. MLflow: a parent run `pretrain` in
experiment `odt/<task>` with a child run per seed. Killed and rerun, it resumes.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

from pipeline import caching, paths, seeds
from pipeline.params import Params, TaskPlan, learning_rate_setting, phase_config

FILES = ("checkpoint.pt", "curve.csv", "result.json")  # published per seed in runs/<task>/pretrain/seed_<k>/


def pretrain_seed(plan: TaskPlan, params: Params, model, cfg, extra: dict[str, Any], seed: int, seed_dir: Path, logger,
                  *, root: Path, name: str) -> dict[str, Any]:
    """Pretrain `model` with `cfg` and `seed` (or resume) in `seed_dir`; leaves checkpoint.pt and curve.csv there.

    The result: the final evaluation (the offline score) and the best one on the way (odt.loops.Run.scores).
    """
    from odt.loops import pretrain  # noqa: PLC0415
    from odt.divergence import Diverged  # noqa: PLC0415

    try:
        run = pretrain(paths.dataset(root, plan.name), model, cfg, plan.env_fn(root), task=plan.name, seed=seed,
                       device=params.device, logger=logger, checkpoint=seed_dir / "checkpoint.pt", progress=False)
    except Diverged as err:  # named as params.yaml spells the setting (or where a tuned value came from)
        block = "dt.train" if name == "dt" else "pretrain"
        raise err.named(f"{name} {plan.name} seed {seed}", learning_rate_setting(plan, block, extra["hparams"]))
    run.write_curve(seed_dir / "curve.csv")
    return {"task": plan.name, "seed": seed, **run.scores(), "num_updates": run.trainer.num_updates, **extra}


def run_seeds(name: str, plan: TaskPlan, params: Params, model, cfg, *, root: Path, track: bool, hparams: dict,
              **parallel) -> dict[str, Any]:
    """Every seed of a pretraining-shaped stage (ODT's pretraining, or the DT baseline) and its summary."""
    key = caching.pretrain_key(name, plan, params, model, cfg, paths.existing_dataset(root, plan.name))
    job = functools.partial(pretrain_seed, plan, params, model, cfg, {"hparams": hparams}, root=root, name=name)
    return seeds.stage(name, plan, params, root=root, key=key, job=job, files=FILES, step=cfg.pretrain_updates,
                       track=track, tags={"hparams_source": hparams["source"]}, **parallel,
                       extra=lambda results: {"best_mean": sum(r["best_normalized"] for r in results) / len(results),
                                              "updates": cfg.pretrain_updates, "hparams": hparams})


def run_stage(plan: TaskPlan, params: Params, *, root: Path = paths.ROOT, track: bool = True, **parallel) -> dict[str, Any]:
    root = Path(root).resolve()
    cfg, hparams = phase_config(plan, params, "pretrain", root=root)
    return run_seeds("pretrain", plan, params, plan.model, cfg, root=root, track=track, hparams=hparams, **parallel)


def main(argv: list[str] | None = None) -> int:
    from pipeline.cli import stage_main  # noqa: PLC0415

    return stage_main(argv, doc=__doc__, stage="pretrain", run_stage=run_stage,
                      fields=("task", "seeds", "offline_mean", "offline_std", "best_mean"))


if __name__ == "__main__":
    sys.exit(main())

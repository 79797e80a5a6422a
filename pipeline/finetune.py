"""DVC stage `finetune@<task>`: online finetuning from the pretrained checkpoint, one run per seed.

    python -m pipeline.finetune --task hopper-medium-v2

Seed k runs odt.loops.finetune from pretraining seed k's checkpoint, runs/<task>/pretrain/seed_<k>/,
in parallel through joblib (parallel.backend: loky on this machine, dask or ray on a
cluster), each worker limited to `threads` torch threads so that workers x threads <=
cores. Writes runs/<task>/finetune/seed_<k>/{result.json, curve.csv, policy.pt} and the
summary runs/<task>/finetune.json. MLflow: a parent run `finetune` in experiment
`odt/<task>` with one child run per seed.

A killed stage resumes: finished seeds are read back, unfinished ones continue from their
last checkpoint, and the MLflow runs are the same ones. A failing seed fails the stage
with a message naming task and seed; the other seeds' results are kept for the rerun.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

from pipeline import caching, paths, seeds
from pipeline.params import Params, TaskPlan, learning_rate_setting, phase_config

FILES = ("policy.pt", "curve.csv", "result.json")  # published per seed in runs/<task>/finetune/seed_<k>/


def finetune_seed(plan: TaskPlan, params: Params, cfg, hparams: dict[str, Any], seed: int, seed_dir: Path, logger,
                  *, root: Path) -> dict[str, Any]:
    """Finetune pretraining seed k's checkpoint with seed k (or resume) in `seed_dir`; leaves policy.pt and curve.csv."""
    from odt.loops import finetune  # noqa: PLC0415
    from odt.divergence import Diverged  # noqa: PLC0415

    try:
        run = finetune(paths.pretrained(root, plan.name, seed), cfg, plan.env_fn(root),
                       data=paths.dataset(root, plan.name), seed=seed, offline=plan.pretrain, device=params.device,
                       logger=logger, checkpoint=seed_dir / "state.pt", progress=False)
    except Diverged as err:  # named as params.yaml spells the setting (or where a tuned value came from)
        raise err.named(f"finetune {plan.name} seed {seed}", learning_rate_setting(plan, "finetune", hparams))
    run.trainer.save_policy(seed_dir / "policy.pt", cfg)
    run.write_curve(seed_dir / "curve.csv")
    (seed_dir / "state.pt").unlink()  # the buffer makes it large; the result is all we keep
    return {"task": plan.name, "seed": seed, **run.scores(), "rounds": run.final["round"],
            "num_updates": run.trainer.num_updates, "hparams": hparams}


def check_pretrained(root: Path, task: str, seeds: int) -> list[Path]:
    """Pretraining seeds 0..seeds-1's checkpoints, each checked once here, before any seed or MLflow run starts:
    missing (FileNotFoundError) or damaged (CheckpointError) is one line naming it."""
    from odt.checkpoint import check_checkpoint  # noqa: PLC0415

    checkpoints = [paths.pretrained(root, task, s) for s in range(seeds)]
    missing = [c for c in checkpoints if not c.is_file()]
    if missing:
        raise FileNotFoundError(f"pretrained checkpoint {missing[0]} does not exist; run `dvc repro pretrain@{task}` first")
    for c in checkpoints:
        check_checkpoint(c, how=f"restore it with `dvc checkout pretrain@{task}` or `dvc repro -f pretrain@{task}`")
    return checkpoints


def run_stage(plan: TaskPlan, params: Params, *, root: Path = paths.ROOT, track: bool = True, **parallel) -> dict[str, Any]:
    """All seeds of one task (`parallel`: backend, n_jobs, address, threads_per_worker overrides)."""
    from odt.envs import check_dims, vector_env  # noqa: PLC0415

    root = Path(root).resolve()
    paths.existing_dataset(root, plan.name)  # each seed reloads the offline data: missing or altered, one line now
    checkpoints = check_pretrained(root, plan.name, params.seeds)
    envs = vector_env(plan.env_fn(root), 1)  # a dims mismatch: one line, before any seed
    check_dims(plan.name, envs, plan.model.state_dim, plan.model.act_dim)
    envs.close()
    cfg, hparams = phase_config(plan, params, "finetune", root=root)
    job = functools.partial(finetune_seed, plan, params, cfg, hparams, root=root)
    return seeds.stage("finetune", plan, params, root=root, key=caching.finetune_key(plan, params, cfg, checkpoints, root),
                       job=job, files=FILES, step=cfg.online_samples, track=track,
                       tags={"hparams_source": hparams["source"]},
                       extra=lambda results: {"online_samples": cfg.online_samples, "hparams": hparams}, **parallel)


def main(argv: list[str] | None = None) -> int:
    from pipeline.cli import stage_main  # noqa: PLC0415

    return stage_main(argv, doc=__doc__, stage="finetune", run_stage=run_stage,
                      fields=("task", "seeds", "offline_mean", "online_mean", "delta"),
                      root_help="repository root (runs/, .cache/ and mlflow.db live there)")


if __name__ == "__main__":
    sys.exit(main())

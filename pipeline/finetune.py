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

from pipeline import caching, cli, jobs, paths, seeds
from pipeline.params import Params, TaskPlan, phase_config

FIELDS = ("task", "seeds", "offline_mean", "online_mean", "delta")  # the summary's keys the command prints


def stage(plan: TaskPlan, params: Params, *, root: Path, pretrained: Path | None = None) -> seeds.Stage:
    """Every seed finetunes its pretrained checkpoint with the task's `finetune` block (or its tuned values); each
    input is checked once here, before any seed or MLflow run starts.

    `pretrained`: the work directory of a pretraining (an experiment's variant, pipeline/experiment.py), whose
    seed_<k>/checkpoint.pt seed k starts from; default: the pretrain stage's runs/<task>/pretrain/."""
    from odt.envs import check_dims, vector_env

    root = Path(root).resolve()
    paths.existing_dataset(root, plan.name)  # each seed reloads the offline data: missing or altered, one line now
    checkpoints = paths.existing_checkpoints(root, plan.name, params.seeds, pretrained)
    envs = vector_env(plan.env_fn(root), 1)  # a dims mismatch: one line, before any seed
    check_dims(plan.name, envs, plan.model.state_dim, plan.model.act_dim)
    envs.close()
    cfg, hparams = phase_config(plan, params, "finetune", root=root)
    return seeds.Stage(
        "finetune", plan.name, params, root, key=caching.finetune_key(plan, params, cfg, checkpoints, root, pretrained),
        job=functools.partial(jobs.finetune, jobs.Setup("finetune", plan, cfg, params.device, root, hparams,
                                                        pretrained)),
        files=("policy.pt", "curve.csv", "dynamics.csv", "result.json"), step=cfg.online_samples,
        tags={"hparams_source": hparams["source"]},
        extra=lambda results: {"online_samples": cfg.online_samples, "hparams": hparams})


def main(argv: list[str] | None = None) -> int:
    args = cli.stage_args("finetune", __doc__, argv,
                          root_help="repository root (runs/, .cache/ and mlflow.db live there)")

    def body():
        params, plan = cli.load_or_exit(args.params, args.task)
        return seeds.run(stage(plan, params, root=args.root), track=not args.no_track)

    code, out = cli.run_guarded(f"finetune {args.task}", body, failed=(seeds.SeedsFailed,), bad=cli.bad_input())
    return cli.print_summary(code, out, FIELDS)


if __name__ == "__main__":
    sys.exit(main())

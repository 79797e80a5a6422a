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

import sys

from pipeline import cli, jobs, seeds

FIELDS = ("task", "seeds", "offline_mean", "online_mean", "delta")  # the summary's keys the command prints


def main(argv: list[str] | None = None) -> int:
    args = cli.stage_args("finetune", __doc__, argv,
                          root_help="repository root (runs/, .cache/ and mlflow.db live there)")

    def body():
        params, plan = cli.load_or_exit(args.params, args.task)
        return seeds.run(jobs.finetune_stage(plan, params, root=args.root), track=not args.no_track)

    code, out = cli.run_guarded(f"finetune {args.task}", body, failed=(seeds.SeedsFailed,), bad=cli.bad_input())
    return cli.print_summary(code, out, FIELDS)


if __name__ == "__main__":
    sys.exit(main())

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

import sys

from pipeline import cli, jobs, seeds

FIELDS = ("task", "seeds", "offline_mean", "offline_std", "best_mean")  # the summary's keys the command prints


def main(argv: list[str] | None = None) -> int:
    args = cli.stage_args("pretrain", __doc__, argv)

    def body():
        params, plan = cli.load_or_exit(args.params, args.task)
        return seeds.run(jobs.pretrain_stage(plan, params, root=args.root), track=not args.no_track)

    code, out = cli.run_guarded(f"pretrain {args.task}", body, failed=(seeds.SeedsFailed,), bad=cli.bad_input())
    return cli.print_summary(code, out, FIELDS)


if __name__ == "__main__":
    sys.exit(main())

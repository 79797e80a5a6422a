"""DVC stage `dt@<task>`: the Decision Transformer baseline (Chen et al. 2021), offline, one run per seed.

    python -m pipeline.dt --task hopper-medium-v2

The same loop as ODT's pretraining (odt.loops.pretrain) with the task's `dt` block: a
deterministic head trained by MSE, AdamW, the positional embedding kept, evaluated with its
return target. Writes runs/<task>/dt/seed_<k>/{checkpoint.pt, curve.csv, result.json} and
runs/<task>/dt.json. MLflow: parent run `dt`, a child run per seed, tagged algorithm=dt.
"""
from __future__ import annotations

import sys

from pipeline import cli, jobs, seeds

FIELDS = ("task", "seeds", "offline_mean", "offline_std")  # the summary's keys the command prints


def main(argv: list[str] | None = None) -> int:
    args = cli.stage_args("dt", __doc__, argv)

    def body():
        params, plan = cli.load_or_exit(args.params, args.task)
        return seeds.run(jobs.pretrain_stage(plan, params, root=args.root, dt=True), track=not args.no_track)

    code, out = cli.run_guarded(f"dt {args.task}", body, failed=(seeds.SeedsFailed,), bad=cli.bad_input())
    return cli.print_summary(code, out, FIELDS)


if __name__ == "__main__":
    sys.exit(main())

"""DVC stages `tune-pretrain@<task>` and `tune-finetune@<task>`: Optuna search over learning rate and weight decay.

    python -m pipeline.tune --task hopper-medium-v2 --phase pretrain
    python -m pipeline.tune --task hopper-medium-v2 --phase finetune --n-trials 10 --storage postgresql://...

The paper tuned both per task (Appendix B, Table C.4). A trial runs one phase's loop (odt.loops)
with (learning_rate, weight_decay) drawn log-uniformly from params.yaml `tune`, on the trial's
budget; the objective is the final normalized return. Finetune trials start from
pretraining seed 0's checkpoint. Evaluations go to the pruner, which stops poor
trials early (pipeline/trials.py). Storage, sampler, pruner: pipeline/study.py. MLflow: a
parent run per study, a child run per trial. Writes reports/tune/<task>-<phase>.json (what
`use_tuned: true` reads).
"""
from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from odt.atomic import write_json
from pipeline import cli, paths, study
from pipeline.params import Params, TaskPlan, tuned_path
from pipeline.trials import Objective, StudyTracking

FIELDS = ("task", "phase", "best_params", "best_value", "n_trials", "states")  # the summary's keys the command prints


@dataclass(frozen=True)
class Options:
    """This worker's settings (its command-line flags); None: params.yaml `tune`'s."""

    n_trials: int | None = None  # trials this worker runs
    timeout: float | None = None  # seconds after which it starts no new trial
    storage: str | None = None
    study_name: str | None = None  # None: <task>-<phase>
    heartbeat: int = study.HEARTBEAT_S  # RDB storage: seconds between a running trial's heartbeats
    grace: int = study.GRACE_S  # RDB storage: seconds without one after which another worker fails the trial


def run(plan: TaskPlan, params: Params, phase: str, *, root: Path, options: Options = Options(),
        track: bool = True) -> dict[str, Any]:
    """Add trials to the task's study for `phase`, then write its best values and plots; returns the summary."""
    import optuna

    root, tune = Path(root), params.tune
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat, journal, plots
    budget = study.Budget.of(plan, tune, phase)
    paths.existing_dataset(root, plan.name)  # both phases train on it: missing or altered, one line before any trial
    if phase == "finetune":  # missing or damaged: one line before any trial
        paths.existing_checkpoints(root, plan.name, 1)
    name = options.study_name or f"{plan.name}-{phase}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store, label = study.open_storage(options.storage or tune.storage, root, heartbeat=options.heartbeat,
                                      grace=options.grace)
    optuna_study = study.load_study(name, store, label, tune, budget)
    study.annotate(optuna_study, plan.name, budget)
    if dead := study.fail_dead_trials(optuna_study):
        print(f"tune {plan.name} {phase}: trials {dead} lost their worker and are marked FAIL", flush=True)

    tracking = StudyTracking(root, plan, params, optuna_study, label, budget) if track else None
    n = options.n_trials or tune.n_trials
    print(f"tune {plan.name} {phase}: study '{name}' in {label}, {len(optuna_study.trials)} trials so far; "
          f"running {n} more (budget {budget.amount} {budget.unit}, pruner {tune.pruner})", flush=True)
    try:
        optuna_study.optimize(Objective(plan, params, root, budget, tracking), n_trials=n,
                              timeout=options.timeout or tune.timeout, gc_after_trial=False)
    except BaseException:
        if tracking is not None:
            tracking.tracker.finish(tracking.parent, "FAILED")
        raise

    out = root / tuned_path(plan.name, phase)
    summary = study.summarize(optuna_study, plan, params, label, budget)
    plots, importances, note = study.write_plots(optuna_study, out, f"{plan.name} {phase}")
    summary |= {"importances": importances, "importance_note": note,
                "plots": {k: str(Path(v).relative_to(root)) for k, v in plots.items()}}
    write_json(out, summary)
    if tracking is not None:
        tracking.close_failed(optuna_study)
        tracking.finish(summary, [out, *map(Path, plots.values())])
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = cli.Parser(prog="python -m pipeline.tune", description=__doc__.splitlines()[0])
    ap.add_argument("--task", required=True)
    ap.add_argument("--phase", required=True, choices=["pretrain", "finetune"])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--root", default=".", help="repository root (data/, runs/, reports/ and mlflow.db live there)")
    ap.add_argument("--n-trials", type=int, default=None, help="trials this worker runs (default: tune.n_trials)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds after which this worker starts no new trial")
    ap.add_argument("--storage", default=None, help="sqlite:///optuna.db, journal:PATH or an RDB URL such as "
                                                    "postgresql://user:pw@host/db (default: tune.storage)")
    ap.add_argument("--study", default=None, help="study name (default: <task>-<phase>)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for this worker")
    ap.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    ap.add_argument("--heartbeat", type=int, default=study.HEARTBEAT_S,
                    help=f"RDB storage: seconds between a running trial's heartbeats (default {study.HEARTBEAT_S})")
    ap.add_argument("--grace", type=int, default=study.GRACE_S, help="RDB storage: seconds without a heartbeat "
                    f"after which another worker marks the trial FAIL (default {study.GRACE_S})")
    args = ap.parse_args(argv)
    for flag, value in (("--n-trials", args.n_trials), ("--timeout", args.timeout), ("--threads", args.threads),
                        ("--heartbeat", args.heartbeat), ("--grace", args.grace)):
        if value is not None and value <= 0:
            return cli.fail(f"{flag} must be positive, got {value}")
    if args.grace <= args.heartbeat:
        return cli.fail(f"--grace ({args.grace} s) must be longer than --heartbeat ({args.heartbeat} s)")
    params, plan = cli.load_or_exit(args.params, args.task)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    options = Options(args.n_trials, args.timeout, args.storage, args.study, args.heartbeat, args.grace)
    code, summary = cli.run_guarded(f"tune {args.task} {args.phase}",
                                    lambda: run(plan, params, args.phase, root=Path(args.root), options=options,
                                                track=not args.no_track),
                                    failed=(study.NoCompleteTrial,), bad=cli.bad_input())
    if code == 0:
        print(json.dumps({k: summary[k] for k in FIELDS}))
    return code


if __name__ == "__main__":
    sys.exit(main())

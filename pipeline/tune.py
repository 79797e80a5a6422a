"""DVC stages `tune-pretrain@<task>` and `tune-finetune@<task>`: Optuna search over learning rate and weight decay.

    python -m pipeline.tune --task hopper-medium-v2 --phase pretrain
    python -m pipeline.tune --task hopper-medium-v2 --phase finetune --n-trials 10 --storage postgresql://...

The paper tuned both per task (Appendix B, Table C.4). A trial runs one phase's loop (odt.loops)
with (learning_rate, weight_decay) drawn log-uniformly from params.yaml `tune`, on the trial's
budget; the objective is the final normalized return. Finetune trials start from
pretraining seed 0's checkpoint. Evaluations go to the pruner, which stops poor
trials early. Storage, sampler, pruner: pipeline/study.py. MLflow: a parent run per study, a
child run per trial. Writes reports/tune/<task>-<phase>.json (what `use_tuned: true` reads).
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping

from odt.atomic import write_json
from pipeline import cli, paths, study
from pipeline.finetune import check_pretrained
from pipeline.params import Params, TaskPlan, phase_config
from pipeline.study_results import NoCompleteTrial, summarize, write_plots
from pipeline.study_tracking import StudyTracking
from pipeline.tuning import TuneParams, tuned_path


class TrialLogger:
    """odt's Logger for one trial: evaluations to Optuna, which may prune; rows and evaluations to MLflow."""

    def __init__(self, trial, phase: str, run=None):
        self.trial, self.phase, self.run = trial, phase, run
        self.reported: list[int] = []

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step)

    def report(self, value: float, step: int, final: bool) -> None:
        import optuna  # noqa: PLC0415

        # finetuning evaluations fall at other update counts in each trial: the pruner compares the k-th evaluation
        at = step if self.phase == "pretrain" else len(self.reported)
        self.reported.append(at)
        self.trial.report(value, at)
        if self.run is not None:
            self.run.log_summary({"intermediate_value": value, "intermediate_updates": step}, at)
        if not final and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at evaluation {len(self.reported)} ({step} updates): {value:.3f}")


class Objective:
    """Train one phase with the trial's lr and weight decay; return the final normalized return."""

    def __init__(self, plan: TaskPlan, params: Params, phase: str, *, root: Path, budget: int, eval_every: int,
                 tracking: StudyTracking | None):
        # the phase's own tuned file is what this study writes: never read it while tuning
        self.plan, self.params = plan, params.model_copy(update={"use_tuned": False})
        self.phase, self.root, self.tracking = phase, root, tracking
        self.budget = {"pretrain_updates": budget, "eval_every": eval_every} if phase == "pretrain" else {"online_samples": budget}
        self.space = study.search_space(params.tune)

    def __call__(self, trial) -> float:
        import optuna  # noqa: PLC0415

        from odt.divergence import Diverged  # noqa: PLC0415

        hp = {k: trial.suggest_float(k, v["low"], v["high"], log=True) for k, v in self.space.items()}
        trial.set_user_attr(study.WORKER_ATTR, study.worker_id())
        logger = TrialLogger(trial, self.phase, self.tracking.start_trial(trial.number, hp) if self.tracking else None)
        if logger.run is not None:  # optuna-dashboard shows it beside the trial: its MLflow run
            trial.set_user_attr("odt.mlflow_run_id", logger.run.run_id)
        state, value = "FAIL", None
        try:
            value = self.train(hp, logger)
            state = "COMPLETE"
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        except Diverged as err:  # a learning rate too high for the task: this trial fails, the study goes on
            print(f"tune {self.plan.name} {self.phase}: trial {trial.number}: {err}", flush=True)
            return float("nan")  # Optuna records the trial as failed
        finally:
            if self.tracking is not None:
                self.tracking.end_trial(logger.run, state, value, logger.reported)
        return value

    def train(self, hp: dict[str, float], logger: TrialLogger) -> float:
        from odt.loops import finetune, pretrain  # noqa: PLC0415

        cfg, _ = phase_config(self.plan, self.params, self.phase, {**hp, **self.budget}, root=self.root)
        env_fn, device, data = self.plan.env_fn(self.root), self.params.device, paths.dataset(self.root, self.plan.name)
        if self.phase == "pretrain":
            run = pretrain(data, self.plan.model, cfg, env_fn, task=self.plan.name, device=device, logger=logger,
                           progress=False)
        else:
            run = finetune(paths.pretrained(self.root, self.plan.name, 0), cfg, env_fn, data=data, seed=0,
                           offline=self.plan.pretrain, device=device, logger=logger, progress=False)
        return float(run.final["eval_normalized"])


def trial_budget(plan: TaskPlan, tune: TuneParams, phase: str) -> tuple[int, int]:
    """(updates or online samples per trial, updates between a pretrain trial's evaluations)."""
    if phase == "finetune":
        return tune.online_samples or plan.finetune.online_samples, 0
    budget = tune.pretrain_updates or plan.pretrain.pretrain_updates
    log_every = plan.pretrain.log_every
    return budget, tune.eval_every or plan.pretrain.eval_every or max(log_every, budget // 5 // log_every * log_every)


def run_stage(plan: TaskPlan, params: Params, phase: str, *, root: Path = paths.ROOT, n_trials: int | None = None,
              timeout: float | None = None, storage: str | None = None, study_name: str | None = None,
              track: bool = True, heartbeat: int = study.HEARTBEAT_S, grace: int = study.GRACE_S) -> dict[str, Any]:
    import optuna  # noqa: PLC0415

    root = Path(root)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat, journal, plots
    tune = params.tune
    budget, eval_every = trial_budget(plan, tune, phase)
    paths.existing_dataset(root, plan.name)  # both phases train on it: missing or altered, one line before any trial
    if phase == "finetune":  # missing or damaged: one line before any trial
        check_pretrained(root, plan.name, 1)
    name = study_name or f"{plan.name}-{phase}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store, label = study.open_storage(storage or tune.storage, root, heartbeat=heartbeat, grace=grace)
    optuna_study = study.load_study(name, store, label, tune, phase, budget, eval_every)
    study.annotate(optuna_study, plan.name, phase, budget)
    dead = study.fail_dead_trials(optuna_study)
    if dead:
        print(f"tune {plan.name} {phase}: trials {dead} lost their worker and are marked FAIL", flush=True)

    tracking = StudyTracking(root, plan, params, phase, optuna_study, label, budget, eval_every) if track else None
    objective = Objective(plan, params, phase, root=root, budget=budget, eval_every=eval_every, tracking=tracking)
    n = n_trials or tune.n_trials
    unit = "updates" if phase == "pretrain" else "online samples"
    print(f"tune {plan.name} {phase}: study '{name}' in {label}, {len(optuna_study.trials)} trials so far; "
          f"running {n} more (budget {budget} {unit}, pruner {tune.pruner})", flush=True)
    try:
        optuna_study.optimize(objective, n_trials=n, timeout=timeout or tune.timeout, gc_after_trial=False)
    except BaseException:
        if tracking is not None:
            tracking.tracker.finish(tracking.parent, "FAILED")
        raise

    out = root / tuned_path(plan.name, phase)
    summary = summarize(optuna_study, plan, params, phase, label, budget, eval_every)
    plots, importances, note = write_plots(optuna_study, out, f"{plan.name} {phase}")
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
        import torch  # noqa: PLC0415

        torch.set_num_threads(args.threads)
    code, summary = cli.run_guarded(
        f"tune {args.task} {args.phase}", lambda: run_stage(
            plan, params, args.phase, root=Path(args.root), n_trials=args.n_trials, timeout=args.timeout,
            storage=args.storage, study_name=args.study, track=not args.no_track, heartbeat=args.heartbeat,
            grace=args.grace),
        failed=(NoCompleteTrial,), bad=cli.bad_input())
    if code:
        return code
    print(json.dumps({k: summary[k] for k in ("task", "phase", "best_params", "best_value", "n_trials", "states")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

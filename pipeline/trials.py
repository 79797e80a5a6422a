"""A trial of an Optuna study: one phase trained with the trial's values, its evaluations reported to the pruner, and
its MLflow run, a child of the study's (found again by key after a rerun)."""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from odt.divergence import Diverged
from pipeline import paths, study
from pipeline.params import Params, TaskPlan, phase_config
from pipeline.study import Budget
from pipeline.tracking import RunLogger, Tracker, flat, stage_tags


class TrialLogger:
    """odt's Logger for one trial: evaluations to Optuna, which may prune; rows and evaluations to MLflow."""

    def __init__(self, trial, phase: str, run=None):
        self.trial, self.phase, self.run = trial, phase, run
        self.reported: list[int] = []

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step)

    def report(self, value: float, step: int, final: bool) -> None:
        import optuna

        # finetuning evaluations fall at other update counts in each trial: the pruner compares the k-th evaluation
        at = step if self.phase == "pretrain" else len(self.reported)
        self.reported.append(at)
        self.trial.report(value, at)
        if self.run is not None:
            self.run.log_summary({"intermediate_value": value, "intermediate_updates": step}, at)
        if not final and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at evaluation {len(self.reported)} ({step} updates): {value:.3f}")


class StudyTracking:
    """The study's parent run and a child run per trial, found again by key after a rerun."""

    def __init__(self, root: Path, plan: TaskPlan, params: Params, optuna_study, label: str, budget: Budget):
        phase = budget.phase
        self.tracker = Tracker(root)
        self.exp = self.tracker.experiment(f"odt/{plan.name}")
        self.key = f"tune:{plan.name}:{phase}:{optuna_study.study_name}:{optuna_study.user_attrs[study.UID_ATTR]}"
        self.tags = stage_tags(root, params.profile, f"tune-{phase}@{plan.name}", task=plan.name, phase=phase,
                               study=optuna_study.study_name, storage=label)
        self.parent = self.tracker.run(self.exp, self.key, f"tune {phase}", self.tags)
        self.tracker.client.update_run(self.parent, status="RUNNING")  # a rerun adds trials to a finished study
        tune = params.tune
        # params are what every trial of the study shares (load_study checks the search space);
        # what a worker may run with differently (budget, pruner, sampler seed) is a tag of the
        # parent, the latest worker's, and a param of each trial's own run
        self.tracker.log_params(self.parent, {**flat({"search": study.search_space(tune)}),
                                              "direction": study.DIRECTION})
        self.settings = {"sampler": f"TPE(seed={tune.sampler_seed} + trial)", "pruner": tune.pruner,
                         "startup_trials": tune.startup_trials, "budget": budget.amount,
                         "eval_every": budget.eval_every}
        self.tracker.set_tags(self.parent, self.settings)

    def start_trial(self, number: int, hp: dict[str, float]):
        run_id, _ = self.tracker.open(self.exp, f"{self.key}:trial{number}", f"trial {number}",
                                      {**self.tags, "trial": number}, {**hp, "trial": number, **self.settings},
                                      parent=self.parent)
        return RunLogger(self.tracker.uri, run_id)

    def end_trial(self, run, state: str, value: float | None, reported: list[int]) -> None:
        if value is not None and math.isfinite(value):
            run.log_summary({"value": value}, reported[-1] if reported else 0)
        self.tracker.set_tags(run.run_id, {"optuna.state": state})
        self.tracker.finish(run.run_id, {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(state, "FAILED"))

    def close_failed(self, optuna_study) -> None:
        """Child runs of trials that failed elsewhere (a killed worker) are still RUNNING in MLflow."""
        import optuna

        for t in optuna_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
            found = self.tracker.find(self.exp, f"{self.key}:trial{t.number}")
            if found is not None and found.info.status == "RUNNING":
                self.tracker.set_tags(found.info.run_id, {"optuna.state": "FAIL"})
                self.tracker.finish(found.info.run_id, "FAILED")

    def finish(self, summary: dict[str, Any], files: list[Path]) -> None:
        self.tracker.log_metrics(self.parent, {"best_value": summary["best_value"],
                                               **{f"trials_{k.lower()}": v for k, v in summary["states"].items()}},
                                 step=summary["n_trials"])
        self.tracker.set_tags(self.parent, {"best_trial": summary["best_trial"],
                                            **{f"best_{k}": v for k, v in summary["best_params"].items()}})
        self.tracker.log_artifacts(self.parent, files)
        self.tracker.finish(self.parent)


class Objective:
    """Train one phase with the trial's lr and weight decay; return the final normalized return."""

    def __init__(self, plan: TaskPlan, params: Params, root: Path, budget: Budget, tracking: StudyTracking | None):
        # the phase's own tuned file is what this study writes: never read it while tuning
        self.plan, self.params = plan, params.model_copy(update={"use_tuned": False})
        self.phase, self.root, self.tracking = budget.phase, root, tracking
        self.budget = ({"pretrain_updates": budget.amount, "eval_every": budget.eval_every} if self.phase == "pretrain"
                       else {"online_samples": budget.amount})
        self.space = study.search_space(params.tune)

    def __call__(self, trial) -> float:
        import optuna


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
        """The trial's run: pretraining from scratch, or finetuning pretraining seed 0's checkpoint."""
        from odt.loops import finetune, pretrain

        cfg, _ = phase_config(self.plan, self.params, self.phase, {**hp, **self.budget}, root=self.root)
        env_fn, device, data = self.plan.env_fn(self.root), self.params.device, paths.dataset(self.root, self.plan.name)
        if self.phase == "pretrain":
            run = pretrain(data, self.plan.model, cfg, env_fn, task=self.plan.name, device=device, logger=logger,
                           progress=False)
        else:
            run = finetune(paths.pretrained(self.root, self.plan.name, 0), cfg, env_fn, data=data, seed=0,
                           offline=self.plan.pretrain, device=device, logger=logger, progress=False)
        return float(run.final["eval_normalized"])

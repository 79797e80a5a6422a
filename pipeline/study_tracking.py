"""MLflow for an Optuna study: a parent run per study, a child run per trial, found again after a rerun."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pipeline import study
from pipeline.params import Params, TaskPlan


class StudyTracking:
    """The study's parent run and a child run per trial, found again by key after a rerun."""

    def __init__(self, root: Path, plan: TaskPlan, params: Params, phase: str, optuna_study, label: str,
                 budget: int, eval_every: int):
        from pipeline.tracking import Tracker, flat, stage_tags  # noqa: PLC0415

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
        self.tracker.log_params(self.parent, {**flat({"search": study.search_space(tune)}), "direction": study.DIRECTION})
        self.settings = {"sampler": f"TPE(seed={tune.sampler_seed} + trial)", "pruner": tune.pruner,
                         "startup_trials": tune.startup_trials, "budget": budget, "eval_every": eval_every}
        self.tracker.set_tags(self.parent, self.settings)

    def start_trial(self, number: int, hp: dict[str, float]):
        from pipeline.tracking import RunLogger  # noqa: PLC0415

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
        import optuna  # noqa: PLC0415

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

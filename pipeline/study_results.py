"""What a study leaves: reports/tune/<task>-<phase>.json (best values, every trial) and its two plots."""
from __future__ import annotations

import warnings
from pathlib import Path

from odt.curves import save_figure
from pipeline.params import Params, TaskPlan
from pipeline.tuning import TUNABLE
from pipeline.study import DIRECTION, first_line, search_space


class NoCompleteTrial(RuntimeError):
    """Every trial was pruned or failed: nothing to write, exit 1."""


def summarize(study, plan: TaskPlan, params: Params, phase: str, label: str, budget: int, eval_every: int) -> dict:
    import optuna  # noqa: PLC0415

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    states = {s.name: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    if not complete:
        raise NoCompleteTrial(f"no trial of study '{study.study_name}' completed ({states['PRUNED']} pruned, "
                           f"{states['FAIL']} failed); widen tune ranges, raise the budget or set tune.pruner: none")
    best = study.best_trial
    base = getattr(plan, phase)
    return {
        "task": plan.name,
        "phase": phase,
        "best_params": {k: float(best.params[k]) for k in TUNABLE},
        "best_value": float(best.value),
        "best_trial": best.number,
        "n_trials": len(trials),
        "states": {k: v for k, v in states.items() if v},
        "objective": f"eval normalized return after {budget} {'updates' if phase == 'pretrain' else 'online samples'}"
                     f"{' (seed 0, from runs/' + plan.name + '/pretrain/checkpoint.pt)' if phase == 'finetune' else ''}",
        "direction": DIRECTION,
        "budget": budget,
        "eval_every": eval_every or None,
        "study": study.study_name,
        "storage": label,
        "search_space": search_space(params.tune),
        "sampler": f"TPE, seed {params.tune.sampler_seed} + trial number",
        "pruner": params.tune.pruner,
        "params_yaml_values": {k: getattr(base, k) for k in TUNABLE},
        "trials": [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                    "last_step": t.last_step} for t in trials],
    }


def write_plots(study, out: Path, title: str) -> tuple[dict[str, str], dict[str, float] | None, str | None]:
    """Optimization history and parameter importances (fANOVA, seeded) as PNG; importances need 2 completed trials."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import optuna  # noqa: PLC0415
    from optuna.visualization import matplotlib as ovm  # noqa: PLC0415

    history, importance = out.with_name(out.stem + "-history.png"), out.with_name(out.stem + "-importance.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's matplotlib plots are flagged experimental
        ax = ovm.plot_optimization_history(study)
        ax.set_title(f"{title}: optimization history")
        save_figure(ax.figure, history, dpi=100, bbox_inches="tight")
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        importances, note = None, None
        if len(complete) >= 2:
            try:
                evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
                importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
                ax = ovm.plot_param_importances(study, evaluator=evaluator)
                ax.set_title(f"{title}: parameter importances (fANOVA)")
                save_figure(ax.figure, importance, dpi=100, bbox_inches="tight")
            except (RuntimeError, ValueError) as err:
                note = f"parameter importances unavailable: {first_line(err)}"
        else:
            note = f"parameter importances need at least 2 completed trials (have {len(complete)})"
        if note:
            fig, ax = plt.subplots(figsize=(6, 2))
            ax.axis("off")
            ax.text(0.5, 0.5, note, ha="center", va="center", wrap=True)
            save_figure(fig, importance, dpi=100, bbox_inches="tight")
    return {"history": str(history), "importance": str(importance)}, importances, note

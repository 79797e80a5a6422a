"""Optuna studies: storage (sqlite, journal, any RDB), the seeded sampler, the pruner, workers that died, and what a
study leaves.

A study `<task>-<phase>` lives in `tune.storage`, so several workers on one or more
machines can run it at once and a rerun adds trials to it. A trial whose worker was
killed is marked FAIL (RDB heartbeat; a same-host dead-process check for every storage).
What it leaves: reports/tune/<task>-<phase>.json (best values, every trial; what
`use_tuned: true` reads, pipeline.params.read_tuned) and two plots beside it.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from odt.config import ConfigError
from odt.curves import save_figure
from odt.lock import file_lock
from pipeline.params import TUNABLE, Params, TaskPlan, TuneParams

DIRECTION = "maximize"
METRIC = "eval_normalized"  # the objective's name in optuna-dashboard: the final normalized return
HEARTBEAT_S, GRACE_S = 20, 60  # an RDB trial without a heartbeat for GRACE_S is marked FAIL
WORKER_ATTR, SPACE_ATTR, UID_ATTR, OBJECTIVE_ATTR = "odt.worker", "odt.search_space", "odt.uid", "odt.objective"
# what `pip install` gives an RDB URL a driver; postgresql's (SQLAlchemy 2.1's default, psycopg 3) is in
# requirements.lock
DRIVERS = {"postgresql": "'psycopg[binary]==3.3.9'", "mysql": "PyMySQL"}


class StudyError(ConfigError):
    """Bad storage, a study at odds with params.yaml, or a missing input: exit 2."""


class NoCompleteTrial(RuntimeError):
    """Every trial was pruned or failed: nothing to write, exit 1."""


@dataclass(frozen=True)
class Budget:
    """What a trial trains: `amount` pretraining updates, evaluated every `eval_every`, or `amount` online samples."""

    phase: str  # pretrain or finetune
    amount: int
    eval_every: int = 0  # finetuning evaluates where its rounds end

    @classmethod
    def of(cls, plan: TaskPlan, tune: TuneParams, phase: str) -> Budget:
        """params.yaml `tune`'s budget for the phase, else the task's own; by default a pretrain trial evaluates 5
        times."""
        if phase == "finetune":
            return cls(phase, tune.online_samples or plan.finetune.online_samples)
        budget = tune.pretrain_updates or plan.pretrain.pretrain_updates
        log_every = plan.pretrain.log_every
        return cls(phase, budget, tune.eval_every or plan.pretrain.eval_every
                   or max(log_every, budget // 5 // log_every * log_every))

    @property
    def unit(self) -> str:
        return "updates" if self.phase == "pretrain" else "online samples"


# storage -------------------------------------------------------------------------------------
def _from_root(path: str, root: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(root) / p


def storage_label(spec: str, root: Path) -> str:
    """The storage as people should see it: relative paths resolved, passwords hidden."""
    if spec.startswith("journal:"):
        return f"journal:{_from_root(spec[len('journal:'):], root)}"
    if spec.startswith("sqlite:///") and spec not in ("sqlite:///", "sqlite:///:memory:"):
        return f"sqlite:///{_from_root(spec[len('sqlite:///'):], root).resolve()}"
    from sqlalchemy.engine import make_url

    try:
        return make_url(spec).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: open_storage says so
        return spec


def open_storage(spec: str, root: Path, *, heartbeat: int = HEARTBEAT_S, grace: int = GRACE_S):
    """An Optuna storage for `spec`, or StudyError with one line saying what is wrong.

    On an RDB a running trial writes a heartbeat every `heartbeat` seconds; a worker starting
    a trial marks FAIL those of other workers silent for `grace` seconds.
    """
    import optuna
    import sqlalchemy.exc

    label = storage_label(spec, root)
    if spec.startswith("journal:"):
        path = Path(label[len("journal:"):])
        if not path.parent.is_dir():
            raise StudyError(f"cannot open Optuna storage {label}: directory {path.parent} does not exist")
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path))), label
    url = label if label.startswith("sqlite:///") else spec
    backend = url.split(":", 1)[0].split("+", 1)[0]
    connect = {"sqlite": {"timeout": 60}, "postgresql": {"connect_timeout": 10}, "mysql": {"connect_timeout": 10}}
    # Two workers creating the tables of a new database at once race on its schema: on a
    # local sqlite file a lock beside it serialises them; on a server the loser retries.
    db = Path(url[len("sqlite:///"):]) if backend == "sqlite" and url != "sqlite:///:memory:" else None
    lock = (lambda: file_lock(db.with_name(db.name + ".lock"))) if db and db.parent.is_dir() else contextlib.nullcontext
    try:
        for attempt in range(3):
            try:
                with lock():
                    storage = optuna.storages.RDBStorage(
                        url, engine_kwargs={"connect_args": connect[backend]} if backend in connect else None,
                        heartbeat_interval=heartbeat, grace_period=grace)
                break
            # PostgreSQL's DuplicateTable is a ProgrammingError ("relation ... already exists")
            except (
                sqlalchemy.exc.OperationalError,
                sqlalchemy.exc.IntegrityError,
                sqlalchemy.exc.ProgrammingError,
            ) as err:
                racing = ("already exists", "locked", "UNIQUE constraint", "duplicate key")
                if attempt == 2 or not any(s in str(err) for s in racing):
                    raise
                time.sleep(0.5 * (attempt + 1))
    except ImportError:
        pkg = DRIVERS.get(backend)
        hint = f"pip install {pkg}" if pkg else "install the database driver SQLAlchemy names for it"
        raise StudyError(f"Optuna storage {label} needs a {backend} driver that is not installed: {hint}") from None
    except sqlalchemy.exc.ArgumentError as err:
        raise StudyError(f"tune.storage {label!r} is not a storage URL ({first_line(err)}); use sqlite:///optuna.db, "
                         "journal:optuna.log or postgresql://user:password@host/db") from None
    except sqlalchemy.exc.SQLAlchemyError as err:
        raise StudyError(f"cannot reach Optuna storage {label}: {first_line(getattr(err, 'orig', None) or err)}; "
                         "check the URL, that the database server runs and accepts this user") from None
    return storage, label


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# the study -----------------------------------------------------------------------------------
def search_space(tune: TuneParams) -> dict[str, dict[str, float]]:
    return {name: {"low": getattr(tune, name).low, "high": getattr(tune, name).high, "log": True} for name in TUNABLE}


def make_sampler(seed: int):
    """TPE whose draws for trial k use seed + k: reproducible, and two workers never draw alike."""
    import optuna

    class TrialSeededTPE(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self.seed = seed
            self._tpe = optuna.samplers.TPESampler(seed=seed)

        def before_trial(self, study, trial) -> None:
            self._tpe = optuna.samplers.TPESampler(seed=(self.seed + trial.number) % 2**32)
            self._tpe.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self._tpe.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, space):
            return self._tpe.sample_relative(study, trial, space)

        def sample_independent(self, study, trial, name, distribution):
            return self._tpe.sample_independent(study, trial, name, distribution)

        def after_trial(self, study, trial, state, values) -> None:
            self._tpe.after_trial(study, trial, state, values)

    return TrialSeededTPE()


def make_pruner(tune: TuneParams, budget: Budget):
    import optuna

    if tune.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=tune.startup_trials, n_warmup_steps=0)
    if tune.pruner == "hyperband":  # resource: updates (pretrain) or evaluations (finetune)
        if budget.phase == "pretrain":
            return optuna.pruners.HyperbandPruner(min_resource=min(budget.eval_every, budget.amount),
                                                  max_resource=budget.amount, reduction_factor=3)
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto", reduction_factor=3)
    return optuna.pruners.NopPruner()


def load_study(name: str, storage, label: str, tune: TuneParams, budget: Budget):
    """Create or continue the study; the search space it was created with must be params.yaml's."""
    import optuna

    study = optuna.create_study(study_name=name, storage=storage, direction=DIRECTION, load_if_exists=True,
                                sampler=make_sampler(tune.sampler_seed),
                                pruner=make_pruner(tune, budget))
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise StudyError(f"study '{name}' in {label} minimizes; the objective here is maximized: use another --study")
    space = search_space(tune)
    attrs = study.user_attrs
    if SPACE_ATTR not in attrs:  # a new study (or one from before these attributes): record what it searches
        study.set_user_attr(SPACE_ATTR, space)
        study.set_user_attr(UID_ATTR, uuid.uuid4().hex[:12])
        attrs = study.user_attrs
    if attrs[SPACE_ATTR] != space:
        raise StudyError(
            f"study '{name}' in {label} searches {_describe(attrs[SPACE_ATTR])} but params.yaml tune has "
            f"{_describe(space)}; restore those ranges, or start another study with --study NAME "
            f"(or delete it: optuna delete-study --study-name {name} --storage {label})")
    objective = {"budget": budget.amount, "eval_every": budget.eval_every, "pruner": tune.pruner}
    if attrs.get(OBJECTIVE_ATTR, objective) != objective:
        print(f"note: study '{name}' ran earlier trials with {attrs[OBJECTIVE_ATTR]}, now {objective}; "
              "their values may not compare (--study NAME starts a fresh study)", file=sys.stderr)
    study.set_user_attr(OBJECTIVE_ATTR, objective)
    return study


def annotate(optuna_study, task: str, budget: Budget) -> None:
    """What optuna-dashboard shows beside the trials: task, phase, budget and the objective's name."""
    attrs = {"odt.task": task, "odt.phase": budget.phase, "odt.budget": f"{budget.amount} {budget.unit}"}
    for key, value in attrs.items():
        if optuna_study.user_attrs.get(key) != value:
            optuna_study.set_user_attr(key, value)
    if optuna_study.metric_names != [METRIC]:
        optuna_study.set_metric_names([METRIC])


def _describe(space: dict[str, dict[str, float]]) -> str:
    return ", ".join(f"{k} [{v['low']:g}, {v['high']:g}]" for k, v in sorted(space.items()))


def worker_id() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time()}


def fail_dead_trials(study) -> list[int]:
    """RUNNING trials of a process on this host that no longer exists: FAIL (journal storage has no heartbeat)."""
    import optuna

    failed = []
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        w = t.user_attrs.get(WORKER_ATTR)
        if not w or w.get("host") != host:
            continue  # another machine's worker: the RDB heartbeat covers it
        try:
            alive = abs(psutil.Process(int(w["pid"])).create_time() - w["started"]) < 1.0  # not a reused pid
        except psutil.Error:
            alive = False
        if not alive:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            failed.append(t.number)
    return failed


# what it leaves ------------------------------------------------------------------------------
def summarize(study, plan: TaskPlan, params: Params, label: str, budget: Budget) -> dict:
    """reports/tune/<task>-<phase>.json without its plots: the best values, the study's settings, every trial."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    states = {s.name: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    if not complete:
        raise NoCompleteTrial(f"no trial of study '{study.study_name}' completed ({states['PRUNED']} pruned, "
                           f"{states['FAIL']} failed); widen tune ranges, raise the budget or set tune.pruner: none")
    best = study.best_trial
    phase = budget.phase
    base = getattr(plan, phase)
    return {
        "task": plan.name,
        "phase": phase,
        "best_params": {k: float(best.params[k]) for k in TUNABLE},
        "best_value": float(best.value),
        "best_trial": best.number,
        "n_trials": len(trials),
        "states": {k: v for k, v in states.items() if v},
        "objective": f"eval normalized return after {budget.amount} {budget.unit}"
        f"{' (seed 0, from runs/' + plan.name + '/pretrain/checkpoint.pt)' if phase == 'finetune' else ''}",
        "direction": DIRECTION,
        "budget": budget.amount,
        "eval_every": budget.eval_every or None,
        "study": study.study_name,
        "storage": label,
        "search_space": search_space(params.tune),
        "sampler": f"TPE, seed {params.tune.sampler_seed} + trial number",
        "pruner": params.tune.pruner,
        "params_yaml_values": {k: getattr(base, k) for k in TUNABLE},
        "trials": [
            {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params, "last_step": t.last_step}
            for t in trials
        ],
    }


def write_plots(study, out: Path, title: str) -> tuple[dict[str, str], dict[str, float] | None, str | None]:
    """Optimization history and parameter importances (fANOVA, seeded) as PNG; importances need 2 completed trials."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

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

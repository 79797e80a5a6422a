"""DVC stages `tune-pretrain@<task>` and `tune-finetune@<task>`: Optuna search over learning rate and weight decay.

    python -m pipeline.tune --task hopper-medium-v2 --phase pretrain
    python -m pipeline.tune --task hopper-medium-v2 --phase finetune --n-trials 10 --storage postgresql://...

The paper tuned both per task (Appendix B, Table C.4). A trial trains one phase with its
(learning_rate, weight_decay) drawn log-uniformly from params.yaml `tune`, on the trial's
budget (`tune.pretrain_updates` / `tune.online_samples`); the objective is the evaluation
normalized return at the end. Pretrain trials start from scratch; finetune trials from
runs/<task>/pretrain/checkpoint.pt, seed 0. Intermediate evaluations go to the pruner
(median or hyperband), which stops poor trials early.

The study `<task>-<phase>` lives in `tune.storage` (sqlite in the repository by default;
any RDB URL, or `journal:PATH` for Optuna's journal file), so several workers on one or
more machines can run it at once, and a rerun adds trials to it. A trial whose worker was
killed is marked FAIL (RDB heartbeat; same-host dead process check for every storage).
MLflow: a parent run per study in experiment `odt/<task>`, a child run per trial.
Writes reports/tune/<task>-<phase>.json (best params, summary; what `use_tuned: true`
reads) and -history.png / -importance.png beside it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from odt.config import ConfigError
from odt.datasets.download import file_lock
from pipeline import common
from pipeline.params import TUNABLE, Params, TaskPlan, TuneParams, tuned_path

DIRECTION = "maximize"
HEARTBEAT_S, GRACE_S = 20, 60  # an RDB trial without a heartbeat for GRACE_S is marked FAIL
WORKER_ATTR, SPACE_ATTR, UID_ATTR, OBJECTIVE_ATTR = "odt.worker", "odt.search_space", "odt.uid", "odt.objective"
DRIVERS = {"postgresql": "psycopg2-binary", "mysql": "PyMySQL"}  # what `pip install` gives an RDB URL a driver


class StudyError(ConfigError):
    """Bad storage, a study at odds with params.yaml, or a missing input: exit 2."""


class NoCompleteTrial(RuntimeError):
    """Every trial was pruned or failed: nothing to write, exit 1."""


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
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    try:
        return make_url(spec).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: open_storage says so
        return spec


def open_storage(spec: str, root: Path):
    """An Optuna storage for `spec`, or StudyError with one line saying what is wrong."""
    import optuna  # noqa: PLC0415
    import sqlalchemy.exc  # noqa: PLC0415

    label = storage_label(spec, root)
    if spec.startswith("journal:"):
        path = Path(label[len("journal:"):])
        if not path.parent.is_dir():
            raise StudyError(f"cannot open Optuna storage {label}: directory {path.parent} does not exist")
        from optuna.storages.journal import JournalFileBackend  # noqa: PLC0415

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
                        heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
                break
            except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError) as err:
                racing = ("already exists", "locked", "UNIQUE constraint", "duplicate key")
                if attempt == 2 or not any(s in str(err) for s in racing):
                    raise
                time.sleep(0.5 * (attempt + 1))
    except ImportError:
        pkg = DRIVERS.get(backend)
        hint = f"pip install {pkg}" if pkg else "install the database driver SQLAlchemy names for it"
        raise StudyError(f"Optuna storage {label} needs a {backend} driver that is not installed: {hint}") from None
    except sqlalchemy.exc.ArgumentError as err:
        raise StudyError(f"tune.storage {label!r} is not a storage URL ({_first_line(err)}); use sqlite:///optuna.db, "
                         "journal:optuna.log or postgresql://user:password@host/db") from None
    except sqlalchemy.exc.SQLAlchemyError as err:
        raise StudyError(f"cannot reach Optuna storage {label}: {_first_line(getattr(err, 'orig', None) or err)}; "
                         "check the URL, that the database server runs and accepts this user") from None
    return storage, label


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# the study -----------------------------------------------------------------------------------
def search_space(tune: TuneParams) -> dict[str, dict[str, float]]:
    return {name: {"low": getattr(tune, name).low, "high": getattr(tune, name).high, "log": True} for name in TUNABLE}


def make_sampler(seed: int):
    """TPE whose draws for trial k use seed + k: reproducible, and two workers never draw alike."""
    import optuna  # noqa: PLC0415

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


def make_pruner(tune: TuneParams, phase: str, budget: int, eval_every: int):
    import optuna  # noqa: PLC0415

    if tune.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=tune.startup_trials, n_warmup_steps=0)
    if tune.pruner == "hyperband":  # resource: updates (pretrain) or evaluations (finetune)
        if phase == "pretrain":
            return optuna.pruners.HyperbandPruner(min_resource=min(eval_every, budget), max_resource=budget,
                                                  reduction_factor=3)
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto", reduction_factor=3)
    return optuna.pruners.NopPruner()


def load_study(name: str, storage, label: str, tune: TuneParams, phase: str, budget: int, eval_every: int):
    """Create or continue the study; the search space it was created with must be params.yaml's."""
    import optuna  # noqa: PLC0415

    study = optuna.create_study(study_name=name, storage=storage, direction=DIRECTION, load_if_exists=True,
                                sampler=make_sampler(tune.sampler_seed),
                                pruner=make_pruner(tune, phase, budget, eval_every))
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
    return study


def _describe(space: dict[str, dict[str, float]]) -> str:
    return ", ".join(f"{k} [{v['low']:g}, {v['high']:g}]" for k, v in sorted(space.items()))


def worker_id() -> dict[str, Any]:
    import psutil  # noqa: PLC0415

    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time()}


def fail_dead_trials(study) -> list[int]:
    """RUNNING trials of a process on this host that no longer exists: FAIL (journal storage has no heartbeat)."""
    import optuna  # noqa: PLC0415
    import psutil  # noqa: PLC0415

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


# one trial -----------------------------------------------------------------------------------
class Objective:
    """Train one phase with the trial's lr and weight decay; report evaluations; return the final normalized return."""

    def __init__(self, plan: TaskPlan, params: Params, phase: str, *, root: Path, work: Path, budget: int,
                 eval_every: int, checkpoint: Path | None, tracking: "StudyTracking | None"):
        # the phase's own tuned file is what this study writes: never read it while tuning
        self.plan, self.params = plan, params.model_copy(update={"use_tuned": False})
        self.phase, self.root, self.work, self.budget = phase, root, work, budget
        self.eval_every, self.checkpoint, self.tracking = eval_every, checkpoint, tracking
        self.space = search_space(params.tune)

    def __call__(self, trial) -> float:
        import optuna  # noqa: PLC0415

        hp = {k: trial.suggest_float(k, v["low"], v["high"], log=True) for k, v in self.space.items()}
        trial.set_user_attr(WORKER_ATTR, worker_id())
        logger = self.tracking.start_trial(trial.number, hp) if self.tracking else None
        reported: list[int] = []

        def report(value: float, at: int) -> None:
            # finetune evaluations fall on different sample counts per trial: the pruner compares the k-th evaluation
            step = at if self.phase == "pretrain" else len(reported)
            reported.append(step)
            trial.report(value, step)
            if logger is not None:
                logger.log({"intermediate_value": value, f"intermediate_{self.unit}": at}, step)
            if at < self.budget and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at {self.unit} {at}: {value:.3f}")

        work = self.work / f"trial_{trial.number}"
        state, value = "FAIL", None
        try:
            value = self.train(hp, report, logger, work)
            state = "COMPLETE"
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)  # a trial never resumes: its number is spent
            if self.tracking is not None:
                self.tracking.end_trial(logger, state, value, reported)
        return value

    @property
    def unit(self) -> str:
        return "updates" if self.phase == "pretrain" else "online_samples"

    def train(self, hp: dict[str, float], report, logger, work: Path) -> float:
        if self.phase == "pretrain":
            result = common.run_pretrain(self.plan, self.params, overrides={**hp, "pretrain_updates": self.budget},
                                         eval_every=self.eval_every, report=report, log_fn=logger, work_dir=work,
                                         root=self.root, progress=False)
            return float(result["normalized_mean"])
        result = common.run_finetune_seed(self.plan, self.params, 0, checkpoint=self.checkpoint,
                                          overrides={**hp, "online_samples": self.budget}, report=report,
                                          log_fn=logger, work_dir=work, root=self.root)
        return float(result["online_normalized"])


def trial_budget(plan: TaskPlan, tune: TuneParams, phase: str) -> tuple[int, int]:
    """(updates or online samples per trial, updates between a pretrain trial's evaluations)."""
    if phase == "finetune":
        return tune.online_samples or plan.finetune.online_samples, 0
    budget = tune.pretrain_updates or plan.pretrain.pretrain_updates
    log_every = plan.pretrain_run.log_every
    every = tune.eval_every or plan.pretrain_run.eval_every or max(log_every, budget // 5 // log_every * log_every)
    if every % log_every:
        raise ConfigError(f"tune.eval_every ({every}) must be a multiple of tasks.{plan.name}.pretrain.log_every ({log_every})")
    return budget, every


# MLflow --------------------------------------------------------------------------------------
class StudyTracking:
    """The study's parent run and a child run per trial, found again by key after a rerun."""

    def __init__(self, root: Path, plan: TaskPlan, params: Params, phase: str, study, label: str,
                 budget: int, eval_every: int):
        from pipeline.tracking import Tracker, git_commit  # noqa: PLC0415

        self.tracker = Tracker(root)
        self.exp = self.tracker.experiment(f"odt/{plan.name}")
        self.key = f"tune:{plan.name}:{phase}:{study.study_name}:{study.user_attrs[UID_ATTR]}"
        commit = git_commit(root)
        self.tags = {"task": plan.name, "phase": phase, "study": study.study_name, "storage": label,
                     "profile": params.profile, "dvc_stage": f"tune-{phase}@{plan.name}", "git_commit": commit,
                     "mlflow.source.git.commit": commit}
        self.parent = self.tracker.run(self.exp, self.key, f"tune {phase}", self.tags)
        self.tracker.client.update_run(self.parent, status="RUNNING")  # a rerun adds trials to a finished study
        tune = params.tune
        self.tracker.log_params(self.parent, {
            **common.flat({"search": search_space(tune)}), "sampler": f"TPE(seed={tune.sampler_seed} + trial)",
            "pruner": tune.pruner, "startup_trials": tune.startup_trials, "budget": budget, "eval_every": eval_every,
            "direction": DIRECTION})

    def start_trial(self, number: int, hp: dict[str, float]):
        from pipeline.tracking import RunLogger  # noqa: PLC0415

        run_id = self.tracker.run(self.exp, f"{self.key}:trial{number}", f"trial {number}",
                                  {**self.tags, "trial": number}, parent=self.parent)
        self.tracker.log_params(run_id, {**hp, "trial": number})
        return RunLogger(self.tracker.uri, run_id)

    def end_trial(self, logger, state: str, value: float | None, reported: list[int]) -> None:
        if logger is None:
            return
        if value is not None and math.isfinite(value):
            logger.log({"value": value}, reported[-1] if reported else 0)
        self.tracker.set_tags(logger.run_id, {"optuna.state": state})
        self.tracker.finish(logger.run_id, {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(state, "FAILED"))

    def close_failed(self, study) -> None:
        """Child runs of trials that failed elsewhere (a killed worker) are still RUNNING in MLflow."""
        import optuna  # noqa: PLC0415

        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
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


# results -------------------------------------------------------------------------------------
def summarize(study, plan: TaskPlan, params: Params, phase: str, label: str, budget: int, eval_every: int) -> dict:
    import optuna  # noqa: PLC0415

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    states = {s.name: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    if not complete:
        raise NoCompleteTrial(f"no trial of study '{study.study_name}' completed ({states['PRUNED']} pruned, "
                           f"{states['FAIL']} failed); widen tune ranges, raise the budget or set tune.pruner: none")
    best = study.best_trial
    base = plan.train_config(phase)
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


def _save_figure(fig, path: Path) -> Path:
    """PNG written beside nothing half-done: into a temp dir, then copied into place atomically."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    try:
        with tempfile.TemporaryDirectory() as tmp:
            fig.savefig(Path(tmp) / "plot.png", format="png", dpi=100, bbox_inches="tight")
            return common.copy_file(Path(tmp) / "plot.png", path)
    finally:
        plt.close(fig)


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
        _save_figure(ax.figure, history)
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        importances, note = None, None
        if len(complete) >= 2:
            try:
                evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
                importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
                ax = ovm.plot_param_importances(study, evaluator=evaluator)
                ax.set_title(f"{title}: parameter importances (fANOVA)")
                _save_figure(ax.figure, importance)
            except (RuntimeError, ValueError) as err:
                note = f"parameter importances unavailable: {_first_line(err)}"
        else:
            note = f"parameter importances need at least 2 completed trials (have {len(complete)})"
        if note:
            fig, ax = plt.subplots(figsize=(6, 2))
            ax.axis("off")
            ax.text(0.5, 0.5, note, ha="center", va="center", wrap=True)
            _save_figure(fig, importance)
    return {"history": str(history), "importance": str(importance)}, importances, note


# the stage -----------------------------------------------------------------------------------
def run_stage(plan: TaskPlan, params: Params, phase: str, *, root: Path = common.ROOT, n_trials: int | None = None,
              timeout: float | None = None, storage: str | None = None, study_name: str | None = None,
              track: bool = True) -> dict[str, Any]:
    import optuna  # noqa: PLC0415

    root = Path(root)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat, journal, plots
    tune = params.tune
    budget, eval_every = trial_budget(plan, tune, phase)
    checkpoint = None
    if phase == "pretrain":
        data = common.data_path(root, plan.name)
        if not data.is_file():
            raise StudyError(f"dataset {data} does not exist; run `dvc repro fetch@{plan.name}` first")
    else:
        checkpoint = common.pretrain_dir(root, plan.name) / "checkpoint.pt"
        if not checkpoint.is_file():
            raise StudyError(f"pretrained checkpoint {checkpoint} does not exist; run `dvc repro pretrain@{plan.name}` first")
    name = study_name or f"{plan.name}-{phase}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store, label = open_storage(storage or tune.storage, root)
    study = load_study(name, store, label, tune, phase, budget, eval_every)
    objective_desc = {"budget": budget, "eval_every": eval_every, "pruner": tune.pruner}
    if study.user_attrs.get(OBJECTIVE_ATTR, objective_desc) != objective_desc:
        print(f"note: study '{name}' ran earlier trials with {study.user_attrs[OBJECTIVE_ATTR]}, now {objective_desc}; "
              "their values may not compare (--study NAME starts a fresh study)", file=sys.stderr)
    study.set_user_attr(OBJECTIVE_ATTR, objective_desc)
    study.set_user_attr("odt.task", plan.name)
    study.set_user_attr("odt.phase", phase)

    dead = fail_dead_trials(study)
    if dead:
        print(f"tune {plan.name} {phase}: trials {dead} lost their worker and are marked FAIL", flush=True)
    work = root / ".cache" / "tune" / name
    finished = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    for d in work.glob("trial_*"):  # left by killed workers (a running trial's directory stays)
        if d.name.removeprefix("trial_").isdigit() and int(d.name.removeprefix("trial_")) in finished:
            shutil.rmtree(d, ignore_errors=True)

    tracking = StudyTracking(root, plan, params, phase, study, label, budget, eval_every) if track else None
    objective = Objective(plan, params, phase, root=root, work=work, budget=budget, eval_every=eval_every,
                          checkpoint=checkpoint, tracking=tracking)
    n = n_trials or tune.n_trials
    print(f"tune {plan.name} {phase}: study '{name}' in {label}, {len(study.trials)} trials so far; "
          f"running {n} more (budget {budget} {objective.unit}, pruner {tune.pruner})", flush=True)
    try:
        study.optimize(objective, n_trials=n, timeout=timeout or tune.timeout, gc_after_trial=False)
    except BaseException:
        if tracking is not None:
            tracking.tracker.finish(tracking.parent, "FAILED")
        raise

    out = root / tuned_path(plan.name, phase)
    summary = summarize(study, plan, params, phase, label, budget, eval_every)
    plots, importances, note = write_plots(study, out, f"{plan.name} {phase}")
    summary |= {"importances": importances, "importance_note": note,
                "plots": {k: str(Path(v).relative_to(root)) for k, v in plots.items()}}
    common.write_json(out, summary)
    if tracking is not None:
        tracking.close_failed(study)
        tracking.finish(summary, [out, *map(Path, plots.values())])
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", required=True)
    ap.add_argument("--phase", required=True, choices=["pretrain", "finetune"])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--root", default=".", help="repository root (data/, runs/, reports/ and mlflow.db live there)")
    ap.add_argument("--n-trials", type=int, default=None, help="trials this worker runs (default: tune.n_trials)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds after which this worker starts no new trial")
    ap.add_argument("--storage", default=None,
                    help="sqlite:///optuna.db, journal:PATH or an RDB URL such as postgresql://user:pw@host/db "
                         "(default: tune.storage)")
    ap.add_argument("--study", default=None, help="study name (default: <task>-<phase>)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for this worker")
    ap.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    args = ap.parse_args(argv)
    for flag, value in (("--n-trials", args.n_trials), ("--timeout", args.timeout), ("--threads", args.threads)):
        if value is not None and value <= 0:
            return common.fail(f"{flag} must be positive, got {value}")
    params, plan = common.load_or_exit(args.params, args.task)
    if args.threads:
        import torch  # noqa: PLC0415

        torch.set_num_threads(args.threads)
    try:
        summary = run_stage(plan, params, args.phase, root=Path(args.root), n_trials=args.n_trials,
                            timeout=args.timeout, storage=args.storage, study_name=args.study,
                            track=not args.no_track)
    except ConfigError as err:
        return common.fail(str(err))
    except NoCompleteTrial as err:
        return common.fail(str(err), code=1)
    except Exception as err:
        return common.fail(f"tune {args.task} {args.phase} failed: {type(err).__name__}: {err}", code=1, trace=True)
    print(json.dumps({k: summary[k] for k in ("task", "phase", "best_params", "best_value", "n_trials", "states")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

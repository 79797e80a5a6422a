"""Optuna tuning (pipeline/tune.py): tiny studies on the random-Hopper fixture and the tiny model."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from pipeline import jobs, paths, seeds, tune
from pipeline.params import TunedResult, parse_params, plan_task, tuned_path
from pipeline.profile import render
from pipeline.study import open_storage

ROOT = Path(__file__).resolve().parents[1]
TASK = "hopper-medium-v2"
PNG = b"\x89PNG\r\n\x1a\n"


def make_root(root: Path, data: Path, *, use_tuned=False, **tune_values) -> Path:
    """A repository root with the fixture as the task's dataset and a tiny params.yaml; returns params.yaml."""
    dst = paths.dataset(root, TASK)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        dst.symlink_to(data)
    raw = yaml.safe_load(render("tiny", root=ROOT, use_tuned=use_tuned))
    raw["tasks"][TASK]["pretrain"]["pretrain_updates"] = 40
    raw["tune"] |= {"pretrain_updates": 40, "eval_every": 10, **tune_values}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def load(path: Path):
    params = parse_params(yaml.safe_load(path.read_text()))
    return params, plan_task(params, TASK)


def journal(root: Path, name: str, file: str = "optuna.log") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(root / file))))


def run_cli(*args, root: Path, wait=True):
    cmd = [sys.executable, "-m", "pipeline.tune", "--task", TASK, "--params", str(root / "params.yaml"),
           "--root", str(root), "--threads", "1", "--no-track", *args]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, hopper_random_hdf5):
    """One tracked study of 5 pretrain trials, run with use_tuned on (tuning never reads its own result)."""
    root = tmp_path_factory.mktemp("tuned")
    params_path = make_root(root, hopper_random_hdf5, use_tuned=True, n_trials=5)
    params, plan = load(params_path)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        summary = tune.run(plan, params, "pretrain", root=root)
    return root, params, plan, summary


@pytest.mark.slow
def test_tiny_study_writes_the_best_params_plots_and_mlflow_runs(tuned):
    root, params, plan, summary = tuned
    out = json.loads((root / tuned_path(TASK, "pretrain")).read_text())
    TunedResult(**out)  # what use_tuned reads
    assert out == json.loads(json.dumps(summary))
    study = optuna.load_study(study_name=f"{TASK}-pretrain", storage=f"sqlite:///{root}/optuna.db")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(study.trials) == out["n_trials"] == 5 and len(complete) >= 2
    best = max(complete, key=lambda t: t.value)
    assert (out["best_trial"], out["best_value"], out["best_params"]) == (best.number, best.value, best.params)
    assert 1e-4 <= out["best_params"]["learning_rate"] <= 1e-2 and 1e-6 <= out["best_params"]["weight_decay"] <= 1e-2
    assert out["search_space"]["learning_rate"] == {"low": 1e-4, "high": 1e-2, "log": True}
    assert out["params_yaml_values"] == {"learning_rate": 0.001, "weight_decay": 0.0001}
    assert out["budget"] == 40 and all(t.last_step == 40 for t in complete)
    assert sorted(complete[0].intermediate_values) == [10, 20, 30, 40]
    assert len({(t.params["learning_rate"], t.params["weight_decay"]) for t in study.trials}) == 5
    assert set(out["importances"]) == {"learning_rate", "weight_decay"} and out["importance_note"] is None
    for png in out["plots"].values():
        assert (root / png).read_bytes()[:8] == PNG and (root / png).stat().st_size > 5000
    assert not (root / ".cache").exists()  # a trial never resumes: it keeps no state on disk


    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name(f"odt/{TASK}")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert parent[0].data.metrics["best_value"] == pytest.approx(out["best_value"])
    children = {
        int(r.data.params["trial"]): r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id
    }
    assert sorted(children) == [0, 1, 2, 3, 4]
    for t in study.trials:
        run = children[t.number]
        assert float(run.data.params["learning_rate"]) == t.params["learning_rate"]
        assert run.data.tags["optuna.state"] == t.state.name
        history = client.get_metric_history(run.info.run_id, "intermediate_value")
        assert {m.step: m.value for m in history} == pytest.approx(t.intermediate_values)
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert run.info.status == "FINISHED" and run.data.metrics["value"] == pytest.approx(t.value)


def test_pretrain_stage_uses_the_tuned_values(tuned):
    root, params, plan, summary = tuned
    result = seeds.run(jobs.pretrain_stage(plan, params.model_copy(update={"seeds": 2}), root=root), track=False)
    best = summary["best_params"]
    assert result["summary"]["hparams"] == {**best, "source": f"tuned ({tuned_path(TASK, 'pretrain')})"}
    written = json.loads((paths.run_dir(root, TASK, "pretrain") / "seed_1" / "result.json").read_text())
    assert written["hparams"]["learning_rate"] == best["learning_rate"] != plan.pretrain.learning_rate


def test_a_diverging_learning_rate_is_pruned(tmp_path, hopper_random_hdf5):
    params, plan = load(make_root(tmp_path, hopper_random_hdf5, learning_rate={"low": 1e-4, "high": 1.0},
                                  startup_trials=2, storage="journal:optuna.log"))
    storage, _ = open_storage(params.tune.storage, tmp_path)
    study = optuna.create_study(study_name=f"{TASK}-pretrain", storage=storage, direction="maximize")
    for lr in (1e-3, 3e-3, 1e-2, 0.5):  # three sane rates, then one that wrecks the policy in 10 updates
        study.enqueue_trial({"learning_rate": lr, "weight_decay": 1e-4})
    tune.run(plan, params, "pretrain", root=tmp_path, options=tune.Options(n_trials=4), track=False)
    trials = journal(tmp_path, f"{TASK}-pretrain").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED"]
    bad = trials[3]
    assert bad.params["learning_rate"] == 0.5 and bad.last_step == 10  # stopped at its first evaluation
    assert bad.intermediate_values[10] < min(t.intermediate_values[10] for t in trials[:3]) - 0.5
    out = json.loads((tmp_path / tuned_path(TASK, "pretrain")).read_text())
    assert out["states"] == {"COMPLETE": 3, "PRUNED": 1} and out["best_params"]["learning_rate"] != 0.5


@pytest.mark.slow
def test_two_workers_share_one_study_and_a_rerun_adds_trials(tmp_path, hopper_random_hdf5):
    """Finetune phase, sqlite storage: two processes at once, then a third run continuing the study."""
    params, plan = load(make_root(tmp_path, hopper_random_hdf5, startup_trials=10))
    # trials start from seed 0
    seeds.run(jobs.pretrain_stage(plan, params.model_copy(update={"seeds": 1}), root=tmp_path), track=False)
    url = f"sqlite:///{tmp_path}/studies.db"
    workers = [run_cli("--phase", "finetune", "--storage", url, "--n-trials", "2", root=tmp_path, wait=False)
               for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
    study = optuna.load_study(study_name=f"{TASK}-finetune", storage=url)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert len({t.params["learning_rate"] for t in study.trials}) == 4  # each trial number draws its own point
    assert {t.user_attrs["odt.worker"]["pid"] for t in study.trials} == {w.pid for w in workers}
    assert all(sorted(t.intermediate_values) == list(range(len(t.intermediate_values))) for t in study.trials)

    # rerun
    tune.run(plan, params, "finetune", root=tmp_path, options=tune.Options(n_trials=1, storage=url), track=False)
    study = optuna.load_study(study_name=f"{TASK}-finetune", storage=url)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3, 4]
    out = json.loads((tmp_path / tuned_path(TASK, "finetune")).read_text())
    assert (out["phase"], out["n_trials"], out["states"]) == ("finetune", 5, {"COMPLETE": 5})
    assert out["best_value"] == max(t.value for t in study.trials)


@pytest.mark.slow
def test_a_killed_workers_trial_is_failed_not_complete(tmp_path, hopper_random_hdf5):
    make_root(tmp_path, hopper_random_hdf5, storage="journal:optuna.log", pretrain_updates=100_000, eval_every=10_000)
    worker = run_cli("--phase", "pretrain", "--n-trials", "1", root=tmp_path, wait=False)
    deadline = time.monotonic() + 120
    running = []
    while not running and time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.5)
        if (tmp_path / "optuna.log").exists():
            running = [t for t in journal(tmp_path, f"{TASK}-pretrain").trials if "odt.worker" in t.user_attrs]
    worker.kill()  # SIGKILL: no chance to tell the study
    _, err = worker.communicate()
    assert running and running[0].state == optuna.trial.TrialState.RUNNING, err

    params, plan = load(make_root(tmp_path, hopper_random_hdf5, storage="journal:optuna.log"))
    summary = tune.run(plan, params, "pretrain", root=tmp_path, options=tune.Options(n_trials=1), track=False)
    trials = journal(tmp_path, f"{TASK}-pretrain").trials
    assert [(t.number, t.state.name) for t in trials] == [(0, "FAIL"), (1, "COMPLETE")]
    assert summary["states"] == {"FAIL": 1, "COMPLETE": 1} and summary["best_trial"] == 1


def test_bad_ranges_storage_and_changed_search_space_are_one_line_errors(tmp_path, hopper_random_hdf5, capsys):
    def cli(*args, **tune_values):
        path = make_root(tmp_path, hopper_random_hdf5, **tune_values)
        try:
            code = tune.main(["--task", TASK, "--phase", "pretrain", "--params", str(path), "--root", str(tmp_path),
                              "--no-track", *args])
        except SystemExit as stop:
            code = stop.code
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: "), err
        return code, err

    code, err = cli(weight_decay={"low": 1e-3, "high": 1e-3})
    assert code == 2 and "tune.weight_decay" in err and "empty search range [0.001, 0.001]" in err
    code, err = cli(learning_rate={"low": 0.0, "high": 1e-3})
    assert code == 2 and "tune.learning_rate.low" in err
    code, err = cli("--storage", f"sqlite:///{tmp_path}/missing/dir/x.db")
    assert code == 2 and "cannot reach Optuna storage" in err and "unable to open database file" in err
    start = time.monotonic()
    code, err = cli("--storage", "postgresql://odt:secret@127.0.0.1:1/odt")
    assert code == 2 and "secret" not in err and "postgresql://odt:***@127.0.0.1:1/odt" in err
    assert "cannot reach Optuna storage" in err and "Connection refused" in err  # the pinned driver is installed
    assert time.monotonic() - start < 60  # a connect timeout, not a hang (generous: a loaded machine)
    code, err = cli("--storage", "nonsense://x")
    assert code == 2 and "not a storage URL" in err
    code, err = cli("--heartbeat", "5", "--grace", "5")
    assert code == 2 and "--grace (5 s) must be longer than --heartbeat (5 s)" in err

    code = tune.main(["--task", TASK, "--phase", "pretrain", "--params", str(tmp_path / "params.yaml"),
                      "--root", str(tmp_path), "--no-track", "--n-trials", "1", "--storage", "journal:s.log"])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    code, err = cli("--storage", "journal:s.log", learning_rate={"low": 1e-5, "high": 1e-3})
    assert code == 2 and f"study '{TASK}-pretrain'" in err
    assert "searches learning_rate [1e-05, 0.001]" not in err and "learning_rate [0.0001, 0.01]" in err
    assert "--study NAME" in err
    assert len(journal(tmp_path, f"{TASK}-pretrain", "s.log").trials) == 1  # no trial was added

    code, err = cli("--phase", "finetune")
    assert code == 2 and "does not exist; run `dvc repro pretrain@hopper-medium-v2` first" in err

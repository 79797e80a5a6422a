"""Optuna on a real PostgreSQL server: the README's two-worker recipe, a killed worker, a rerun.

A throwaway server on 127.0.0.1 (a free port, a temp directory, run as `nobody` when the
tests run as root: PostgreSQL refuses root). The commands are the README's block
`<!-- recipe: postgres -->`, with this test's port and directory.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from services import ROOT, alive, commands, expand, free_port, recipe, service_env, stop_group

from pipeline.params import TunedResult, tuned_path
from pipeline.profile import render

TASK = "hopper-medium-v2"
SERVER_TOOLS = {"initdb", "pg_ctl"}  # run as an unprivileged user; createdb and the workers are clients


def write_params(root: Path, name: str, **tune_values) -> Path:
    raw = yaml.safe_load(render("tiny", root=ROOT))
    raw["tasks"] = {TASK: raw["tasks"][TASK]}
    raw["baselines"] = {name: [t for t in tasks if t == TASK] for name, tasks in raw["baselines"].items()}
    raw["experiments"] = {}
    raw["tune"] |= {"pretrain_updates": 40, "eval_every": 10, "pruner": "none", **tune_values}  # every trial completes
    path = root / name
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def pg_dir():
    """A directory the server's user owns, outside pytest's root-only tmp tree."""
    path = Path(tempfile.mkdtemp(prefix="odt-pg-"))
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)  # nobody:nogroup
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_server_user(argv: list[str]) -> list[str]:
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv] if os.geteuid() == 0 else argv


def postmaster_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def trials_of(url: str, pid: int | None = None):
    study = optuna.load_study(study_name=f"{TASK}-pretrain", storage=url)  # no heartbeat here: it fails nothing
    return [t for t in study.get_trials() if pid is None or t.user_attrs.get("odt.worker", {}).get("pid") == pid]


def wait_for(what: str, check, timeout: float, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        for p in procs:
            assert p.poll() is None, (
                f"worker {p.pid} exited {p.returncode} while waiting for {what}:\n{p.stderr.read()}"
            )
        time.sleep(0.3)
    raise AssertionError(f"no {what} after {timeout} s")


@pytest.mark.slow
def test_two_workers_on_postgresql_a_killed_worker_and_a_rerun(tmp_path, pg_dir, hopper_random_hdf5):
    root = tmp_path / "repo"
    (root / "data" / TASK).mkdir(parents=True)
    shutil.copy(hopper_random_hdf5, root / "data" / TASK / f"{TASK}.hdf5")
    write_params(root, "params.yaml")
    port = free_port()
    pgdata = pg_dir / "pgdata"
    steps = commands(
        recipe("postgres"), {"5432": str(port), "optuna-pg": str(pgdata), ".venv/bin/python": sys.executable}
    )
    env = service_env()
    workers: list[subprocess.Popen] = []
    server_group = None

    def run(argv: list[str], bg: bool):
        nonlocal server_group
        argv = expand(argv, env)
        server = argv[0] in SERVER_TOOLS
        cmd, cwd = (as_server_user(argv), pg_dir) if server else (argv, root)
        if bg:
            workers.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True, start_new_session=True))
            return None
        # pg_ctl start: the postmaster stays in this process group, which the test stops at the end
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                              start_new_session=True)
        if argv[:2] == ["pg_ctl", "start"]:  # pg_ctl makes the postmaster a process group leader of its own
            server_group = postmaster_pid(pgdata)
        assert proc.returncode == 0, f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        return proc

    it = iter(steps)
    try:
        # the recipe up to `wait`: a server, a database, two workers of two trials each
        for kind, what, bg in it:
            if kind == "export":
                env[what[0]] = expand([what[1]], env)[0]
            elif kind == "run":
                run(what, bg)
            else:  # wait
                for w in workers:
                    _, err = w.communicate(timeout=600)
                    assert w.returncode == 0, err
                break
        url = env["STORAGE"]
        assert url == f"postgresql://odt@127.0.0.1:{port}/optuna"
        trials = trials_of(url)
        assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # distinct trials, every one landed
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        assert {t.user_attrs["odt.worker"]["pid"] for t in trials} == {w.pid for w in workers}
        assert len({(t.params["learning_rate"], t.params["weight_decay"]) for t in trials}) == 4
        assert all(sorted(t.intermediate_values) == [10, 20, 30, 40] for t in trials)
        out = json.loads((root / tuned_path(TASK, "pretrain")).read_text())
        TunedResult(**out)
        assert out["n_trials"] == 4 and out["storage"] == url
        assert out["best_value"] == next(t.value for t in trials if t.number == out["best_trial"])
        study = optuna.load_study(study_name=f"{TASK}-pretrain", storage=url)
        assert study.user_attrs["odt.task"] == TASK and study.user_attrs["odt.phase"] == "pretrain"
        assert study.metric_names == ["eval_normalized"]

        # a worker killed mid-trial: another worker's RDB heartbeat check marks its trial FAIL
        long = write_params(root, "params-long.yaml", pretrain_updates=100_000, eval_every=10_000)
        tune = [sys.executable, "-m", "pipeline.tune", "--task", TASK, "--phase", "pretrain", "--storage", url,
                "--threads", "1", "--heartbeat", "1", "--grace", "4"]
        popen = dict(
            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        doomed = subprocess.Popen([*tune, "--params", str(long), "--n-trials", "1"], **popen)
        workers.append(doomed)
        wait_for("running trial of the doomed worker", lambda: [t for t in trials_of(url, doomed.pid)
                                                                  if t.state.name == "RUNNING"], 120, [doomed])
        other = subprocess.Popen([*tune, "--n-trials", "100", "--timeout", "15"], **popen)
        workers.append(other)
        wait_for("running trial of the second worker", lambda: [t for t in trials_of(url, other.pid)
                                                                  if t.state.name == "RUNNING"], 120, [doomed, other])
        os.killpg(doomed.pid, signal.SIGKILL)  # no chance to tell the study
        doomed.wait(timeout=30)
        killed_at = time.time()
        out_other, err_other = other.communicate(timeout=300)
        assert other.returncode == 0, err_other
        lost = trials_of(url, doomed.pid)
        assert [t.state.name for t in lost] == ["FAIL"] and lost[0].number == 4
        assert "lost their worker" not in out_other  # not the same-host check at start: the heartbeat did it
        mine = trials_of(url, other.pid)
        assert mine and all(t.state.name == "COMPLETE" for t in mine)
        assert max(t.datetime_start.timestamp() for t in mine) > killed_at + 4  # a trial began after the grace period

        # the recipe's rest: a rerun adds a trial to the same study, then the server stops
        rest = [step for step in it]
        assert rest[-1][1][:2] == ["pg_ctl", "stop"]
        for kind, what, bg in rest[:-1]:
            assert kind == "run" and not bg
            run(what, bg)
        trials = trials_of(url)
        n = 5 + len(mine) + 1
        assert sorted(t.number for t in trials) == list(range(n))
        assert trials[-1].state.name == "COMPLETE" and trials[-1].user_attrs["odt.worker"]["pid"] not in (
            doomed.pid, other.pid)
        out = json.loads((root / tuned_path(TASK, "pretrain")).read_text())
        complete = [t for t in trials if t.state.name == "COMPLETE"]
        best = max(complete, key=lambda t: t.value)
        assert out["n_trials"] == n and out["states"]["FAIL"] == 1
        assert (out["best_trial"], out["best_value"], out["best_params"]) == (best.number, best.value, best.params)


        client = MlflowClient(f"sqlite:///{root}/mlflow.db")
        runs = client.search_runs([client.get_experiment_by_name(f"odt/{TASK}").experiment_id], max_results=200)
        by_trial = {int(r.data.tags["trial"]): r for r in runs if "trial" in r.data.tags}
        assert sorted(by_trial) == list(range(n))
        assert by_trial[4].info.status == "FAILED" and by_trial[4].data.tags["optuna.state"] == "FAIL"
        assert lost[0].user_attrs["odt.mlflow_run_id"] == by_trial[4].info.run_id

        pid = postmaster_pid(pgdata)
        run(rest[-1][1], False)  # pg_ctl stop
        assert pid == server_group and not alive(pid) and postmaster_pid(pgdata) is None
        server_group = None
    finally:
        for w in workers:
            if w.poll() is None:
                stop_group(w.pid, timeout=10)
        if server_group is not None:  # the recipe's pg_ctl stop did not run or did not finish
            stop_group(server_group, timeout=20, sig=signal.SIGINT)  # SIGINT: PostgreSQL's fast shutdown

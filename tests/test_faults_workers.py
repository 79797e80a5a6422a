"""No worker outlives its stage: SIGKILL of the stage alone, Ctrl-C, a rerun taking over, a second live run.

The finetune stage (tiny profile, 4 seeds, loky) must give the uninterrupted numbers after
each fault; the heartbeat itself is exercised on a dask cluster with a stand-in stage whose
jobs tick into files (tests/ticking_stage.py), so the test sees when a job last wrote.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from distributed import LocalCluster
from finetune_stage import FT_SEEDS as SEEDS
from finetune_stage import FT_TASK as TASK
from finetune_stage import finetune_results, stage_cmd, stage_inputs
from mlflow.tracking import MlflowClient

from pipeline import heartbeat, paths
from pipeline.tracking import Tracker

ROOT = Path(__file__).resolve().parents[1]


def start_finetune(root: Path, uri: str) -> subprocess.Popen:
    cmd = stage_cmd("finetune", root)

    # the store exists: MLflow's "creating tables" lines are not the stage's
    Tracker(root, uri).experiment(f"odt/{TASK}")
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "MLFLOW_TRACKING_URI": uri}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def mid_run(proc: subprocess.Popen, root: Path) -> tuple[Path, list[psutil.Process]]:
    """Hold the stage at a moment with a finished seed and one not finished: its work directory and its workers,
    stopped (SIGSTOP) so that the stage cannot finish before the test's signal lands; `resume` them after it."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        for work in (root / ".cache" / "work" / TASK).glob("finetune-*"):
            if list(work.glob("seed_*/result.json")):
                workers = psutil.Process(proc.pid).children(recursive=True)
                for w in workers:
                    w.suspend()
                if len(list(work.glob("seed_*/result.json"))) < SEEDS:
                    return work, workers
                resume(workers)
        time.sleep(0.02)
    raise AssertionError(f"no moment with a finished and an unfinished seed:\n{proc.communicate()[1]}")


def handling(proc: subprocess.Popen) -> None:
    """Wait until `python -m pipeline.<stage>` has run its first import, which blocks SIGINT and SIGTERM for the
    thread that waits for them (pipeline/interrupts.py): the kernel shows it in the process's signal mask."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{proc.pid}/status").read_text()
            blocked = int(next(line for line in status.splitlines() if line.startswith("SigBlk:")).split()[1], 16)
            if all(blocked >> (s - 1) & 1 for s in (signal.SIGINT, signal.SIGTERM)):
                return
        time.sleep(0.005)
    raise AssertionError("the stage never got to its first import")


def resume(workers: list[psutil.Process]) -> None:
    for w in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            w.resume()


def duplicate_steps(uri: str) -> list[tuple]:
    """(run name, metric, step) logged more than once in a sqlite store."""
    with contextlib.closing(sqlite3.connect(uri[len("sqlite:///"):])) as db:
        return db.execute("SELECT r.name, m.key, m.step FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
                          "GROUP BY m.run_uuid, m.key, m.step HAVING COUNT(*) > 1").fetchall()


def snapshot(work: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(work)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(work.rglob("*"))
        if p.is_file()
    }


def gone(procs: list[psutil.Process], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]:
            return True
        time.sleep(0.1)
    return False


def assert_resumes_to_the_uninterrupted_run(root: Path, uri: str, baseline: dict, work: Path | None,
                                           resumed: bool = True) -> None:
    """The rerun gives the uninterrupted numbers, continuing what was done (`resumed`: some seed had finished)."""
    rerun = subprocess.run(
        stage_cmd("finetune", root),
        cwd=ROOT,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert f"of {SEEDS} seeds to run" in rerun.stdout and (
        f"{SEEDS} of {SEEDS} seeds" not in rerun.stdout or not resumed
    )
    assert finetune_results(root) == baseline["results"]  # bit for bit
    for work in [work] if work else (root / ".cache" / "work" / TASK).glob("finetune-*"):
        assert not list(work.rglob(".*.tmp-*")) and not (work / "heartbeat.json").exists()
        assert not (work / "stage.lock").exists()

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(f"odt/{TASK}").experiment_id], max_results=100)
    # no duplicate
    assert sorted(r.data.tags.get("seed", "parent") for r in runs) == [*map(str, range(SEEDS)), "parent"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert duplicate_steps(uri) == []  # each (run, metric, step) once, across the interruption and the resume


@pytest.mark.slow
def test_sigkill_of_the_stage_alone_leaves_no_worker_and_the_rerun_gives_the_uninterrupted_numbers(pretrained, baseline,
                                                                                                    tmp_path):
    root, uri = stage_inputs(tmp_path / "repo", pretrained), f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = start_finetune(root, uri)
    work, workers = mid_run(proc, root)
    assert len([w for w in workers if "loky" in " ".join(w.cmdline())]) >= 2
    os.kill(proc.pid, signal.SIGKILL)  # the stage only, not its process group: its workers are orphaned
    resume(workers)
    proc.communicate()
    assert gone(workers, within=5), [w.cmdline() for w in workers if w.is_running()]
    before = snapshot(work)
    time.sleep(2)
    assert snapshot(work) == before  # nothing writes into the state the rerun will use
    assert not paths.run_dir(root, TASK, "finetune").exists()
    assert_resumes_to_the_uninterrupted_run(root, uri, baseline, work)


@pytest.mark.slow
@pytest.mark.parametrize("signum, code, how", [(signal.SIGINT, 130, "interrupted"),
                                               (signal.SIGTERM, 143, "stopped by SIGTERM")])
def test_ctrl_c_or_sigterm_is_one_line_no_worker_left_and_the_rerun_resumes(pretrained, baseline, tmp_path, signum,
                                                                             code, how):
    root, uri = stage_inputs(tmp_path / "repo", pretrained), f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = start_finetune(root, uri)
    work, workers = mid_run(proc, root)
    # as a terminal (SIGINT) or a scheduler (SIGTERM) does: the stage and its workers at once
    os.killpg(proc.pid, signum)
    resume(workers)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    assert err.splitlines() == [f"error: finetune {TASK} {how}; rerun to resume"]  # no traceback, no leak warning
    assert gone(workers, within=5)
    assert not paths.run_dir(root, TASK, "finetune").exists() and not (root / "runs" / TASK / "finetune.json").exists()

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(f"odt/{TASK}").experiment_id], max_results=100)
    done = {int(p.parent.name.split("_")[1]) for p in work.glob("seed_*/result.json")}
    for r in runs:  # stopped, not left RUNNING (a seed that finished may have been cut short while publishing its run)
        seed = r.data.tags.get("seed")
        assert r.info.status in (("FINISHED", "KILLED") if seed is not None and int(seed) in done else ("KILLED",)), \
            (seed, r.info.status)
    assert_resumes_to_the_uninterrupted_run(root, uri, baseline, work)


@pytest.mark.slow
def test_a_signal_at_any_moment_of_a_stage_ends_it_cleanly_and_the_rerun_resumes(pretrained, baseline, tmp_path):
    """SIGINT and SIGTERM at moments spread over a stage's life (imports, store and workers starting, seeds running
    and publishing, the stage's own publishing): one line and 128 + the signal, or, once the outputs are out, the
    end it would have had; no worker left, no run left RUNNING, and the rerun gives the uninterrupted numbers."""
    moments = [0.0, 0.5, 1.2, 2.5, 4.5]  # after the command's first import (before it, Python's own start)
    for i, delay in enumerate(moments):
        signum = (signal.SIGINT, signal.SIGTERM)[i % 2]
        root, uri = stage_inputs(tmp_path / f"repo{i}", pretrained), f"sqlite:///{tmp_path / f'mlflow{i}.db'}"
        proc = start_finetune(root, uri)
        handling(proc)
        time.sleep(delay)
        workers = []
        with contextlib.suppress(psutil.NoSuchProcess):
            workers = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signum)
        out, err = proc.communicate(timeout=60)
        if proc.returncode == 0:  # the stage had published: it ends as it would have
            assert err == "" and json.loads(out.splitlines()[-1])["seeds"] == SEEDS, (delay, err)
        else:
            how = "interrupted" if signum == signal.SIGINT else "stopped by SIGTERM"
            assert (proc.returncode, err.splitlines()) == (
                128 + signum,
                [f"error: finetune {TASK} {how}; rerun to resume"],
            ), (delay, err)
        assert gone(workers, within=5), delay

        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name(f"odt/{TASK}").experiment_id], max_results=100)
        assert not [r for r in runs if r.info.status == "RUNNING"], delay
        assert_resumes_to_the_uninterrupted_run(root, uri, baseline, None, resumed=False)



STORE_CALL_HIT_BY_SIGNALS = """
import os, signal, sqlite3, sys, time
from pathlib import Path
from pipeline import interrupts
interrupts.install()
interrupts.arm()
from pipeline.tracking import Tracker, _retry
db = Path(sys.argv[1])
tracker = Tracker(db.parent, f"sqlite:///{db}")
run = tracker.run(tracker.experiment("x"), "key", "run", {})

def store_call():
    for _ in range(2):  # Ctrl-C twice: the second changes nothing
        os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.5)  # the signal thread delivers both meanwhile
    tracker.client.set_tag(run, "reached", "yes")

try:
    _retry(store_call)
    print("not interrupted")
except interrupts.Interrupted as err:
    print("interrupted", err.signum, tracker.client.get_run(run).data.tags.get("reached"))
    con = sqlite3.connect(db, timeout=0)
    con.execute("BEGIN IMMEDIATE")  # nobody holds the database's lock
    con.rollback()
    print("unlocked")
"""


def test_a_signal_during_a_store_call_is_raised_when_the_call_returns(tmp_path):
    """A Ctrl-C that cut an MLflow call short could leave its sqlite transaction open, holding the database's lock: the
    stage's cleanup then waited on its own lock, 20 s per try, 8 tries (the any-moment test above hung that way)."""
    out = subprocess.run([sys.executable, "-c", STORE_CALL_HIT_BY_SIGNALS, str(tmp_path / "mlflow.db")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.splitlines() == [f"interrupted {int(signal.SIGINT)} yes", "unlocked"], out.stderr


def ticking_stage(root: Path, backend: str, address: str | None = None, ticks: int = 600,
                  go: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "TICKS": str(ticks), "GO": str(go or "")}
    return subprocess.Popen(
        [sys.executable, "-m", "ticking_stage", str(root), backend, *([address] if address else [])],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def ticks(root: Path) -> list[tuple[float, int]]:
    rows = [
        line.split() for f in sorted(root.glob("ticks-*.txt")) for line in f.read_text().splitlines() if line.strip()
    ]
    return sorted((float(t), int(pid)) for t, pid in rows)


def ticking(root: Path, proc: subprocess.Popen, n: int = 5) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (
            all(
                len(p.read_text().splitlines()) >= n for p in (root / "ticks-0.txt", root / "ticks-1.txt") if p.exists()
            )
            and len(list(root.glob("ticks-*.txt"))) == 2
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"the jobs never ticked:\n{proc.communicate()[1]}")


@pytest.mark.slow
def test_a_dask_job_ends_when_its_stage_is_killed_or_a_rerun_takes_over(tmp_path):
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        addr = cluster.scheduler_address
        # killed: the heartbeat stops, and after STALE_S the watchdogs end the cluster's worker processes
        root = tmp_path / "killed"
        root.mkdir()
        proc = ticking_stage(root, "dask", addr)
        ticking(root, proc)
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.time()
        proc.communicate()
        time.sleep(heartbeat.STALE_S + 3)
        seen = ticks(root)
        assert killed_at + heartbeat.STALE_S - 2 < seen[-1][0] < killed_at + heartbeat.STALE_S + 2  # ended by staleness
        assert not any(psutil.pid_exists(pid) for pid in {pid for _, pid in seen})  # the job's process itself ended
        time.sleep(1)
        assert ticks(root) == seen

        # taken over: a rerun writes its token, and the old jobs end before it dispatches its own
        root = tmp_path / "taken-over"
        root.mkdir()
        first = ticking_stage(root, "dask", addr)
        rerun = ticking_stage(root, "dask", addr, ticks=3, go=tmp_path / "go")  # imported, waiting
        ticking(root, first)
        os.kill(first.pid, signal.SIGKILL)
        killed_at = time.time()
        first.communicate()
        old = {pid for _, pid in ticks(root)}
        (tmp_path / "go").touch()
        out, err = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, err
        old_ticks = [t for t, pid in ticks(root) if pid in old]
        new_ticks = [t for t, pid in ticks(root) if pid not in old]
        assert len(new_ticks) == 6 and max(old_ticks) < min(new_ticks)  # never two writers at once
        assert max(old_ticks) < min(new_ticks) - heartbeat.POLL_S  # the rerun waited for them to go
        assert max(old_ticks) < killed_at + heartbeat.STALE_S - 1  # ended by the new token, before staleness would


@pytest.mark.slow
def test_a_second_live_run_of_a_stage_is_refused_with_one_line(tmp_path):
    first = ticking_stage(tmp_path, "loky")
    try:
        ticking(tmp_path, first)
        pid = json.loads(next(tmp_path.glob(".cache/work/tick/tick-*/heartbeat.json")).read_text())["pid"]
        started = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "ticking_stage", str(tmp_path), "loky"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"},
        )
        assert second.returncode == 1
        assert second.stderr.splitlines() == [
            f"error: tick tick: another run of this stage (pid {pid} on {heartbeat.HOST}) is working in "
            f"{next(tmp_path.glob('.cache/work/tick/tick-*'))}; wait for it to end, or stop it"]
        assert time.monotonic() - started < 30
        before = len(ticks(tmp_path))
        time.sleep(1)
        assert len(ticks(tmp_path)) > before and first.poll() is None  # the first run goes on, undisturbed
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate()


def test_of_two_checkouts_opening_runs_at_once_only_the_second_to_open_its_parent_says_it_shares(tmp_path, capsys):
    """The interleaving a loaded machine produced (CI's test below saw both checkouts say it): A opens its parent, B
    its parent (and says so), B its first child, then A that child, finding only B's."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    a, b = Tracker(tmp_path / "clone-a", uri), Tracker(tmp_path / "clone-b", uri)
    exp = a.experiment("odt/shared")
    parents = {t: t.run(exp, "finetune:fp", "finetune", {}) for t in (a, b)}
    said = capsys.readouterr().out
    assert said.count("holds runs of these settings from another checkout") == 1 and "clone-a" in said
    children = [t.run(exp, "finetune:fp:seed0", "seed 0", {}, parent=parents[t]) for t in (b, a)]
    assert "another checkout" not in capsys.readouterr().out  # A found B's child first: nothing more to say
    assert len(set(children)) == 2 and b.shared_with is not None and a.shared_with is None


@pytest.mark.slow
def test_two_checkouts_sharing_one_store_write_their_own_runs_and_artifacts_beside_the_store(pretrained, baseline,
                                                                                             tmp_path):
    store = tmp_path / "shared"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    roots = [stage_inputs(tmp_path / name, pretrained) for name in ("clone-a", "clone-b")]
    procs = [start_finetune(root, uri) for root in roots]  # the same experiment, the same settings, at once
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    assert all(finetune_results(root) == baseline["results"] for root in roots)
    said = [out for out, _ in outs if "holds runs of these settings from another checkout" in out]
    assert len(said) == 1  # the second to open its runs says that it writes its own

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(f"odt/{TASK}").experiment_id], max_results=100)
    for root in roots:  # each checkout: one parent and a run per seed, all finished, none written by the other
        mine = [r for r in runs if r.data.tags["odt.checkout"].endswith(f":{root.resolve()}")]
        assert sorted(r.data.tags.get("seed", "parent") for r in mine) == [*map(str, range(SEEDS)), "parent"]
        assert all(r.info.status == "FINISHED" for r in mine)
    assert len(runs) == 2 * (SEEDS + 1) and duplicate_steps(uri) == []
    for r in runs:  # artifacts where each run says, beside the shared store, not in either checkout
        where = Path(r.info.artifact_uri.removeprefix("file://"))
        assert where.is_relative_to(store / "mlartifacts"), where
        names = {p.name for p in where.rglob("*")}
        assert (
            ({"result.json", "curve.csv", "curve.png"} <= names)
            if "seed" in r.data.tags
            else ("finetune.json" in names)
        )
    assert not any((root / "mlartifacts").exists() for root in roots)

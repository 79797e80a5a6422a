"""The finetune stage: kill -9 and resume, a failing seed, dask vs loky, threads per worker.

Every test starts from the same pretrained checkpoint (tiny profile, one task, 4 seeds:
conftest's `pretrained`) and compares with one uninterrupted run on the default backend
(`baseline`), value for value.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import FT_SEEDS as SEEDS, FT_TASK as TASK, finetune_results as results, stage_inputs
from pipeline import finetune, parallel, paths
from pipeline.params import load_params

ROOT = Path(__file__).resolve().parents[1]


def finetune_work_dir(plan, params, root: Path) -> Path:
    from pipeline.caching import finetune_key, fingerprint
    from pipeline.params import phase_config

    cfg, _ = phase_config(plan, params, "finetune", root=root)
    key = finetune_key(plan, params, cfg, [paths.pretrained(root, TASK, s) for s in range(SEEDS)], root)
    return paths.work_root(root, TASK) / f"finetune-{fingerprint(key)}"


def work_dir(root: Path) -> Path:
    dirs = list((root / ".cache" / "work" / TASK).glob("finetune-*"))
    return dirs[0] if len(dirs) == 1 else None


@pytest.mark.slow
def test_kill_9_and_rerun_gives_the_uninterrupted_results_and_no_duplicate_runs(pretrained, baseline, tmp_path):
    root = stage_inputs(tmp_path / "repo", pretrained)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    cmd = [sys.executable, "-m", "pipeline.finetune", "--task", TASK, "--root", str(root),
           "--params", str(root / "params.yaml")]
    # its own process group: SIGKILL reaches the stage and its loky workers at once, as a power cut would
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    done = in_progress = []
    while time.monotonic() < deadline and proc.poll() is None:
        work = work_dir(root)
        if work is not None:
            done = sorted(work.glob("seed_*/result.json"))
            in_progress = [p for p in work.glob("seed_*/state.pt") if not (p.parent / "result.json").exists()]
            if done and in_progress:  # a seed finished and another one is mid-way: kill everything
                break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert done and in_progress, f"no moment with a finished and a running seed:\n{proc.stdout.read().decode()}"
    assert not paths.run_dir(root, TASK, "finetune").exists()  # published only when every seed is done
    left = SEEDS - len(list(work_dir(root).glob("seed_*/result.json")))
    assert left > 0

    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{left} of {SEEDS} seeds to run ({SEEDS - left} done before)" in rerun.stdout
    assert results(root) == baseline["results"]  # bit for bit: every float in result.json and curve.csv

    from mlflow.tracking import MlflowClient

    params, _ = load_params(root / "params.yaml")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(f"odt/{TASK}")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert sorted(r.data.tags.get("seed", "parent") for r in runs) == [*map(str, range(SEEDS)), "parent"]
    assert all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        if "seed" in run.data.tags:
            result = json.loads((work_dir(root) / f"seed_{run.data.tags['seed']}" / "result.json").read_text())
            per_round = params.tasks[TASK].finetune["updates_per_round"]
            start = result["num_updates"] - per_round * result["rounds"]  # the pretraining's updates
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "wall_time")]
            # a row per round (and the first, before any), each step once: none lost, none twice
            assert sorted(steps) == [start + per_round * r for r in range(result["rounds"] + 1)]


@pytest.mark.slow
def test_a_failing_seed_fails_the_stage_naming_it_and_keeps_the_others(pretrained, baseline, tmp_path, capsys):
    root = stage_inputs(tmp_path / "repo", pretrained)
    params, plans = load_params(root / "params.yaml")
    work = finetune_work_dir(plans[TASK], params, root)
    (work / "seed_2").mkdir(parents=True)
    (work / "seed_2" / "state.pt").write_bytes(b"not a checkpoint")  # seed 2 cannot resume
    args = ["--task", TASK, "--root", str(root), "--params", str(root / "params.yaml"), "--no-track"]
    assert finetune.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: finetune {TASK} seed 2 failed: CheckpointError: checkpoint ")
    assert err.endswith(f"({SEEDS - 1} other seeds finished and are kept for the rerun)")
    assert sorted(p.parent.name for p in work.glob("seed_*/result.json")) == ["seed_0", "seed_1", "seed_3"]
    assert not paths.run_dir(root, TASK, "finetune").exists()  # nothing half-published

    (work / "seed_2" / "state.pt").unlink()
    assert finetune.main(args) == 0
    assert f"1 of {SEEDS} seeds to run" in capsys.readouterr().out
    assert results(root) == baseline["results"]


@pytest.mark.slow
def test_dask_cluster_gives_the_numbers_of_the_default_backend_with_one_thread_per_seed(pretrained, baseline, tmp_path):
    from distributed import LocalCluster

    root = stage_inputs(tmp_path / "repo", pretrained)
    params, plans = load_params(root / "params.yaml")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        out = finetune.run_stage(plans[TASK], params, root=root, track=False, backend="dask",
                                 address=cluster.scheduler_address)
    assert results(root) == baseline["results"]
    workers = out["workers"]
    assert sorted(w["seed"] for w in workers) == list(range(SEEDS))
    assert all(w["threads"] == 1 for w in workers) and len({w["pid"] for w in workers}) <= 2
    assert os.getpid() not in {w["pid"] for w in workers}  # ran on the cluster's worker processes


def test_loky_workers_limit_torch_threads_to_the_cores(baseline):
    workers = baseline["workers"]  # as each worker process reported them from inside
    pids = {w["pid"] for w in workers}
    threads = {w["threads"] for w in workers}
    assert sorted(w["seed"] for w in workers) == list(range(SEEDS))
    assert threads == {1} and 1 <= len(pids) <= min(2, parallel.available_cores())  # n_jobs 2 in the tiny profile
    if parallel.available_cores() >= 2:  # on one core the seeds run in this process, one after another
        assert os.getpid() not in pids

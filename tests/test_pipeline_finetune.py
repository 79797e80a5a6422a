"""The finetune stage: kill -9 and resume, a failing seed, dask and ray clusters vs loky, threads per worker.

Every test starts from the same pretrained checkpoint (tiny profile, one task, 4 seeds:
conftest's `pretrained`) and compares with one uninterrupted run on the default backend
(`baseline`), value for value.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from finetune_stage import FT_SEEDS as SEEDS
from finetune_stage import FT_TASK as TASK
from finetune_stage import finetune_results as results
from finetune_stage import stage_inputs
from mlflow.tracking import MlflowClient
from services import BIN, README, Service, alive, commands, free_port, recipe, service_env, stop_group

from pipeline import finetune, jobs, parallel, paths
from pipeline.caching import finetune_key, fingerprint
from pipeline.params import load_params, phase_config

ROOT = Path(__file__).resolve().parents[1]


def finetune_work_dir(plan, params, root: Path) -> Path:
    cfg, _ = phase_config(plan, params, "finetune", root=root)
    key = finetune_key(plan, params, cfg, [paths.pretrained(root, TASK, s) for s in range(SEEDS)], root)
    return paths.work_root(root, TASK) / f"finetune-{fingerprint({**key, 'torch_threads': 1})}"  # as pipeline/seeds.py


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


def run_recipe_stage(root: Path, name: str, replace: dict[str, str], env: dict[str, str]) -> tuple[str, list[Service]]:
    """The README's cluster block `name`: background lines become services, the stage line runs here."""
    services, out = [], ""
    try:
        for kind, what, bg in commands(recipe(name), replace):
            if kind == "export":
                env[what[0]] = what[1]
            elif bg:  # a scheduler or worker: up before the next line runs
                service = Service(
                    what, log=root.parent / f"{Path(what[0]).name}-{len(services)}.log", env=env, cwd=root
                )
                services.append(service)
                if "scheduler" in what:
                    service.wait_port(int(replace["8786"]))
            else:
                proc = subprocess.run(what, cwd=root, env=env, capture_output=True, text=True, timeout=600)
                assert proc.returncode == 0, f"{' '.join(what)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
                out += proc.stdout + proc.stderr
    except BaseException:
        for service in services:
            service.stop()
        raise
    return out, services


def stage_ran_on_workers(root: Path, parallel_block: dict, backend: str) -> dict:
    """The MLflow parent run of the finetune stage (tagged with the backend it ran on)."""
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(f"odt/{TASK}").experiment_id], max_results=100)
    parent = [r for r in runs if "seed" not in r.data.tags]
    assert len(parent) == 1 and parent[0].data.tags["backend"] == backend
    assert (
        parent[0].data.tags["workers"] == str(parallel_block["n_jobs"])
        and parent[0].data.tags["threads_per_worker"] == "1"
    )
    assert sorted(int(r.data.tags["seed"]) for r in runs if "seed" in r.data.tags) == list(range(SEEDS))
    assert all(r.info.status == "FINISHED" for r in runs)
    return parent[0]


def set_parallel(root: Path, block: dict) -> None:
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["parallel"] = block
    (root / "params.yaml").write_text(yaml.safe_dump(raw))


@pytest.mark.slow
def test_dask_scheduler_and_workers_give_the_numbers_of_the_default_backend(pretrained, baseline, tmp_path):
    """The README's dask recipe: `dask scheduler` and `dask worker` as processes on 127.0.0.1, then the stage."""
    root = stage_inputs(tmp_path / "repo", pretrained)
    port = str(free_port())
    block = yaml.safe_load(recipe("dask-params").replace("8786", port))["parallel"]
    assert block["backend"] == "dask" and block["address"] == f"tcp://127.0.0.1:{port}"
    set_parallel(root, block)
    out, services = run_recipe_stage(root, "dask", {"8786": port, ".venv/bin/": f"{BIN}/"}, service_env())
    try:
        assert results(root) == baseline["results"]  # every float of every seed, as on loky
        stage_ran_on_workers(root, block, "dask")
        worker_log = services[1].output()
        # each seed printed its line in a dask worker process, none in the stage's own
        assert all(f"finetune {TASK} seed {s}:" in worker_log for s in range(SEEDS)), worker_log[-3000:]
        assert f"finetune {TASK} seed" not in out
        assert len(set(re.findall(r"Start worker at:\s+tcp://127\.0\.0\.1:\d+", worker_log))) == 2
    finally:
        for service in reversed(services):
            service.stop()
    assert not any(alive(s.pid) for s in services)


@pytest.mark.slow
def test_ray_head_gives_the_numbers_of_the_default_backend(pretrained, baseline, tmp_path):
    """The README's ray recipe: `ray start --head` on this machine (2 CPUs, a small object store), then the stage."""
    root = stage_inputs(tmp_path / "repo", pretrained)
    port = str(free_port())
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: ray's socket paths live under it
    block = {"backend": "ray", "n_jobs": 2, "address": f"127.0.0.1:{port}", "threads_per_worker": None}
    readme = recipe("ray")
    assert "`backend: ray`, `address: 127.0.0.1:6379` and `n_jobs: 2`" in README.read_text()
    set_parallel(root, block)
    env = service_env()
    steps = commands(readme, {"6379": port, "/tmp/ray-odt": str(temp), ".venv/bin/": f"{BIN}/"})
    head = None
    try:
        out = ""
        for kind, what, bg in steps:
            if kind == "export":
                env[what[0]] = what[1]
                continue
            # `ray start` returns once the head is up; its daemons stay in its process group, stopped below
            proc = subprocess.Popen(what, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, start_new_session=True)
            if what[1:3] == ["start", "--head"]:
                head = proc.pid
            text, _ = proc.communicate(timeout=600)
            assert proc.returncode == 0, f"{' '.join(what)} failed:\n{text[-5000:]}"
            out += text
        assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
        assert results(root) == baseline["results"]
        stage_ran_on_workers(root, block, "ray")
        logs = "".join(p.read_text(errors="replace") for p in temp.glob("session_*/logs/worker-*.out"))
        assert all(f"finetune {TASK} seed {s}:" in logs for s in range(SEEDS))  # printed in ray's worker processes
        assert re.search(r"Local node IP:?\s+127\.0\.0\.1", out), out[-3000:]  # every node address on loopback
    finally:
        if head is not None:
            assert stop_group(head, timeout=20) == []
        shutil.rmtree(temp, ignore_errors=True)


def test_loky_workers_limit_torch_threads_to_the_cores(baseline):
    workers = baseline["workers"]  # as each worker process reported them from inside
    pids = {w["pid"] for w in workers}
    threads = {w["threads"] for w in workers}
    assert sorted(w["seed"] for w in workers) == list(range(SEEDS))
    assert threads == {1} and 1 <= len(pids) <= min(2, parallel.available_cores())  # n_jobs 2 in the tiny profile
    if parallel.available_cores() >= 2:  # on one core the seeds run in this process, one after another
        assert os.getpid() not in pids


@pytest.mark.slow
def test_each_seed_sharing_the_machine_gives_the_numbers_it_gives_alone(pretrained, baseline, tmp_path):
    """The baseline ran 4 seeds on 2 loky workers (two at once, two one after the other in each
    process); seed 3 run alone here, in this process, gives the same numbers, bit for bit."""
    root = stage_inputs(tmp_path / "alone", pretrained)
    params, plans = load_params(root / "params.yaml")
    plan = plans[TASK]
    cfg, hparams = phase_config(plan, params, "finetune", root=root)
    seed_dir = tmp_path / "seed_3"
    seed_dir.mkdir()
    torch.set_num_threads(1)  # what a worker sets: parallel.threads_per_worker's default
    result = jobs.finetune(jobs.Setup("finetune", plan, cfg, params.device, root, hparams), 3, seed_dir, None)
    result = json.loads(json.dumps(result))  # as result.json holds it
    result.pop("wall_time")
    assert len({w["pid"] for w in baseline["workers"]}) >= min(2, parallel.available_cores())
    assert result == baseline["results"][3]["result"]
    assert (seed_dir / "curve.csv").read_text() == baseline["results"][3]["curve"]

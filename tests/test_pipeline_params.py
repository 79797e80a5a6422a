"""Profiles, params validation and tuned hyperparameters: fast, no training."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from odt.config import ConfigError
from pipeline import parallel, report
from pipeline.params import UNTUNED, load_params, parse_params, phase_config, plan_task
from pipeline.tuned import read_tuned, tuned_path
from pipeline.profile import profiles, render

ROOT = Path(__file__).resolve().parents[1]


def resolved(name: str, **kw) -> dict:
    return yaml.safe_load(render(name, root=ROOT, **kw))


@pytest.mark.parametrize("name", ["tiny", "quick", "cpu", "paper"])
def test_every_profile_resolves_and_validates(name):
    raw = resolved(name)
    params = parse_params(raw)
    assert params.profile == name and params.seeds == 10
    for task in params.tasks:
        plan = plan_task(params, task)
        assert plan.model.reward_scale == (1.0 if task.startswith("antmaze") else 0.001)  # the task's
        assert raw["tasks"][task]["tuned"] == {"pretrain": UNTUNED, "finetune": UNTUNED}


def test_paper_profile_has_the_papers_hyperparameters():
    params = parse_params(resolved("paper"))
    assert len(params.tasks) == 10
    plans = {t: plan_task(params, t) for t in params.tasks}
    hm, hmr = plans["hopper-medium-v2"], plans["hopper-medium-replay-v2"]
    assert (hm.model.n_layer, hm.model.n_head, hm.model.embed_dim, hm.model.context_len) == (4, 4, 512, 20)
    assert (hm.finetune.batch_size, hm.finetune.updates_per_round, hm.finetune.online_samples) == (256, 300, 200_000)
    assert (hm.finetune.warmup_steps, hm.finetune.grad_clip, hm.finetune.buffer_size) == (10_000, 0.25, 1000)
    assert (hm.pretrain.pretrain_updates, hm.finetune.g_online, hm.finetune.g_eval) == (5000, 7200, 3600)
    assert (hm.pretrain.eval_context_len, hm.finetune.eval_context_len) == (20, 5)  # Table C.2 vs C.4
    assert (hmr.finetune.learning_rate, hmr.finetune.weight_decay) == (0.002, 0.0001)
    walker = plans["walker2d-medium-v2"]
    assert (walker.pretrain.pretrain_updates, walker.pretrain.eval_context_len, walker.finetune.g_online) == (10_000, 1, 10_000)
    assert plans["ant-medium-v2"].finetune.eval_context_len == 1
    diverse = plans["antmaze-umaze-diverse-v2"]
    assert diverse.model.embed_dim == 1024 and diverse.model.use_positional_embedding
    assert (diverse.finetune.buffer_size, diverse.finetune.g_online, diverse.model.reward_scale) == (1500, 2, 1.0)
    assert not hm.model.use_positional_embedding and plans["antmaze-umaze-v2"].model.embed_dim == 512


def run_profile(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pipeline.profile", *args], cwd=cwd, capture_output=True, text=True)


def test_profile_cli_writes_params_and_rejects_unknown_names(tmp_path):
    out = tmp_path / "params.yaml"
    ok = run_profile("tiny", "--out", str(out), "--root", str(ROOT), cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert yaml.safe_load(out.read_text())["profile"] == "tiny"
    before = out.read_text()
    bad = run_profile("nope", "--out", str(out), "--root", str(ROOT), cwd=ROOT)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: unknown profile 'nope' (choose from:")
    assert len(bad.stderr.strip().splitlines()) == 1 and "tiny" in bad.stderr
    assert out.read_text() == before  # nothing written


def test_a_bad_value_is_one_line_naming_the_key(tmp_path):
    raw = resolved("tiny")
    raw["tasks"]["hopper-medium-v2"]["finetune"]["updates_per_round"] = 0
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"tasks.hopper-medium-v2.finetune.*updates_per_round = 0"):
        load_params(path)
    raw["tasks"]["hopper-medium-v2"]["finetune"]["updates_per_round"] = 5
    raw["tasks"]["hopper-medium-v2"]["pretrain"]["learning_rte"] = 1e-3
    path.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "pipeline.pretrain", "--task", "hopper-medium-v2", "--params", str(path),
                           "--root", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("error: ") and "unknown field 'learning_rte'" in proc.stderr
    assert not (tmp_path / "runs").exists()
    raw["tasks"]["hopper-medium-v2"]["pretrain"].pop("learning_rte")
    raw["use_tuned"] = True  # flipped by hand: the DVC dependencies would be stale
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"--use-tuned"):
        load_params(path)


def test_use_tuned_reads_the_tuning_result(tmp_path):
    raw = resolved("tiny", use_tuned=True)
    task = "hopper-medium-v2"
    assert raw["tasks"][task]["tuned"]["finetune"] == tuned_path(task, "finetune") == f"reports/tune/{task}-finetune.json"
    params = parse_params(raw)
    plan = plan_task(params, task)
    with pytest.raises(ConfigError, match="does not exist"):
        phase_config(plan, params, "pretrain", root=tmp_path)
    tune = tmp_path / "reports" / "tune"
    tune.mkdir(parents=True)
    (tune / f"{task}-pretrain.json").write_text(json.dumps({
        "task": task, "phase": "pretrain", "best_params": {"learning_rate": 0.0042, "weight_decay": 0.00031},
        "best_value": 12.5, "n_trials": 20, "study": "odt-tune"}))
    (tune / f"{task}-finetune.json").write_text(json.dumps({
        "task": task, "phase": "pretrain", "best_params": {"learning_rate": 0.1}, "best_value": 1.0, "n_trials": 3}))

    cfg, used = phase_config(plan, params, "pretrain", root=tmp_path)
    assert (cfg.learning_rate, cfg.weight_decay) == (0.0042, 0.00031)
    assert used == {"learning_rate": 0.0042, "weight_decay": 0.00031, "source": f"tuned (reports/tune/{task}-pretrain.json)"}
    with pytest.raises(ConfigError, match="is for hopper-medium-v2 pretrain, expected hopper-medium-v2 finetune"):
        phase_config(plan, params, "finetune", root=tmp_path)
    # explicit overrides (an Optuna trial) win over the tuned file
    cfg, used = phase_config(plan, params, "pretrain", {"learning_rate": 0.01}, root=tmp_path)
    assert (cfg.learning_rate, cfg.weight_decay, used["source"]) == (0.01, 0.00031, "overrides")
    assert read_tuned(tune / f"{task}-pretrain.json", task, "pretrain") == {"learning_rate": 0.0042, "weight_decay": 0.00031}


def test_use_tuned_reaches_the_optimizer(tmp_path, hopper_random_hdf5):
    raw = resolved("tiny", use_tuned=True)
    task = "hopper-medium-v2"
    params = parse_params(raw)
    (tmp_path / "reports" / "tune").mkdir(parents=True)
    (tmp_path / "reports" / "tune" / f"{task}-pretrain.json").write_text(json.dumps({
        "task": task, "phase": "pretrain", "best_params": {"learning_rate": 0.0042, "weight_decay": 0.00031},
        "best_value": 1.0, "n_trials": 2}))
    from odt.datasets.hdf5 import load_d4rl_hdf5
    from odt.replay import TrajectoryReplayBuffer
    from odt.trainer import ODTTrainer

    plan = plan_task(params, task)
    cfg, _ = phase_config(plan, params, "pretrain", root=tmp_path)
    data = load_d4rl_hdf5(hopper_random_hdf5)
    trainer = ODTTrainer(plan.model, cfg, TrajectoryReplayBuffer(len(data), data), device="cpu")
    assert trainer.scheduler.base_lrs == [0.0042, 0.0042]
    assert trainer.optimizer.param_groups[0]["weight_decay"] == 0.00031


def test_report_states_the_hyperparameters_used():
    params = parse_params(resolved("tiny"))
    row = dict(task="hopper-medium-v2", seeds=10, online_samples=150, offline_mean=2.0, offline_std=0.1, online_mean=3.0,
               online_std=0.2, delta=1.0, paper_offline=66.95, paper_offline_std=3.26, paper_online=97.54,
               paper_online_std=2.1, paper_delta=30.59, pretrain_lr=0.0042, pretrain_wd=0.00031,
               pretrain_hparams="tuned (reports/tune/hopper-medium-v2-pretrain.json)", finetune_lr=0.001,
               finetune_wd=0.0001, finetune_hparams="params")
    md = report.markdown(pd.DataFrame([row]), params)
    assert "| hopper-medium-v2 | 10 | 150 | 2.00 ± 0.10 | 3.00 ± 0.20 | +1.00 | 66.95 ± 3.26 | 97.54 ± 2.10 | 30.59 |" in md
    assert "| hopper-medium-v2 | 0.0042 | 0.00031 | tuned (reports/tune/hopper-medium-v2-pretrain.json) | 0.001 | 0.0001 | params |" in md
    paper = report.load_paper()
    assert report.paper_name("hopper-medium-replay-v2") == "hopper-medium-replay"
    assert paper.loc["hopper-medium", "odt_online"] == 97.54 and len(paper) == 10


def test_workers_times_threads_never_exceeds_cores(monkeypatch):
    monkeypatch.setattr(parallel, "available_cores", lambda: 4)
    assert parallel.plan_workers(2, 10, "loky", None) == (2, 1)  # one thread per seed unless asked
    assert parallel.plan_workers(2, 10, "loky", 2) == (2, 2)
    assert parallel.plan_workers(8, 10, "loky", None) == (4, 1)
    assert parallel.plan_workers(2, 10, "loky", 4) == (2, 2)  # asked for too many threads: capped
    assert parallel.plan_workers(8, 10, "loky", 4) == (4, 1)
    assert parallel.plan_workers(4, 1, "loky", None) == (1, 1)
    assert parallel.plan_workers(16, 10, "dask", None) == (16, 1)
    for n_jobs in range(1, 9):
        for threads in (None, 1, 2, 3, 8):
            workers, t = parallel.plan_workers(n_jobs, 10, "loky", threads)
            assert workers * t <= 4 and workers >= 1 and t >= 1


class _Stop(Exception):
    pass


def test_pretraining_runs_with_pretrain_threads_and_gives_the_caller_its_own_back(tmp_path, hopper_random_hdf5, monkeypatch):
    import shutil

    import torch

    import odt.loops
    from pipeline import caching, paths, pretrain

    task = "hopper-medium-v2"
    (tmp_path / "data" / task).mkdir(parents=True)
    shutil.copy(hopper_random_hdf5, paths.dataset(tmp_path, task))
    seen = []

    def loop(*args, **kwargs):  # records the threads pretraining would run with, then stops
        seen.append(torch.get_num_threads())
        raise _Stop

    monkeypatch.setattr(odt.loops, "pretrain", loop)
    keys = []
    for threads in (None, 2):  # the default, then an override
        raw = resolved("tiny")
        if threads is not None:
            raw["parallel"]["pretrain_threads"] = threads
        params = parse_params(raw)
        plan = plan_task(params, task)
        cfg, _ = phase_config(plan, params, "pretrain", root=tmp_path)
        torch.set_num_threads(3)
        with pytest.raises(_Stop):
            pretrain.pretrain(plan, params, cfg, tmp_path / "work", root=tmp_path)
        assert torch.get_num_threads() == 3
        keys.append(caching.fingerprint(caching.pretrain_key(plan, params, cfg, paths.dataset(tmp_path, task))))
    assert seen == [1, 2]
    assert keys[0] != keys[1]  # the thread count changes CPU results: another work directory

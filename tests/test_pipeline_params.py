"""Profiles, params validation and tuned hyperparameters: fast, no training."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from odt import comparison
from odt.comparison import baseline_tasks, sac_task
from odt.config import ConfigError
from odt.datasets.hdf5 import load_d4rl_hdf5
from odt.replay import TrajectoryReplayBuffer
from odt.trainer import ODTTrainer
from pipeline import parallel, report
from pipeline.params import UNTUNED, load_params, parse_params, phase_config, plan_task, read_tuned, tuned_path
from pipeline.profile import render

ROOT = Path(__file__).resolve().parents[1]


def resolved(name: str, **kw) -> dict:
    return yaml.safe_load(render(name, root=ROOT, **kw))


@pytest.mark.parametrize("name", ["tiny", "quick", "cpu", "paper", "paper-generated"])
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
    assert (walker.pretrain.pretrain_updates, walker.pretrain.eval_context_len, walker.finetune.g_online) == (
        10_000,
        1,
        10_000,
    )
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
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.pretrain",
            "--task",
            "hopper-medium-v2",
            "--params",
            str(path),
            "--root",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
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
    assert (
        raw["tasks"][task]["tuned"]["finetune"] == tuned_path(task, "finetune") == f"reports/tune/{task}-finetune.json"
    )
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
    assert used == {
        "learning_rate": 0.0042,
        "weight_decay": 0.00031,
        "source": f"tuned (reports/tune/{task}-pretrain.json)",
    }
    with pytest.raises(ConfigError, match="is for hopper-medium-v2 pretrain, expected hopper-medium-v2 finetune"):
        phase_config(plan, params, "finetune", root=tmp_path)
    # explicit overrides (an Optuna trial) win over the tuned file
    cfg, used = phase_config(plan, params, "pretrain", {"learning_rate": 0.01}, root=tmp_path)
    assert (cfg.learning_rate, cfg.weight_decay, used["source"]) == (0.01, 0.00031, "overrides")
    assert read_tuned(tune / f"{task}-pretrain.json", task, "pretrain") == {
        "learning_rate": 0.0042,
        "weight_decay": 0.00031,
    }


def test_use_tuned_reaches_the_optimizer(tmp_path, hopper_random_hdf5):
    raw = resolved("tiny", use_tuned=True)
    task = "hopper-medium-v2"
    params = parse_params(raw)
    (tmp_path / "reports" / "tune").mkdir(parents=True)
    (tmp_path / "reports" / "tune" / f"{task}-pretrain.json").write_text(json.dumps({
        "task": task, "phase": "pretrain", "best_params": {"learning_rate": 0.0042, "weight_decay": 0.00031},
        "best_value": 1.0, "n_trials": 2}))

    plan = plan_task(params, task)
    cfg, _ = phase_config(plan, params, "pretrain", root=tmp_path)
    data = load_d4rl_hdf5(hopper_random_hdf5)
    trainer = ODTTrainer(plan.model, cfg, TrajectoryReplayBuffer(len(data), data), device="cpu")
    assert trainer.scheduler.base_lrs == [0.0042, 0.0042]
    assert trainer.optimizer.param_groups[0]["weight_decay"] == 0.00031


def test_the_table_states_every_column_the_papers_value_and_the_pattern():
    params = parse_params(resolved("tiny"))
    row = dict(
        task="hopper-medium-v2",
        seeds=10,
        online_samples=150,
        pretrain_best_mean=2.5,
        sac_from="hopper-medium-v2",
        pretrain_lr=0.0042,
        pretrain_wd=0.00031,
        pretrain_hparams="tuned (reports/tune/hopper-medium-v2-pretrain.json)",
        finetune_lr=0.001,
        finetune_wd=0.0001,
        finetune_hparams="params",
    )
    ours = {"dt": (1.5, 0.1), "odt_offline": (2.0, 0.1), "odt_online": (3.0, 0.2), "iql_offline": (2.2, 0.3),
            "iql_online": (2.4, 0.3), "sac_online": (3.5, 1.0)}
    paper = comparison.load_paper()["hopper-medium"]
    for col, (mean, std) in ours.items():
        row |= {
            f"{col}_mean": mean,
            f"{col}_std": std,
            f"paper_{col}": paper[col],
            f"paper_{col}_std": paper[f"{col}_std"],
        }
    row |= {"odt_delta_mean": 1.0, "iql_delta_mean": 0.2, "paper_odt_delta": 30.59, "paper_iql_delta": 2.98}
    md = comparison.markdown([row], setting=f"Profile `{params.profile}`", seeds=params.seeds,
                             notes=report.notes(params.profile))
    assert md.startswith("# Table 5.1") and "Profile `tiny`. Normalized return" in md and md.endswith(".csv`).\n")
    assert "not comparable with the paper's" in md and "not comparable" not in "".join(report.notes("paper"))
    assert ("| hopper-medium-v2 | 150 | 1.5 ± 0.1 (61.0 ± 5.1) | 2.0 ± 0.1 (67.0 ± 3.3) | 3.0 ± 0.2 (97.5 ± 2.1) "
            "| 1.0 (30.6) | 2.2 ± 0.3 (63.8 ± 9.2) | 2.4 ± 0.3 (66.8 ± 4.1) | 0.2 (3.0) | 3.5 ± 1.0 (66.8 ± 27.1) "
            "| δ ODT > δ IQL; ODT not above SAC |") in md
    assert (
        "| hopper-medium-v2 | 0.0042 | 0.00031 | tuned (reports/tune/hopper-medium-v2-pretrain.json) "
        "| 0.001 | 0.0001 | params |"
        in md
    )
    assert "| hopper-medium-v2 | 2.00 | 2.50 |" in md  # the final pretrained score beside the best on the way
    assert comparison.paper_name("hopper-medium-replay-v2") == "hopper-medium-replay"
    assert comparison.load_paper()["hopper-medium"]["odt_online"] == 97.54 and len(comparison.load_paper()) == 10


def test_sac_runs_once_per_environment_and_every_shipped_profile_runs_every_baseline():
    tasks = ["hopper-medium-replay-v2", "hopper-medium-v2", "walker2d-medium-replay-v2", "antmaze-umaze-v2"]
    assert baseline_tasks("sac", tasks) == ["hopper-medium-v2", "walker2d-medium-replay-v2"]  # medium first; no AntMaze
    assert baseline_tasks("iql", tasks) == tasks
    assert sac_task("hopper-medium-replay-v2", ["hopper-medium-v2"]) == "hopper-medium-v2"
    assert sac_task("walker2d-medium-v2", ["hopper-medium-v2"]) is None
    for name in ("tiny", "quick", "cpu", "paper", "paper-generated"):
        params = parse_params(resolved(name))
        assert set(params.baselines) == {"dt", "iql", "sac"}
        plan = plan_task(params, params.baselines["iql"][0])
        assert plan.iql.online_samples == plan.finetune.online_samples == plan.sac.online_samples  # the same budget
        assert plan.iql.eval_episodes == plan.finetune.eval_episodes and not plan.dt_model.stochastic


def test_the_paper_profile_has_the_baselines_published_settings():
    params = parse_params(resolved("paper"))
    plans = {t: plan_task(params, t) for t in params.tasks}
    hm = plans["hopper-medium-v2"]
    m, d = hm.dt_model, hm.dt
    assert (m.context_len, m.embed_dim, m.n_layer, m.n_head, m.dropout, m.use_positional_embedding) == (
        20,
        128,
        3,
        1,
        0.1,
        True,
    )
    assert (d.optimizer, d.learning_rate, d.weight_decay, d.warmup_steps, d.batch_size, d.pretrain_updates) == (
        "adamw", 1e-4, 1e-4, 10_000, 64, 100_000)
    i = hm.iql
    assert (i.expectile, i.temperature, i.discount, i.tau, i.offline_updates, i.hidden_dim) == (
        0.7,
        3.0,
        0.99,
        0.005,
        1_000_000,
        256,
    )
    assert (plans["antmaze-umaze-v2"].iql.expectile, plans["antmaze-umaze-v2"].iql.temperature) == (0.9, 10.0)
    assert plans["antmaze-umaze-v2"].iql.buffer_size == 2_000_000
    s = hm.sac
    assert (s.hidden_dim, s.learning_rate, s.batch_size, s.random_steps, s.online_samples) == (
        256,
        3e-4,
        256,
        10_000,
        200_000,
    )
    assert params.baselines["sac"] == [
        "hopper-medium-v2",
        "walker2d-medium-v2",
        "halfcheetah-medium-v2",
        "ant-medium-v2",
    ]
    assert plans["walker2d-medium-v2"].dt.g_eval == 5000 and plans["antmaze-umaze-v2"].dt_model.max_ep_len == 700


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


def test_paper_generated_is_the_paper_profile_on_generated_locomotion_data():
    paper, generated = resolved("paper"), resolved("paper-generated")
    locomotion = [t for t in paper["tasks"] if not t.startswith("antmaze")]
    assert list(generated["tasks"]) == locomotion and len(locomotion) == 8
    for task in locomotion:
        ours, theirs = generated["tasks"][task], paper["tasks"][task]
        assert ours["fetch"] == {"source": "generate", "seed": 0} and theirs["fetch"]["source"] == "d4rl"
        assert {k: v for k, v in ours.items() if k != "fetch"} == {k: v for k, v in theirs.items() if k != "fetch"}
    assert {k: v for k, v in generated.items() if k not in ("tasks", "profile", "baselines")} == \
        {k: v for k, v in paper.items() if k not in ("tasks", "profile", "baselines")}


def test_a_profile_extending_an_unknown_or_itself_is_one_line(tmp_path):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "a.yaml").write_text("extends: nope\ntasks: [hopper-medium-v2]\n")
    (tmp_path / "profiles" / "b.yaml").write_text("extends: c\n")
    (tmp_path / "profiles" / "c.yaml").write_text("extends: b\n")
    with pytest.raises(
        ConfigError, match=r"^profiles/a.yaml: extends: unknown profile 'nope' \(choose from: a, b, c\)$"
    ):
        render("a", root=tmp_path)
    with pytest.raises(ConfigError, match="a cycle"):
        render("b", root=tmp_path)


def test_experiments_resolve_each_variant_and_a_bad_one_is_one_line(tmp_path):
    params = parse_params(resolved("paper"))
    assert set(params.experiments) >= {"fig4-1", "fig4-2", "fig5-1", "fig5-2", "fig5-3", "fig5-4", "figA-1",
                                       "figB-1", "figB-2", "figD-1", "figF-1", "figG-1"}
    fig51 = {v: plan_task(params, "hopper-medium-v2", ("fig5-1", v)) for v in params.experiments["fig5-1"].variants}
    assert [p.model.stochastic for p in fig51.values()] == [True, False, True, False]
    assert fig51["stochastic-large"] == plan_task(params, "hopper-medium-v2")  # no overrides: the task itself
    expert = {t: plan_task(params, t, ("figD-1", "expert")).finetune.g_online
              for t in params.experiments["figD-1"].tasks}
    assert expert["walker2d-medium-v2"] == 5000 and expert["hopper-medium-v2"] == 3600  # per task: the expert return
    assert plan_task(params, "walker2d-medium-v2", ("figG-1", "lambda=100")).pretrain.init_temperature == 100
    # lambda and the warmup continue into finetuning (the authors' code), as the paper profile says
    hm = plan_task(params, "hopper-medium-v2").finetune
    assert hm.init_temperature is None and not hm.restart_warmup
    raw = resolved("tiny")
    path = tmp_path / "params.yaml"
    for change, message in [
        (lambda r: r["experiments"]["fig5-4"]["variants"]["no-relabel"]["finetune"].update(hindsight_relabl=False),
         r"experiments.fig5-4.variants.no-relabel.finetune: unknown field 'hindsight_relabl'"),
        (lambda r: r["experiments"]["fig5-4"]["variants"]["no-relabel"].update(dt={}), r"unknown field"),
        (lambda r: r["experiments"].update({"fig5.4": r["experiments"].pop("fig5-4")}), r"'fig5.4' is not a usable"),
        (lambda r: r["experiments"]["fig5-4"].update(tasks=["walker2d-medium-v2"]), r"not in tasks"),
        (lambda r: r["experiments"]["fig4-2"].update(g_eval=[]), r"kind g_eval needs g_eval"),
    ]:
        bad = yaml.safe_load(yaml.safe_dump(raw))
        change(bad)
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(ConfigError, match=message) as err:
            load_params(path)
        assert "\n" not in str(err.value)

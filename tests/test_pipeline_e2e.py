"""The product end to end: real `dvc repro` of the tiny profile in a copy of the repository.

fetch -> pretrain -> finetune, dt, iql, sac (10 seeds each) -> report for two tasks, a real
MLflow sqlite store and a small study; then a second `dvc repro` that must do nothing, and a
changed finetuning parameter that must re-run that task's finetuning and the report only. The
paper's other experiments (every one, 2 seeds, on the replay task) run in the same `dvc repro`:
each variant its own runs, and a changed variant re-runs alone.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from browser import check_all
from mlflow.tracking import MlflowClient
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["hopper-medium-v2", "hopper-medium-replay-v2"]
SEEDS = 10
TUNE_TRIALS = 3
EXPERIMENTS = ["fig4-1", "fig4-2", "fig5-1", "fig5-2", "fig5-3", "fig5-4", "figA-1", "figB-1", "figB-2", "figD-1",
               "figF-1", "figG-1"]  # the tiny profile's: every experiment of the paper
EXPERIMENT_STAGES = {f"experiment@{e}" for e in EXPERIMENTS}
# what a fresh clone has, plus work in progress; not the outputs of an earlier run here
SKIP = re.compile(r"^(dvc\.lock|params\.yaml|reports/|mlflow\.db|mlruns/|mlartifacts/)")


def copy_worktree(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in files:
        src = ROOT / name
        if name and not SKIP.match(name) and src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)


def pipeline_env(tracking_uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_", "PYTHONPATH"))}
    env |= {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
            "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return env


def sh(*cmd: str, cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout + proc.stderr


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def is_png(path: Path) -> bool:
    if path.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        return False
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        return img.format == "PNG" and min(img.size) >= 100


@pytest.fixture(scope="module")
def repro(tmp_path_factory, hopper_random_hdf5) -> dict:
    """The tiny profile's first `dvc repro` in a copy of the repository, then a 3-trial pretrain study."""
    tmp_path = tmp_path_factory.mktemp("e2e")
    repo = tmp_path / "repo"
    copy_worktree(repo)
    (repo / ".cache" / "tiny").mkdir(parents=True)
    shutil.copy(hopper_random_hdf5, repo / ".cache" / "tiny" / "hopper-random.hdf5")  # the tiny profile's source file
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = pipeline_env(uri)
    dvc = str(Path(sys.executable).parent / "dvc")
    sh("git", "init", "-q", cwd=repo, env=env)
    if not (repo / ".dvc").is_dir():
        sh(dvc, "init", "-q", cwd=repo, env=env)
    sh(dvc, "config", "core.analytics", "false", cwd=repo, env=env)
    sh(sys.executable, "-m", "pipeline.profile", "tiny", cwd=repo, env=env)
    sh("git", "add", "-A", cwd=repo, env=env)
    sh("git", "commit", "-qm", "tiny", cwd=repo, env=env)
    commit = sh("git", "rev-parse", "HEAD", cwd=repo, env=env).strip()
    out = sh(dvc, "repro", cwd=repo, env=env)
    # a study in the default storage (sqlite:///optuna.db), tracked in MLflow like the stages
    sh(sys.executable, "-m", "pipeline.tune", "--task", TASKS[0], "--phase", "pretrain", "--n-trials", str(TUNE_TRIALS),
       cwd=repo, env=env)
    return {"tmp": tmp_path, "repo": repo, "uri": uri, "env": env, "dvc": dvc, "commit": commit, "out": out}


@pytest.mark.slow
def test_dashboards_show_the_runs_the_study_and_the_curves_in_a_browser(repro, tmp_path):
    """`mlflow ui`, `optuna-dashboard` and `dvc plots show` served on 127.0.0.1, each page rendered in Chromium."""
    found = check_all(repro["repo"], repro["uri"], TASKS, [f"{TASKS[0]}-pretrain"], tmp_path / "logs",
                      shots=tmp_path / "shots")
    assert {t: f["seeds"] for t, f in found.items()} == {t: SEEDS for t in TASKS}
    for name in ("mlflow-experiments", "mlflow-runs", "optuna-dashboard", "dvc-plots"):
        assert is_png(tmp_path / "shots" / f"{name}.png")


@pytest.mark.slow
def test_dvc_repro_runs_the_pipeline_and_reruns_only_what_changed(repro):
    repo, uri, env, dvc, commit, out = (repro[k] for k in ("repo", "uri", "env", "dvc", "commit", "out"))
    per_task = {f"{s}@{t}" for s in ("fetch", "pretrain", "finetune", "dt", "iql") for t in TASKS}
    # SAC once per environment
    assert stages_run(out) == per_task | {"params", f"sac@{TASKS[0]}", "report", "claims"} | EXPERIMENT_STAGES
    assert (repo / "dvc.lock").is_file()

    # the table: all eight columns of Table 5.1 for every task, each over 10 seeds, the paper's beside ours
    table = pd.read_csv(repo / "reports" / "results.csv").set_index("task")
    assert list(table.index) == TASKS and (table["seeds"] == SEEDS).all()
    paper = pd.read_csv(ROOT / "odt" / "paper_table_5_1.csv").set_index("dataset")
    stage_of = {"dt": ("dt", "offline"), "odt_offline": ("finetune", "offline"), "odt_online": ("finetune", "online"),
                "iql_offline": ("iql", "offline"), "iql_online": ("iql", "online"), "sac_online": ("sac", "online")}
    pretrained = {}
    for task in TASKS:
        row, ref = table.loc[task], paper.loc[task.removesuffix("-v2")]
        for column, (stage, phase) in stage_of.items():
            source = TASKS[0] if stage == "sac" else task  # SAC ran on the medium task of the environment
            results = [
                json.loads(p.read_text()) for p in sorted((repo / "runs" / source / stage).glob("seed_*/result.json"))
            ]
            assert sorted(r["seed"] for r in results) == list(range(SEEDS)), (task, stage)
            values = np.array([r[f"{phase}_normalized"] for r in results])
            assert row[f"{column}_mean"] == pytest.approx(values.mean(), abs=1e-4), (task, column)
            assert row[f"{column}_std"] == pytest.approx(values.std(), abs=1e-4), (task, column)
            assert values.std() > 0, (task, column)  # ten independent runs, not one run ten times
            assert row[f"paper_{column}"] == pytest.approx(ref[column], nan_ok=True), (task, column)  # NaN: none
            if stage == "finetune" and phase == "offline":
                pretrained[task] = values
        for column, (on, off) in {
            "odt_delta": ("odt_online", "odt_offline"),
            "iql_delta": ("iql_online", "iql_offline"),
        }.items():
            assert row[f"{column}_mean"] == pytest.approx(row[f"{on}_mean"] - row[f"{off}_mean"], abs=2e-4)  # rounded
        # seed k finetunes pretraining seed k's checkpoint: its offline score is that run's final evaluation
        pre = [
            json.loads((repo / "runs" / task / "pretrain" / f"seed_{k}" / "result.json").read_text())
            for k in range(SEEDS)
        ]
        assert [p["offline_normalized"] for p in pre] == pytest.approx(list(pretrained[task]))
        finetuned = [json.loads((repo / "runs" / task / "finetune" / f"seed_{k}" / "result.json").read_text())
                     for k in range(SEEDS)]
        assert all(r["online_samples"] >= 150 for r in finetuned)  # the tiny profile's budget
        for png in (f"{task}.png", f"{task}-pretrain.png"):
            assert is_png(repo / "reports" / "plots" / png)
        curve = pd.read_csv(repo / "reports" / "curves" / f"{task}.csv")
        assert curve["online_samples"].iloc[0] == 0 and curve["online_samples"].iloc[-1] == 150
        assert curve[["odt", "iql", "sac"]].notna().all().all()  # every algorithm's curve, SAC's shared by the env
        assert np.allclose(curve["odt_upper"] - curve["odt_lower"], 2 * (curve["odt_upper"] - curve["odt"]))
        pre_curve = pd.read_csv(repo / "reports" / "pretrain_curves" / f"{task}.csv")
        # tiny: evaluated at the end only
        assert list(pre_curve["updates"]) == [20] and pre_curve["seed_9"].notna().all()
    md = (repo / "reports" / "results.md").read_text()
    assert all(f"| {t} | 150 |" in md for t in TASKS) and "δ ODT" in md and "SAC online" in md

    metrics = json.loads(sh(dvc, "metrics", "show", "--json", cwd=repo, env=env))
    shown = metrics[""]["data"]["reports/metrics.json"]["data"]
    assert set(shown) == set(TASKS) and shown[TASKS[0]]["paper_odt_online"] == 97.54
    assert {f"{c}_mean" for c in stage_of} | {"odt_delta_mean", "iql_delta_mean"} <= set(shown[TASKS[0]])
    plots = json.loads(sh(dvc, "plots", "show", "--json", cwd=repo, env=env))
    assert not plots.get("errors"), plots.get("errors")
    plots = plots["data"]
    assert {f"reports/plots/{t}.png" for t in TASKS} <= set(plots)
    for name in ("curves", "pretrain_curves"):
        found = [k for k in plots if k.endswith(f"reports/{name}/{TASKS[0]}.csv")]
        assert found and plots[found[0]][0]["type"] == "vega"

    # MLflow: one experiment per task, a parent run per stage, a child run per seed, tagged and with metrics

    client = MlflowClient(uri)

    def runs(name: str):
        exp = client.get_experiment_by_name(name)
        assert exp is not None, f"no MLflow experiment {name}"
        return client.search_runs([exp.experiment_id], max_results=1000)

    for task in TASKS:
        by_stage = {}
        for r in runs(f"odt/{task}"):
            if "experiment" in r.data.tags:  # the paper's other experiments: test_experiments_...
                continue
            by_stage.setdefault(r.data.tags["dvc_stage"], []).append(r)
            pruned = r.data.tags.get("optuna.state") == "PRUNED"  # a pruned trial's run ends KILLED
            assert r.info.status == ("KILLED" if pruned else "FINISHED")
            assert (r.data.tags["profile"], r.data.tags["task"], r.data.tags["git_commit"]) == ("tiny", task, commit)
        stages = ["pretrain", "finetune", "dt", "iql"] + (["sac"] if task == TASKS[0] else [])
        tuned = {f"tune-pretrain@{task}": 1 + TUNE_TRIALS} if task == TASKS[0] else {}
        assert {k: len(v) for k, v in by_stage.items()} == {**{f"{s}@{task}": 1 + SEEDS for s in stages}, **tuned}
        for stage in stages:
            parent = [r for r in by_stage[f"{stage}@{task}"] if "seed" not in r.data.tags]
            children = [r for r in by_stage[f"{stage}@{task}"] if "seed" in r.data.tags]
            assert len(parent) == 1 and sorted(int(r.data.tags["seed"]) for r in children) == list(range(SEEDS))
            assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent[0].info.run_id}
            assert {r.data.tags["algorithm"] for r in by_stage[f"{stage}@{task}"]} == {stage}
            for child in children:
                assert child.data.params["seed"] == child.data.tags["seed"]
                assert "wall_time" in child.data.metrics
                assert "result.json" in {a.path for a in client.list_artifacts(child.info.run_id)}
        pre = [r for r in by_stage[f"pretrain@{task}"] if "seed" in r.data.tags][0]
        assert {"loss", "nll", "entropy", "temperature", "offline_normalized"} <= set(pre.data.metrics)
        assert pre.data.params["train.pretrain_updates"] == "20"
        ft_parent = [r for r in by_stage[f"finetune@{task}"] if "seed" not in r.data.tags][0]
        assert ft_parent.data.metrics["online_mean"] == pytest.approx(table.loc[task, "odt_online_mean"], abs=1e-4)
        for child in [r for r in by_stage[f"finetune@{task}"] if "seed" in r.data.tags]:
            assert {"loss", "entropy", "temperature", "eval_normalized", "online_samples",
                    "offline_normalized", "online_normalized"} <= set(child.data.metrics)
            history = client.get_metric_history(child.info.run_id, "eval_normalized")
            assert len(history) >= 2 and len({m.step for m in history}) == len(history)  # batched, none twice
            assert {"curve.csv", "curve.png", "policy.pt", "result.json"} <= {
                a.path for a in client.list_artifacts(child.info.run_id)
            }
    assert len(runs("odt/report")) == 1

    # nothing changed: nothing runs, no new MLflow runs
    counts = {t: len(runs(f"odt/{t}")) for t in TASKS}
    out = sh(dvc, "repro", cwd=repo, env=env)
    assert stages_run(out) == set(), out
    assert {t: len(runs(f"odt/{t}")) for t in TASKS} == counts

    # a finetuning parameter of one task: that task's finetuning and the report, nothing else
    params_path = repo / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["tasks"][TASKS[0]]["finetune"]["updates_per_round"] = 4
    old_summary = (repo / "runs" / TASKS[0] / "finetune.json").read_bytes()
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh(dvc, "repro", cwd=repo, env=env)
    # the check, then what the key touches; the experiments read every task's blocks, so DVC re-runs them, but
    # theirs (on the other task) did not change: each finds every seed done and publishes the same files again,
    # so the claims are not redone
    assert stages_run(out) == {"params", f"finetune@{TASKS[0]}", "report"} | EXPERIMENT_STAGES, out
    assert re.findall(r"\((fig[^)]+)\): (\d+) of", out) and all(
        n == "0" for _, n in re.findall(r"\((fig[^)]+)\): (\d+) of", out)), out
    assert len(runs(f"odt/{TASKS[0]}")) == counts[TASKS[0]] + 1 + SEEDS  # a new parent and its seeds
    assert len(runs(f"odt/{TASKS[1]}")) == counts[TASKS[1]]  # the experiments' runs found again, none new
    assert len(runs("odt/report")) == 2
    new = pd.read_csv(repo / "reports" / "results.csv").set_index("task")
    assert new.loc[TASKS[1], "odt_online_mean"] == table.loc[TASKS[1], "odt_online_mean"]
    assert new.loc[TASKS[0], "odt_offline_mean"] == table.loc[TASKS[0], "odt_offline_mean"]  # same pretrained policies
    assert new.loc[TASKS[0], "iql_online_mean"] == table.loc[TASKS[0], "iql_online_mean"]  # IQL did not re-run
    # finetuning really re-ran with the new value (returns alone can coincide: a tiny policy
    # whose tanh-bounded actions saturate plays the same episodes either way)
    for p in sorted((repo / "runs" / TASKS[0] / "finetune").glob("seed_*/result.json")):
        r = json.loads(p.read_text())
        assert r["num_updates"] == r["rounds"] * 4 + 20, r  # 20 pretraining updates, then 4 per round

    # a kill between the two renames that publish finetuning (its seeds, then its summary) leaves the new
    # seeds beside the old summary: DVC sees the stage's outputs changed and puts them back whole (from its
    # run cache, or by re-running the stage, which then only publishes); the report is up to date again
    new_summary = (repo / "runs" / TASKS[0] / "finetune.json").read_bytes()
    counts = {t: len(runs(f"odt/{t}")) for t in TASKS}
    (repo / "runs" / TASKS[0] / "finetune.json").write_bytes(old_summary)
    assert f"finetune@{TASKS[0]}" in sh(dvc, "status", cwd=repo, env=env)
    out = sh(dvc, "repro", cwd=repo, env=env)
    assert (stages_run(out) == {f"finetune@{TASKS[0]}"}
            or f"Stage 'finetune@{TASKS[0]}' is cached - skipping run, checking out outputs" in out), out
    assert stages_run(out) <= {f"finetune@{TASKS[0]}"}, out
    assert (repo / "runs" / TASKS[0] / "finetune.json").read_bytes() == new_summary
    assert "up to date" in sh(dvc, "status", cwd=repo, env=env)
    assert {t: len(runs(f"odt/{t}")) for t in TASKS} == counts

    # a misspelt top-level key: `dvc repro` stops at the params stage with one line; nothing else runs or changes
    def outputs() -> dict[str, bytes]:
        return {
            str(p.relative_to(repo)): p.read_bytes()
            for d in ("runs", "reports", "data")
            for p in sorted((repo / d).rglob("*"))
            if p.is_file()
        }

    before, good = outputs(), params_path.read_text()
    params_path.write_text(good.replace("\nseeds: 10\n", "\nseedz: 10\n"))
    proc = subprocess.run([dvc, "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "error: invalid params.yaml: unknown field 'seedz' (check the spelling)" in proc.stdout + proc.stderr
    assert stages_run(proc.stdout + proc.stderr) == {"params"}
    assert outputs() == before
    params_path.write_text(good)
    assert stages_run(sh(dvc, "repro", cwd=repo, env=env)) == set()  # fixed: nothing to do


def variant_dirs(repo: Path, experiment: str) -> dict[str, dict[str, bytes]]:
    """Every file an experiment published, by variant directory."""
    root = repo / "experiments" / experiment / TASKS[1]
    return {d.name: {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}
            for d in sorted(root.iterdir()) if d.is_dir()}


@pytest.mark.slow
def test_experiments_run_every_variant_apart_and_rerun_only_the_changed_one(repro):
    repo, uri, env, dvc = (repro[k] for k in ("repo", "uri", "env", "dvc"))
    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name(f"odt/{TASKS[1]}").experiment_id
    params = yaml.safe_load((repo / "params.yaml").read_text())

    def tagged(experiment: str) -> list:
        return client.search_runs([exp_id], f"tags.experiment = '{experiment}'", max_results=1000)

    # every experiment: its summary, a plot, and a variant directory per variant with its seeds' files
    for name in EXPERIMENTS:
        spec = params["experiments"][name]
        summary = json.loads((repo / "experiments" / f"{name}.json").read_text())
        assert summary["experiment"] == name and list(summary["tasks"]) == [TASKS[1]]
        assert is_png(repo / "reports" / "experiments" / f"{name}-{TASKS[1]}.png"), name
        if spec.get("kind") == "sampling":
            table = pd.read_csv(repo / "experiments" / name / TASKS[1] / "sampling.csv")
            assert len(table) == 30 and table["p_length"].sum() == pytest.approx(1.0)  # the tiny file's 30 episodes
            continue
        variants = list(spec.get("variants", {"base": {}}))
        published = variant_dirs(repo, name)
        for v in variants:
            assert {f"{phase}/seed_{k}/{f}" for phase in ("pretrain", "finetune") for k in range(2)
                    for f in ("curve.csv", "dynamics.csv", "result.json")} <= set(published[v]), (name, v)
        # MLflow: a parent run per variant and phase, and a child per seed, tagged with experiment and variant
        found = tagged(name)
        assert {(r.data.tags["variant"], r.data.tags["dvc_stage"]) for r in found} == {
            (v, f"experiment@{name}") for v in variants}
        phases = 3 if spec.get("kind") == "g_eval" else 2
        assert len(found) == len(variants) * phases * (1 + 2), name
    sweep = pd.read_csv(repo / "experiments" / "fig4-2" / TASKS[1] / "g_eval" / "seed_0" / "sweep.csv")
    assert sorted(sweep["g_eval"].unique()) == [1000, 3600, 7200] and set(sweep["phase"]) == {"pretrained", "finetuned"}
    claims = pd.read_csv(repo / "reports" / "experiments" / "claims.csv")
    assert set(claims["experiment"]) == set(EXPERIMENTS)
    verdicts = {"holds", "inside the spread", "does not hold", "consistent: inside the spread"}
    assert set(claims["verdict (final)"]) <= verdicts
    assert "The paper's claims, checked" in (repo / "reports" / "experiments" / "claims.md").read_text()

    # the two arms of fig5-4 are separate runs: relabelling off stored other RTGs, so other losses
    both = variant_dirs(repo, "fig5-4")
    assert both["relabel"]["pretrain/seed_0/result.json"] == both["no-relabel"]["pretrain/seed_0/result.json"]
    assert both["relabel"]["finetune/seed_0/dynamics.csv"] != both["no-relabel"]["finetune/seed_0/dynamics.csv"]

    # one variant's override changed: that experiment and the claims run; of its variants only that one computes
    params["experiments"]["fig5-4"]["variants"]["no-relabel"]["finetune"]["updates_per_round"] = 4
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before, n_runs = variant_dirs(repo, "fig5-4"), len(tagged("fig5-4"))
    out = sh(dvc, "repro", cwd=repo, env=env)
    assert stages_run(out) == {"params", "experiment@fig5-4", "claims"}, out
    ran = dict(re.findall(r"^(\w+ \S+ \(fig5-4/[^)]+\)): (\d+) of", out, flags=re.M))
    expected = {("pretrain", "relabel"): "0", ("finetune", "relabel"): "0", ("pretrain", "no-relabel"): "0",
                ("finetune", "no-relabel"): "2"}
    assert ran == {f"{phase} {TASKS[1]} (fig5-4/{v})": n for (phase, v), n in expected.items()}, out
    after = variant_dirs(repo, "fig5-4")
    assert after["relabel"] == before["relabel"]
    assert after["no-relabel"]["finetune/seed_0/result.json"] != before["no-relabel"]["finetune/seed_0/result.json"]
    for k in range(2):
        r = json.loads(after["no-relabel"][f"finetune/seed_{k}/result.json"])
        assert r["num_updates"] == 20 + 4 * r["rounds"]
    assert len(tagged("fig5-4")) == n_runs + 1 + 2  # the changed variant's new finetune parent and its seeds

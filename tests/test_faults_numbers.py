"""Bad numbers never become results: a diverging seed stops at its update, one line, exit 1, nothing published.

Pretraining at learning rate 1e3 overflows within a few updates: the stage must name task,
seed, update and the setting to lower, write no runs/<task>/pretrain.json and no seed
result.json, leave no NaN in any checkpoint, and mark no MLflow run FINISHED.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import torch
import yaml
from finetune_stage import FT_TASK as TASK
from finetune_stage import stage_cmd
from mlflow.tracking import MlflowClient

from odt.checkpoint import load_checkpoint
from pipeline import paths
from pipeline.profile import render
from pipeline.tracking import Tracker

ROOT = Path(__file__).resolve().parents[1]
SEEDS = 2


def test_a_diverging_pretraining_is_one_line_exit_1_and_publishes_nothing(tmp_path, hopper_random_hdf5):
    root = tmp_path / "repo"
    raw = yaml.safe_load(render("tiny", root=ROOT))
    raw["seeds"], raw["tasks"], raw["baselines"], raw["experiments"] = SEEDS, {TASK: raw["tasks"][TASK]}, {}, {}
    raw["tasks"][TASK]["pretrain"] |= {"learning_rate": 1e3, "log_every": 1, "checkpoint_every": 1}
    (root / "data" / TASK).mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    shutil.copy(hopper_random_hdf5, paths.dataset(root, TASK))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    # the store exists: MLflow's "creating tables" lines are not the stage's
    Tracker(root, uri).experiment(f"odt/{TASK}")
    proc = subprocess.run(stage_cmd("pretrain", root), cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr  # no traceback
    seed = (r"pretrain {task} seed {k} failed: pretrain {task} seed {k} diverged at update (\d+): the "
            r"(loss is nan \(grad norm \S+\)|gradient norm is (inf|nan) \(loss \S+\)); "
            r"lower tasks\.{task}\.pretrain\.learning_rate \(1000\.0\)")
    match = re.fullmatch("error: " + "; ".join(seed.format(task=re.escape(TASK), k=k) for k in range(SEEDS))
                         + r" \(0 other seeds finished and are kept for the rerun\)", lines[0])
    assert match, lines[0]
    assert not (root / "runs" / TASK / "pretrain.json").exists() and not paths.run_dir(root, TASK, "pretrain").exists()
    work = paths.work_root(root, TASK)
    assert not list(work.glob("pretrain-*/seed_*/result.json"))
    steps = [int(s) for s in re.findall(r"diverged at update (\d+)", lines[0])]
    for k, step in enumerate(steps):  # each seed's checkpoint after its last good update, where a rerun resumes
        state = load_checkpoint(next(work.glob(f"pretrain-*/seed_{k}/checkpoint.pt")))["trainer"]
        assert 1 < step and state["num_updates"] == step - 1
        tensors = [*state["model"].values(), *(t for s in state["optimizer"]["state"].values() for t in s.values())]
        assert all(torch.isfinite(t).all() for t in tensors if torch.is_tensor(t) and t.is_floating_point())

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(f"odt/{TASK}").experiment_id], max_results=100)
    assert sorted(r.data.tags.get("seed", "parent") for r in runs) == [*map(str, range(SEEDS)), "parent"]
    assert {r.info.status for r in runs} == {"FAILED"}

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from finetune_stage import FT_SEEDS, FT_TASK, finetune_results, stage_inputs
from finetune_stage import FT_TASK as TASK

from odt.data import Trajectory
from odt.datasets.fetch import fetch as fetch_task
from odt.datasets.hdf5 import write_d4rl_hdf5
from odt.envs import make_env
from pipeline import jobs, paths, seeds
from pipeline.params import load_params
from pipeline.profile import render

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
sys.path.insert(0, str(Path(__file__).parent))  # tests/synthetic.py, finetune_stage.py, killed_writer.py, ...


@pytest.fixture(autouse=True)
def _few_threads():
    """Two cores: keep each test's torch to one thread so parallel work in a test does not thrash."""
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def hopper_random_hdf5(tmp_path_factory) -> Path:
    """A small D4RL-layout file of random-policy Hopper episodes: real dynamics, seconds to make."""
    env = make_env("hopper-medium-v2")
    rng = np.random.default_rng(0)
    trajectories = []
    for episode in range(30):
        obs, _ = env.reset(seed=episode)
        steps = []
        while True:
            action = np.clip(rng.normal(0.0, 0.5, 3), -1, 1).astype(np.float32)
            nxt, reward, terminated, truncated, _ = env.step(action)
            steps.append((obs, action, reward, terminated))
            obs = nxt
            if terminated or truncated:
                break
        o, a, r, t = (np.array(x) for x in zip(*steps))
        trajectories.append(Trajectory(o, a, r, t))
    path = tmp_path_factory.mktemp("data") / "hopper-random.hdf5"
    write_d4rl_hdf5(path, trajectories)
    return path


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory, hopper_random_hdf5) -> Path:
    """A root with the tiny profile cut to one task and 4 seeds, its dataset and every seed pretrained."""
    root = tmp_path_factory.mktemp("pretrained")
    raw = yaml.safe_load(render("tiny", root=Path(__file__).resolve().parents[1]))
    raw["seeds"] = FT_SEEDS
    raw["tasks"], raw["baselines"], raw["experiments"] = {FT_TASK: raw["tasks"][FT_TASK]}, {}, {}
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    (root / "data" / FT_TASK).mkdir(parents=True)
    shutil.copy(hopper_random_hdf5, paths.dataset(root, FT_TASK))
    params, plans = load_params(root / "params.yaml")
    seeds.run(jobs.pretrain_stage(plans[FT_TASK], params, root=root), track=False)
    return root


@pytest.fixture
def fetched(tmp_path, hopper_random_hdf5) -> Path:
    """A root with the tiny profile cut to one task and one seed, its dataset written by the fetch stage's code
    (so its .json records the file's sha256)."""
    root = tmp_path / "repo"
    raw = yaml.safe_load(render("tiny", root=Path(__file__).resolve().parents[1]))
    raw["seeds"], raw["parallel"]["n_jobs"] = 1, 1
    raw["tasks"] = {TASK: raw["tasks"][TASK]}
    raw["baselines"], raw["experiments"] = {"dt": [TASK], "iql": [TASK]}, {}
    (root / "data").mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    fetch_task(TASK, "file", root / "data" / TASK, path=hopper_random_hdf5, progress=False)
    return root.resolve()


@pytest.fixture(scope="session")
def baseline(pretrained, tmp_path_factory) -> dict:
    """The finetune stage run once, uninterrupted, on the default backend (loky): what every fault must reproduce."""
    root = stage_inputs(tmp_path_factory.mktemp("baseline"), pretrained)
    params, plans = load_params(root / "params.yaml")
    assert params.parallel.backend == "loky"
    out = seeds.run(jobs.finetune_stage(plans[FT_TASK], params, root=root), track=False)
    assert out["summary"]["seeds"] == FT_SEEDS
    return {"results": finetune_results(root), "workers": out["workers"], "root": root}

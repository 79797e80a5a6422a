import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py


@pytest.fixture(autouse=True)
def _few_threads():
    """Two cores: keep each test's torch to one thread so parallel work in a test does not thrash."""
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def hopper_random_hdf5(tmp_path_factory) -> Path:
    """A small D4RL-layout file of random-policy Hopper episodes: real dynamics, seconds to make."""
    import numpy as np

    from odt.data import Trajectory
    from odt.datasets.hdf5 import write_d4rl_hdf5
    from odt.envs import make_env

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

"""Minari datasets made locally through Minari's own API, read back as trajectories."""
from __future__ import annotations

import socket

import minari
import numpy as np
import pytest
from minari.data_collector import EpisodeBuffer

from odt.datasets import minari_io
from odt.datasets.download import DownloadError
from odt.datasets.hdf5 import DatasetError
from odt.datasets.minari_io import load_minari
from odt.envs import make_env
from odt.tasks import get_task


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"


def make_minari_dataset(dataset_id: str, env, lengths, seed=0) -> list[dict]:
    """Episodes of random actions, stored with minari.create_dataset_from_buffers; returns what was stored."""
    episodes, buffers = [], []
    for i, n in enumerate(lengths):
        obs, _ = env.reset(seed=seed + i)
        env.action_space.seed(seed + i)
        observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
        for k in range(n):
            action = env.action_space.sample()
            obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(float(reward))
            terminations.append(bool(terminated))
            truncations.append(k == n - 1 and not terminated)
            if terminated:
                break
        if isinstance(observations[0], dict):
            stacked = {key: np.stack([o[key] for o in observations]) for key in observations[0]}
        else:
            stacked = np.stack(observations)
        episodes.append({"observations": stacked, "actions": np.stack(actions), "rewards": np.array(rewards),
                         "terminations": np.array(terminations)})
        buffers.append(EpisodeBuffer(id=i, observations=stacked, actions=np.stack(actions), rewards=rewards,
                                     terminations=terminations, truncations=truncations, infos={}))
    minari.create_dataset_from_buffers(dataset_id, buffers, env=env, eval_env=env.spec, ref_min_score=0.0,
                                       ref_max_score=1.0, algorithm_name="random", author="odt tests",
                                       author_email="tests@localhost", description="random actions, for a test",
                                       code_permalink="tests/test_minari.py")
    return episodes


def test_locomotion_round_trip(minari_root):
    stored = make_minari_dataset("test/hopper/random-v0", make_env("hopper-medium-v2"), [15, 30, 9])
    trajs, dataset_id = load_minari("test/hopper/random-v0", "hopper-medium-v2", download=False)
    assert dataset_id == "test/hopper/random-v0"
    assert len(trajs) == len(stored)
    for t, ep in zip(trajs, stored):
        n = len(ep["rewards"])
        assert len(t) == n
        np.testing.assert_allclose(t.observations, ep["observations"][:n].astype(np.float32))  # N+1 -> N
        np.testing.assert_allclose(t.actions, ep["actions"])
        np.testing.assert_allclose(t.rewards, ep["rewards"].astype(np.float32))
        np.testing.assert_array_equal(t.terminals, ep["terminations"])
    assert (minari_root / "test").is_dir()


def test_antmaze_dict_observations_flatten_in_d4rl_order(minari_root):
    env = make_env("antmaze-umaze-v2").env  # the raw dict-observation env under odt's wrapper
    stored = make_minari_dataset("D4RL/antmaze/umaze-v1", env, [12, 7])
    trajs, dataset_id = load_minari(get_task("antmaze-umaze-v2"), download=False)
    assert dataset_id == "D4RL/antmaze/umaze-v1"
    assert [len(t) for t in trajs] == [12, 7]
    for t, ep in zip(trajs, stored):
        assert t.observations.shape == (len(t), 29)
        np.testing.assert_allclose(t.observations[:, :2], ep["observations"]["achieved_goal"][:-1].astype(np.float32))
        np.testing.assert_allclose(t.observations[:, 2:], ep["observations"]["observation"][:-1].astype(np.float32))
    # the environment wrapper produces the same layout from the same state
    flat = type(make_env("antmaze-umaze-v2")).flatten({k: v[0] for k, v in stored[0]["observations"].items()})
    np.testing.assert_allclose(trajs[0].observations[0], flat.astype(np.float32))


def test_dims_mismatch_and_missing_dataset(minari_root):
    make_minari_dataset("test/hopper/random-v0", make_env("hopper-medium-v2"), [5])
    with pytest.raises(DatasetError, match="observations of 11 dims .* walker2d-medium-v2 needs 17"):
        load_minari("test/hopper/random-v0", "walker2d-medium-v2", download=False)
    with pytest.raises(DatasetError, match=r"D4RL/antmaze/umaze-diverse-v1 is not in .*minari download"):
        load_minari(get_task("antmaze-umaze-diverse-v2"), download=False)
    with pytest.raises(DatasetError, match="no Minari dataset holds D4RL's data .* --source generate"):
        load_minari(get_task("hopper-medium-v2"))


def test_unreachable_remote_fails_fast_with_one_line(minari_root, monkeypatch):
    def refuse(address, timeout=None):
        raise OSError(f"[Errno 111] Connection refused: {address[0]}")

    monkeypatch.setenv("MINARI_REMOTE", "hf://farama-minari")
    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(DownloadError) as err:
        minari_io.load_minari(get_task("antmaze-umaze-v2"))
    message = str(err.value)
    assert "D4RL/antmaze/umaze-v1 is not in" in message and "huggingface.co cannot be reached" in message
    assert "minari download D4RL/antmaze/umaze-v1" in message and "\n" not in message

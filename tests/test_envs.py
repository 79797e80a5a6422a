"""Environments in the datasets' format: dims for all five families, Ant's contact dims, AntMaze's layout."""
from __future__ import annotations

import json

import numpy as np
import pytest

from odt.data import Trajectory
from odt.envs import (
    ANT_CONTACT_DIMS,
    EnvMismatchError,
    check_dims,
    fixed_obs_json,
    fixed_observation_dims,
    gym_id,
    load_fixed_obs,
    make_env,
    make_vector_env,
)
from odt.tasks import get_task

FAMILIES = {
    "hopper-medium-v2": ("Hopper-v5", 11, 3),
    "walker2d-medium-replay-v2": ("Walker2d-v5", 17, 6),
    "halfcheetah-medium-v2": ("HalfCheetah-v5", 17, 6),
    "ant-medium-v2": ("Ant-v4", 111, 8),
    "antmaze-umaze-v2": ("AntMaze_UMaze-v4", 29, 8),
}


@pytest.mark.parametrize("task", FAMILIES)
def test_env_dims_match_dataset(task):
    env_id, obs_dim, act_dim = FAMILIES[task]
    assert gym_id(task) == env_id
    env = make_env(task)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (obs_dim,) and env.observation_space.shape == (obs_dim,)
    assert env.action_space.shape == (act_dim,)
    obs, reward, *_ = env.step(env.action_space.sample())
    assert obs.shape == (obs_dim,) and np.isfinite(obs).all()
    assert np.ndim(reward) == 0 and np.isfinite(reward)
    check_dims(task, env, get_task(task).obs_dim, get_task(task).act_dim)
    env.close()


@pytest.mark.parametrize(
    "task, version", [("hopper-medium-v2", "v4"), ("walker2d-medium-v2", "v4"), ("halfcheetah-medium-v2", "v4")]
)
def test_v4_is_selectable(task, version):
    env = make_env(task, version)
    assert env.spec.id.endswith("-v4")
    assert env.observation_space.shape == (get_task(task).obs_dim,)
    assert env.spec.max_episode_steps == 1000
    with pytest.raises(ValueError, match="'v4' or 'v5'"):
        gym_id(task, "v3")


def test_check_dims_mismatch_is_one_clear_line():
    envs = make_vector_env("hopper-medium-v2", 2)
    with pytest.raises(EnvMismatchError) as err:
        check_dims("hopper-medium-v2", envs, obs_dim=17, act_dim=6)
    message = str(err.value)
    assert "11 dims" in message and "17 and 6" in message and "\n" not in message
    check_dims("hopper-medium-v2", envs, 11, 3)  # the right dims pass
    envs.close()


def _ant_data(contact_value: float | None) -> list[Trajectory]:
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(20, 111))
    if contact_value is not None:
        obs[:, ANT_CONTACT_DIMS] = contact_value
    return [Trajectory(obs[:12], rng.uniform(-1, 1, (12, 8)), np.ones(12), np.zeros(12, bool)),
            Trajectory(obs[12:], rng.uniform(-1, 1, (8, 8)), np.ones(8), np.zeros(8, bool))]


def test_fixed_observation_dims_follow_the_dataset(tmp_path):
    dims, values = fixed_observation_dims("ant-medium-v2", _ant_data(0.0))
    np.testing.assert_array_equal(dims, np.arange(27, 111))
    np.testing.assert_array_equal(values, np.zeros(84))
    assert fixed_observation_dims("ant-medium-v2", _ant_data(None)) is None  # real contact forces vary: keep them
    assert (
        fixed_observation_dims(
            "hopper-medium-v2", [Trajectory(np.zeros((3, 11)), np.zeros((3, 3)), np.zeros(3), np.zeros(3))]
        )
        is None
    )
    # through the dataset's .json, as the fetch stage records it
    meta = tmp_path / "ant.json"
    meta.write_text(json.dumps({"fixed_obs": fixed_obs_json((dims, values + 0.5))}))
    back_dims, back_values = load_fixed_obs(meta)
    np.testing.assert_array_equal(back_dims, dims)
    np.testing.assert_array_equal(back_values, np.full(84, 0.5))
    assert load_fixed_obs({"fixed_obs": None}) is None


def test_ant_env_pins_contact_dims_when_dataset_has_them_constant():
    fixed = fixed_observation_dims("ant-medium-v2", _ant_data(0.0))
    env = make_env("ant-medium-v2", fixed_obs=fixed)
    obs, _ = env.reset(seed=0)
    free = make_env("ant-medium-v2")
    free_obs, _ = free.reset(seed=0)
    np.testing.assert_array_equal(obs[:27], free_obs[:27])
    assert (obs[27:] == 0).all()
    saw_contact = False
    for _ in range(30):
        action = env.action_space.sample()
        obs, *_ = env.step(action)
        free_obs, *_ = free.step(action)
        assert (obs[27:] == 0).all()
        saw_contact |= bool(np.abs(free_obs[27:]).sum() > 0)
    assert saw_contact  # the unpinned env does compute contact forces, so pinning matters
    vec = make_vector_env("ant-medium-v2", 2, fixed_obs=fixed)
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (2, 111) and (obs[:, 27:] == 0).all()


def test_antmaze_observation_and_sparse_reward():
    env = make_env("antmaze-umaze-v2")
    obs, _ = env.reset(seed=0)
    ant = env.unwrapped.ant_env.unwrapped
    np.testing.assert_allclose(obs[:2], ant.data.qpos[:2], atol=1e-6)  # D4RL order: x, y first
    np.testing.assert_allclose(obs[2:15], ant.data.qpos[2:], atol=1e-6)  # then the ant's own 27, qpos first
    rewards, steps, truncated = [], 0, False
    while not truncated:
        obs, reward, terminated, truncated, info = env.step(np.zeros(8))  # standing still: never reaches the goal
        rewards.append(reward)
        steps += 1
        assert not terminated and not info["success"]
    assert steps == 700  # D4RL's AntMaze episode length
    assert set(rewards) == {0.0}
    env.reset(seed=1)
    env.unwrapped.goal = ant.data.qpos[:2].copy()  # move the goal under the ant: success at once
    obs, reward, terminated, truncated, info = env.step(np.zeros(8))
    assert reward == 1.0 and terminated and info["success"]

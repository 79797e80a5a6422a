"""gymnasium environments that produce observations in the D4RL datasets' format.

D4RL collected its data in gym's v2 MuJoCo environments under mujoco-py, which no longer
install. The closest current environments are gymnasium's: hopper, walker2d and
halfcheetah `-v5` (or `-v4`) have the same observation sizes; Ant-v4 with contact forces
gives D4RL's 111 dims, and since the D4RL ant files hold zeros there (mujoco-py never
computed `cfrc_ext`), the wrapper can pin those dims to the dataset's constant; AntMaze is
gymnasium-robotics' UMaze with its dict observation flattened to D4RL's 29 dims
(x, y, then the ant's 27) and D4RL's sparse reward (1 within 0.5 of the goal).
"""
from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from odt.data import Trajectory
from odt.tasks import TaskSpec, get_task

_LOCOMOTION_IDS = {"hopper": "Hopper", "walker2d": "Walker2d", "halfcheetah": "HalfCheetah"}
ANT_CONTACT_DIMS = slice(27, 111)  # clipped cfrc_ext: the last 84 of Ant's 111 observation dims
ANTMAZE_GOAL_RADIUS = 0.5  # D4RL's success distance


class EnvMismatchError(ValueError):
    """The environment's observation/action dims differ from the dataset's; one line."""


class FixedObservationDims(gym.ObservationWrapper):
    """Pin some observation dims to constants, as the dataset has them."""

    def __init__(self, env: gym.Env, dims: np.ndarray, values: np.ndarray):
        super().__init__(env)
        self.dims = np.asarray(dims, dtype=np.int64)
        self.values = np.asarray(values, dtype=np.float64)

    def observation(self, observation):
        observation = np.array(observation, copy=True)
        observation[self.dims] = self.values
        return observation


class D4RLAntMaze(gym.Wrapper):
    """gymnasium-robotics AntMaze with D4RL's flat 29-dim observation and sparse reward.

    The episode ends with reward 1 when the ant comes within 0.5 of the goal, so an
    episode's return is its success (D4RL's reference scores are 0 and 1).
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        inner = env.observation_space["observation"]
        dim = 2 + inner.shape[0]
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(dim,), dtype=np.float64)

    @staticmethod
    def flatten(obs: dict) -> np.ndarray:
        return np.concatenate([obs["achieved_goal"], obs["observation"]]).astype(np.float64)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return self.flatten(obs), info

    def step(self, action):
        obs, _, terminated, truncated, info = self.env.step(action)
        success = float(np.linalg.norm(obs["achieved_goal"] - obs["desired_goal"]) <= ANTMAZE_GOAL_RADIUS)
        info["success"] = bool(success)
        return self.flatten(obs), success, bool(terminated or success), truncated, info


def gym_id(task: str | TaskSpec, version: str = "v5") -> str:
    """The gymnasium id a task runs in (Ant always v4: only v4 has D4RL's 111-dim observation)."""
    spec = get_task(task) if isinstance(task, str) else task
    if version not in ("v4", "v5"):
        raise ValueError(f"env version must be 'v4' or 'v5', got {version!r}")
    if spec.env in _LOCOMOTION_IDS:
        return f"{_LOCOMOTION_IDS[spec.env]}-{version}"
    if spec.env == "ant":
        return "Ant-v4"
    return f"AntMaze_UMaze-{version if version == 'v4' else 'v4'}"  # v4: 27-dim ant observation, as D4RL


def make_env(task: str | TaskSpec, version: str = "v5", *, fixed_obs: tuple[np.ndarray, np.ndarray] | None = None,
             **kwargs) -> gym.Env:
    """One environment of the task, observations in the dataset's format, D4RL's episode length."""
    spec = get_task(task) if isinstance(task, str) else task
    env_id = gym_id(spec, version)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gymnasium's "v4 is out of date" notice: the version is chosen on purpose
        if spec.is_antmaze:
            import gymnasium_robotics  # noqa: PLC0415 (optional: pyproject's pipeline extra)

            gym.register_envs(gymnasium_robotics)
            env = D4RLAntMaze(
                gym.make(env_id, continuing_task=False, max_episode_steps=spec.max_episode_steps, **kwargs)
            )
        elif spec.env == "ant":
            env = gym.make(env_id, use_contact_forces=True, max_episode_steps=spec.max_episode_steps, **kwargs)
        else:
            env = gym.make(env_id, max_episode_steps=spec.max_episode_steps, **kwargs)
    if fixed_obs is not None:
        env = FixedObservationDims(env, *fixed_obs)
    return env


def vector_env(env_fn: Callable[[], gym.Env], num_envs: int) -> gym.vector.SyncVectorEnv:
    """`num_envs` environments from `env_fn` stepped together, so the policy runs one batched forward pass per step.

    Sync, not async: MuJoCo steps in microseconds, far less than the inference they wait for.
    """
    if num_envs <= 0:
        raise ValueError(f"num_envs must be positive, got {num_envs}")
    return gym.vector.SyncVectorEnv([env_fn] * num_envs, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)


def make_vector_env(task: str | TaskSpec, num_envs: int, version: str = "v5", *,
                    fixed_obs: tuple[np.ndarray, np.ndarray] | None = None) -> gym.vector.SyncVectorEnv:
    """`num_envs` environments of the task (see `make_env`), stepped together."""
    return vector_env(functools.partial(make_env, task, version, fixed_obs=fixed_obs), num_envs)


def fixed_observation_dims(task: str | TaskSpec, trajectories: Sequence[Trajectory],
                           tol: float = 0.0) -> tuple[np.ndarray, np.ndarray] | None:
    """For Ant: the contact-force dims the dataset holds constant, and their values (None if any varies).

    D4RL's ant files hold zeros there; a dataset collected in current MuJoCo does not, and
    then the environment's real contact forces are kept.
    """
    spec = get_task(task) if isinstance(task, str) else task
    if spec.env != "ant":
        return None
    lo = np.min([t.observations[:, ANT_CONTACT_DIMS].min(axis=0) for t in trajectories], axis=0)
    hi = np.max([t.observations[:, ANT_CONTACT_DIMS].max(axis=0) for t in trajectories], axis=0)
    if np.any(hi - lo > tol):
        return None
    return np.arange(ANT_CONTACT_DIMS.start, ANT_CONTACT_DIMS.stop), lo.astype(np.float64)


def dataset_env_fn(task: str, version: str = "v5", metadata: str | os.PathLike | None = None) -> functools.partial:
    """make_env as the task's dataset needs it (D4RL dims; Ant's contact dims pinned as the dataset's .json says,
    when `metadata` names one that exists): a picklable env factory for the loops and for worker processes."""
    return functools.partial(make_env, task, version, fixed_obs=dataset_fixed_obs(metadata))


def dataset_fixed_obs(metadata: str | os.PathLike | None) -> tuple[np.ndarray, np.ndarray] | None:
    """load_fixed_obs of a dataset's .json; None where it names none or there is no such file."""
    return load_fixed_obs(metadata) if metadata is not None and os.path.isfile(metadata) else None


def fixed_obs_json(fixed: tuple[np.ndarray, np.ndarray] | None) -> dict[str, list] | None:
    """`fixed_observation_dims`' result as plain lists, for the dataset's .json metadata."""
    if fixed is None:
        return None
    dims, values = fixed
    return {"dims": [int(d) for d in dims], "values": [float(v) for v in values]}


def load_fixed_obs(metadata: str | os.PathLike | dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """The `fixed_obs` argument of make_env/make_vector_env from a dataset's .json (path or dict); None if absent."""
    if not isinstance(metadata, dict):
        with open(metadata) as f:
            metadata = json.load(f)
    block = metadata.get("fixed_obs")
    if not block:
        return None
    dims = np.asarray(block["dims"], dtype=np.int64)
    values = np.asarray(block["values"], dtype=np.float64)
    if dims.shape != values.shape:
        raise ValueError(f"fixed_obs has {dims.size} dims but {values.size} values; fetch the dataset again")
    return dims, values


def check_dims(task: str | TaskSpec | None, env: gym.Env | gym.vector.VectorEnv, obs_dim: int, act_dim: int) -> None:
    """Fail before training, in one line, when the env and the dataset disagree on dims."""
    name = task if isinstance(task, str) or task is None else task.name
    space_o = getattr(env, "single_observation_space", env.observation_space)
    space_a = getattr(env, "single_action_space", env.action_space)
    env_o, env_a = int(np.prod(space_o.shape)), int(np.prod(space_a.shape))
    if (env_o, env_a) != (obs_dim, act_dim):
        raise EnvMismatchError(
            f"{name or 'env'}: the environment gives observations of {env_o} dims and actions of {env_a}, "
            f"the dataset has {obs_dim} and {act_dim}; use the dataset made for this task (or another env_version)"
        )

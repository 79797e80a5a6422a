"""The ten tasks of the paper's Table 5.1, by their D4RL names.

One registry holds what every other module needs to know about a task: where D4RL
keeps its file, the reference scores that normalise returns, the environment family,
episode length and reward scale. Reference scores are d4rl/infos.py's (v2 datasets).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np

MUJOCO_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/{env}_{dataset}-v2.hdf5"
ANTMAZE_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl/ant_maze_v2/{file}.hdf5"


class UnknownTaskError(KeyError, ValueError):
    """A task name that is not in the registry; the message lists the close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class TaskSpec:
    name: str  # D4RL name, e.g. hopper-medium-v2
    env: str  # family: hopper, walker2d, halfcheetah, ant, antmaze
    dataset: str  # medium, medium-replay, umaze, umaze-diverse
    url: str
    ref_min: float
    ref_max: float
    obs_dim: int
    act_dim: int
    max_episode_steps: int
    reward_scale: float  # RTGs are fed to the model multiplied by this
    minari_id: str | None = None  # the Minari dataset that stands in for the D4RL file, where one exists
    sha256: str | None = None  # of the D4RL file, where recorded

    @property
    def is_antmaze(self) -> bool:
        return self.env == "antmaze"

    @property
    def generatable(self) -> bool:
        """Locomotion data can be regenerated offline with SAC; AntMaze needs D4RL's or Minari's files."""
        return not self.is_antmaze

    def normalized_score(self, raw_return):
        return normalized_score(self.name, raw_return)


# env: (obs_dim, act_dim, ref_min, ref_max)
_LOCOMOTION = {
    "hopper": (11, 3, -20.272305, 3234.3),
    "walker2d": (17, 6, 1.629008, 4592.3),
    "halfcheetah": (17, 6, -280.178953, 12135.0),
    "ant": (111, 8, -325.6, 3879.7),
}
_ANTMAZE_FILES = {
    "umaze": ("Ant_maze_u-maze_noisy_multistart_False_multigoal_False_sparse_fixed", "D4RL/antmaze/umaze-v1"),
    "umaze-diverse": (
        "Ant_maze_u-maze_noisy_multistart_True_multigoal_True_sparse_fixed",
        "D4RL/antmaze/umaze-diverse-v1",
    ),
}


def _build() -> dict[str, TaskSpec]:
    tasks = {}
    for env, (obs_dim, act_dim, lo, hi) in _LOCOMOTION.items():
        for dataset in ("medium", "medium-replay"):
            name = f"{env}-{dataset}-v2"
            tasks[name] = TaskSpec(
                name=name, env=env, dataset=dataset,
                url=MUJOCO_URL.format(env=env, dataset=dataset.replace("-", "_")),
                ref_min=lo, ref_max=hi, obs_dim=obs_dim, act_dim=act_dim,
                max_episode_steps=1000, reward_scale=0.001,
            )
    for dataset, (file, minari_id) in _ANTMAZE_FILES.items():
        name = f"antmaze-{dataset}-v2"
        tasks[name] = TaskSpec(
            name=name, env="antmaze", dataset=dataset, url=ANTMAZE_URL.format(file=file),
            ref_min=0.0, ref_max=1.0, obs_dim=29, act_dim=8, max_episode_steps=700, reward_scale=1.0,
            minari_id=minari_id,
        )
    return tasks


TASKS: dict[str, TaskSpec] = _build()


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), TASKS, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"known tasks: {', '.join(TASKS)}"
        raise UnknownTaskError(f"unknown task '{name}'; {hint}") from None


def unknown_task(names) -> tuple[str, str] | None:
    """(name, the line naming it with its close matches) for the first of `names` that is not a task, else None."""
    for name in names:
        try:
            get_task(name)
        except UnknownTaskError as err:
            return name, str(err)
    return None


def normalized_score(task: str, raw_return):
    """D4RL's normalisation: 100 * (return - ref_min) / (ref_max - ref_min). Works on arrays."""
    spec = get_task(task)
    score = 100.0 * (np.asarray(raw_return, dtype=np.float64) - spec.ref_min) / (spec.ref_max - spec.ref_min)
    return float(score) if np.ndim(score) == 0 else score

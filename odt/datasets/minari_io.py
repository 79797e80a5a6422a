"""Minari datasets (D4RL's successor) as `Trajectory` lists.

Named minari_io, not minari, so that `import minari` inside still finds the package.
Minari episodes hold N+1 observations (the last is the state after the final action);
a trajectory keeps the first N. AntMaze's dict observations are flattened in D4RL's
order, x-y first (`achieved_goal`) then the ant's 27 dims, as `odt.envs.D4RLAntMaze` does.
"""
from __future__ import annotations

import os
import socket

import numpy as np

from odt.data import Trajectory
from odt.datasets.download import DownloadError
from odt.datasets.hdf5 import DatasetError
from odt.tasks import TaskSpec, get_task


def flatten_observations(observations) -> np.ndarray:
    if isinstance(observations, dict):
        if "achieved_goal" in observations and "observation" in observations:
            return np.concatenate(
                [np.asarray(observations["achieved_goal"]), np.asarray(observations["observation"])], axis=1
            )
        raise DatasetError(f"dict observations with keys {sorted(observations)}: only AntMaze's "
                           f"(achieved_goal, observation, desired_goal) can be flattened to D4RL's layout")
    return np.asarray(observations)


def episode_to_trajectory(episode) -> Trajectory:
    obs = flatten_observations(episode.observations)
    n = len(episode.rewards)
    if len(obs) != n + 1:
        raise DatasetError(f"Minari episode {episode.id}: {len(obs)} observations for {n} steps (expected {n + 1})")
    actions = np.asarray(episode.actions).reshape(n, -1)
    rewards = np.asarray(episode.rewards, dtype=np.float64)
    if not (np.isfinite(obs).all() and np.isfinite(actions).all() and np.isfinite(rewards).all()):
        raise DatasetError(f"Minari episode {episode.id} holds NaN or inf; the dataset is corrupted")
    return Trajectory(obs[:-1], actions, rewards, np.asarray(episode.terminations, dtype=bool))


def open_dataset(dataset_id: str, download: bool | None = None):
    """The local copy if there is one; otherwise a download (unless `download` is False)."""
    import minari  # noqa: PLC0415 (optional: pyproject's pipeline extra)

    try:
        return minari.load_dataset(dataset_id, download=False)
    except FileNotFoundError:
        if download is False:
            raise DatasetError(f"Minari dataset {dataset_id} is not in {_root()}; run `minari download {dataset_id}` "
                               f"where there is network and copy it there (or set MINARI_DATASETS_PATH)") from None
    except Exception as err:  # a damaged local copy
        raise DatasetError(f"Minari dataset {dataset_id} in {_root()} cannot be read ({type(err).__name__}: {err}); "
                           f"delete it and download it again") from None
    _check_reachable(dataset_id)
    try:
        return minari.load_dataset(dataset_id, download=True)
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DownloadError(f"Minari dataset {dataset_id} is not in {_root()} and downloading it failed ({reason}); "
                            f"without network copy it there from a machine that ran `minari download {dataset_id}`, "
                            f"or use --source d4rl / --source file") from None


_REMOTE_HOSTS = {"hf": "huggingface.co", "gcs": "storage.googleapis.com"}


def _check_reachable(dataset_id: str, timeout: float = 5.0) -> None:
    """Fail at once, in one line, when Minari's remote cannot be reached (its own client retries for half a minute)."""
    remote = os.environ.get("MINARI_REMOTE", "hf://farama-minari")
    host = _REMOTE_HOSTS.get(remote.split("://")[0])
    if host is None:
        return
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as err:
        raise DownloadError(f"Minari dataset {dataset_id} is not in {_root()} and {host} cannot be reached ({err}); "
                            f"without network copy it there from a machine that ran `minari download {dataset_id}`, "
                            f"or use --source d4rl / --source file") from None


def _root() -> str:
    return os.environ.get("MINARI_DATASETS_PATH") or os.path.join(os.path.expanduser("~"), ".minari", "datasets")


def load_minari(
    dataset: str | TaskSpec, task: str | None = None, *, download: bool | None = None
) -> tuple[list[Trajectory], str]:
    """(trajectories, dataset id) of a Minari dataset given by id, or of the one that stands in for a task.

    `task` (or the TaskSpec) checks observation and action dims against the registry.
    """
    spec = dataset if isinstance(dataset, TaskSpec) else (get_task(task) if task else None)
    if isinstance(dataset, TaskSpec):
        if not dataset.minari_id:
            raise DatasetError(
                f"{dataset.name}: no Minari dataset holds D4RL's data for this task (Minari's mujoco datasets were "
                f"re-collected in the v5 environments); use --source d4rl, --source file or --source generate"
            )
        dataset_id = dataset.minari_id
    else:
        dataset_id = dataset
    data = open_dataset(dataset_id, download)
    trajectories = [episode_to_trajectory(ep) for ep in data.iterate_episodes()]
    if not trajectories:
        raise DatasetError(f"Minari dataset {dataset_id} has no episodes")
    if spec is not None:
        got = (trajectories[0].observations.shape[1], trajectories[0].actions.shape[1])
        if got != (spec.obs_dim, spec.act_dim):
            raise DatasetError(f"Minari dataset {dataset_id}: observations of {got[0]} dims and actions of {got[1]}, "
                               f"but {spec.name} needs {spec.obs_dim} and {spec.act_dim}; is this the right dataset?")
    return trajectories, dataset_id

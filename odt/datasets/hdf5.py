"""D4RL's HDF5 layout: read it into trajectories, and write trajectories back in it.

Every source (a D4RL file, a Minari dataset, generated data) ends up as one file in this
layout, so the stages downstream read one format. A trajectory ends at `terminals[i] or
timeouts[i]`; AntMaze files mark neither reliably, so there a trajectory also ends where
the next row's observation is not this row's `next_observations` (the reference code's
rule). A cut-off tail is kept as a trajectory without a terminal.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from odt.atomic import atomic_path
from odt.data import Trajectory
from odt.tasks import get_task

REQUIRED = ("observations", "actions", "rewards", "terminals", "timeouts")
DISCONTINUITY_TOL = 1e-6


class DatasetError(ValueError):
    """A dataset file that cannot be used; the message is one line naming the file and the problem."""


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    if path.is_dir():
        raise DatasetError(f"{path} is a directory, not an HDF5 file; name the .hdf5 file itself")
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        reason = "truncated" if path.stat().st_size and "truncated" in str(err).lower() else "not an HDF5 file"
        raise DatasetError(
            f"{path}: {reason} or corrupted ({err.__class__.__name__}); delete it and fetch it again"
        ) from None
    with f:
        missing = [k for k in REQUIRED if k not in f]
        # some old files lack `timeouts`; that alone is tolerable (all False), other keys are not
        if missing and missing != ["timeouts"]:
            raise DatasetError(f"{path}: missing key(s) {', '.join(missing)}; a D4RL file has {', '.join(REQUIRED)}")
        try:
            arrays = {k: f[k][()] for k in (*REQUIRED, "next_observations") if k in f}
        except (OSError, KeyError) as err:
            raise DatasetError(f"{path}: cannot read its data ({err}); the file is truncated or corrupted") from None
    n = len(arrays["rewards"])
    arrays.setdefault("timeouts", np.zeros(n, dtype=bool))
    if n == 0:
        raise DatasetError(f"{path}: the dataset is empty")
    for k, v in arrays.items():
        if len(v) != n:
            raise DatasetError(
                f"{path}: '{k}' has {len(v)} rows but 'rewards' has {n}; all keys must have one row per step"
            )
    for k in ("observations", "actions", "next_observations"):
        if k in arrays and arrays[k].ndim != 2:
            raise DatasetError(f"{path}: '{k}' must be 2-D (steps, dim), got shape {arrays[k].shape}")
    for k in ("observations", "actions", "rewards", "next_observations"):
        if k in arrays and not np.isfinite(arrays[k]).all():
            bad = int(np.flatnonzero(~np.isfinite(arrays[k]).reshape(n, -1).all(axis=1))[0])
            raise DatasetError(f"{path}: '{k}' holds NaN or inf (first at row {bad}); the file is corrupted")
    return arrays


def trajectory_ends(arrays: dict[str, np.ndarray], *, antmaze: bool = False) -> np.ndarray:
    """Indices of the last row of each trajectory (the final row always closes one)."""
    terminals = arrays["terminals"].astype(bool).reshape(-1)
    ends = terminals | arrays["timeouts"].astype(bool).reshape(-1)
    if antmaze and "next_observations" in arrays:
        obs, nxt = arrays["observations"], arrays["next_observations"]
        jump = np.linalg.norm(obs[1:].astype(np.float64) - nxt[:-1], axis=1) > DISCONTINUITY_TOL
        ends = terminals.copy()
        ends[:-1] |= jump
    ends[-1] = True
    return np.flatnonzero(ends)


def load_d4rl_hdf5(path: str | os.PathLike, task: str | None = None) -> list[Trajectory]:
    """Trajectories of a D4RL-layout file, float32. `task` picks the split rule (AntMaze) and checks dims."""
    path = Path(path)
    arrays = _read_arrays(path)
    spec = None
    if task is not None:
        spec = get_task(task)
        for key, want in (("observations", spec.obs_dim), ("actions", spec.act_dim)):
            got = arrays[key].shape[1]
            if got != want:
                raise DatasetError(f"{path}: '{key}' has {got} dims but {task} needs {want}; is this the right file?")
    ends = trajectory_ends(arrays, antmaze=bool(spec and spec.is_antmaze))
    starts = np.concatenate(([0], ends[:-1] + 1))
    obs = arrays["observations"].astype(np.float32, copy=False)
    act = arrays["actions"].astype(np.float32, copy=False)
    rew = arrays["rewards"].astype(np.float32, copy=False).reshape(-1)
    term = arrays["terminals"].astype(bool).reshape(-1)
    return [Trajectory(obs[s : e + 1], act[s : e + 1], rew[s : e + 1], term[s : e + 1]) for s, e in zip(starts, ends)]


def ends_with_tail(path: str | os.PathLike) -> bool:
    """Whether the file's last row has neither terminal nor timeout: a cut-off tail, as many D4RL files end."""
    with h5py.File(path, "r") as f:
        last_terminal = bool(np.asarray(f["terminals"][-1]).item())
        last_timeout = bool(np.asarray(f["timeouts"][-1]).item()) if "timeouts" in f else False
    return not (last_terminal or last_timeout)


def write_d4rl_hdf5(
    path: str | os.PathLike,
    trajectories: Sequence[Trajectory],
    *,
    metadata: dict[str, Any] | None = None,
    dtype: type = np.float32,
    extra: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write trajectories in D4RL's layout, atomically (temp file, then rename).

    A trajectory that does not end in a terminal gets `timeouts = True` on its last row,
    except the very last one when `metadata["tail"]` is true (a cut-off tail, as D4RL files
    have). `next_observations` is the next row within a trajectory and the last
    observation repeated at its end. `extra` adds datasets (e.g. `infos/qpos`).
    """
    if not trajectories:
        raise DatasetError(f"{path}: refusing to write a dataset with no trajectories")
    path = Path(path)
    obs = np.concatenate([t.observations for t in trajectories]).astype(dtype)
    nxt = np.concatenate([np.concatenate([t.observations[1:], t.observations[-1:]]) for t in trajectories]).astype(
        dtype
    )
    act = np.concatenate([t.actions for t in trajectories]).astype(dtype)
    rew = np.concatenate([t.rewards for t in trajectories]).astype(dtype)
    term = np.concatenate([t.terminals for t in trajectories]).astype(bool)
    timeouts = np.zeros(len(rew), dtype=bool)
    ends = np.cumsum([len(t) for t in trajectories]) - 1
    timeouts[ends] = ~term[ends]
    if metadata and metadata.get("tail"):
        timeouts[ends[-1]] = False
    with atomic_path(path) as tmp:
        # no timestamps in the file (h5py's default, said here): the same trajectories give the same bytes
        with h5py.File(tmp, "w", track_times=False) as f:
            for key, value in (("observations", obs), ("next_observations", nxt), ("actions", act),
                               ("rewards", rew), ("terminals", term), ("timeouts", timeouts)):
                f.create_dataset(key, data=value, track_times=False)
            for key, value in (extra or {}).items():
                f.create_dataset(key, data=value, track_times=False)
            for key, value in (metadata or {}).items():
                f.attrs[key] = value if value is not None else ""
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The file-level attributes written by `write_d4rl_hdf5` (source, task, seed, ...)."""
    with h5py.File(path, "r") as f:
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}

"""Reading D4RL-layout files: trajectory splits, dtypes, and clear errors on broken files."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from odt.data import Trajectory
from odt.datasets.hdf5 import DatasetError, ends_with_tail, load_d4rl_hdf5, read_metadata, write_d4rl_hdf5


def raw_file(path, n=10, obs_dim=11, act_dim=3, dtype=np.float32, terminals=(), timeouts=(), **override):
    """A file written with h5py directly (not by the code under test); rewards[i] = i."""
    rng = np.random.default_rng(0)
    data = {
        "observations": rng.normal(size=(n, obs_dim)).astype(dtype),
        "actions": rng.uniform(-1, 1, (n, act_dim)).astype(dtype),
        "rewards": np.arange(n, dtype=dtype),
        "terminals": np.isin(np.arange(n), terminals),
        "timeouts": np.isin(np.arange(n), timeouts),
    }
    data.update(override)
    with h5py.File(path, "w") as f:
        for key, value in data.items():
            if value is not None:
                f.create_dataset(key, data=value)
    return data


def test_split_at_terminals_and_timeouts_keeps_tail(tmp_path):
    path = tmp_path / "d.hdf5"
    data = raw_file(path, n=10, terminals=[2], timeouts=[5])
    trajs = load_d4rl_hdf5(path, "hopper-medium-v2")
    assert [len(t) for t in trajs] == [3, 3, 4]
    assert [bool(t.terminals[-1]) for t in trajs] == [True, False, False]  # terminal, timeout, cut-off tail
    assert [t.episode_return for t in trajs] == [0 + 1 + 2, 3 + 4 + 5, 6 + 7 + 8 + 9]
    assert not trajs[0].terminals[:-1].any()
    np.testing.assert_array_equal(trajs[2].observations, data["observations"][6:])
    np.testing.assert_array_equal(trajs[1].actions, data["actions"][3:6])
    assert ends_with_tail(path)


def test_float64_file_becomes_float32(tmp_path):
    path = tmp_path / "d.hdf5"
    data = raw_file(path, n=6, dtype=np.float64, timeouts=[5])
    trajs = load_d4rl_hdf5(path)
    assert len(trajs) == 1 and not ends_with_tail(path)
    t = trajs[0]
    assert t.observations.dtype == t.actions.dtype == t.rewards.dtype == np.float32
    np.testing.assert_allclose(t.observations, data["observations"].astype(np.float32))


def test_missing_timeouts_is_tolerated(tmp_path):
    path = tmp_path / "d.hdf5"
    raw_file(path, n=8, terminals=[3], timeouts=None)
    assert [len(t) for t in load_d4rl_hdf5(path)] == [4, 4]


def test_antmaze_splits_at_observation_discontinuity(tmp_path):
    """D4RL antmaze files mark no episode ends: a jump between next_observations[i] and observations[i+1] does."""
    n = 12
    rng = np.random.default_rng(1)
    obs = np.cumsum(rng.normal(size=(n, 29)), axis=0).astype(np.float32)
    nxt = np.concatenate([obs[1:], obs[-1:] + 1])
    nxt[3] = obs[4] + 5.0  # episode boundary after row 3
    nxt[8] = obs[9] + 1e-8  # below the tolerance: no boundary
    path = tmp_path / "maze.hdf5"
    raw_file(path, n=n, obs_dim=29, act_dim=8, observations=obs, next_observations=nxt,
             terminals=[6], timeouts=[9])  # a timeout alone does not split antmaze data
    trajs = load_d4rl_hdf5(path, "antmaze-umaze-v2")
    assert [len(t) for t in trajs] == [4, 3, 5]
    assert [bool(t.terminals[-1]) for t in trajs] == [False, True, False]
    # the same file read as locomotion data splits at the flags instead
    hopper_like = load_d4rl_hdf5(path)
    assert [len(t) for t in hopper_like] == [7, 3, 2]


def test_write_then_load_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    trajs = [
        Trajectory(
            rng.normal(size=(n, 17)),
            rng.uniform(-1, 1, (n, 6)),
            rng.normal(size=n),
            np.arange(n) == n - 1 if term else np.zeros(n, bool),
        )
        for n, term in ((5, True), (7, False), (4, False))
    ]
    path = write_d4rl_hdf5(tmp_path / "w.hdf5", trajs, metadata={"source": "test", "tail": True})
    back = load_d4rl_hdf5(path, "walker2d-medium-v2")
    assert [len(t) for t in back] == [5, 7, 4]
    for a, b in zip(trajs, back):
        np.testing.assert_array_equal(a.observations, b.observations)
        np.testing.assert_array_equal(a.terminals, b.terminals)
    assert ends_with_tail(path)
    assert read_metadata(path)["source"] == "test"
    with h5py.File(path) as f:
        assert f["timeouts"][()].tolist().count(True) == 1  # the middle trajectory; the last is the tail
        np.testing.assert_array_equal(f["next_observations"][:4], f["observations"][1:5])


def test_wrong_dims_for_task(tmp_path):
    path = tmp_path / "d.hdf5"
    raw_file(path, obs_dim=11)
    with pytest.raises(DatasetError, match=r"'observations' has 11 dims but ant-medium-v2 needs 111"):
        load_d4rl_hdf5(path, "ant-medium-v2")


@pytest.mark.parametrize("case, pattern", [
    ("missing", r"missing key\(s\) actions"),
    ("lengths", r"'terminals' has 9 rows but 'rewards' has 10"),
    ("nan", r"'observations' holds NaN or inf \(first at row 4\)"),
    ("inf", r"'rewards' holds NaN or inf \(first at row 7\)"),
    ("truncated", r"truncated|corrupted"),
    ("not_hdf5", r"not an HDF5 file"),
    ("absent", r"no such file"),
    ("empty", r"empty"),
])
def test_broken_files_give_one_line_naming_file(tmp_path, case, pattern):
    path = tmp_path / f"{case}.hdf5"
    if case == "missing":
        raw_file(path, actions=None)
    elif case == "lengths":
        raw_file(path, terminals=[], timeouts=[])
        with h5py.File(path, "a") as f:
            del f["terminals"]
            f.create_dataset("terminals", data=np.zeros(9, bool))
    elif case in ("nan", "inf"):
        obs = np.zeros((10, 11), np.float32)
        rewards = np.zeros(10, np.float32)
        if case == "nan":
            obs[4, 2] = np.nan
        else:
            rewards[7] = np.inf
        raw_file(path, observations=obs, rewards=rewards)
    elif case == "truncated":
        raw_file(path, n=2000)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "not_hdf5":
        path.write_text("<html>404 not found</html>\n")
    elif case == "empty":
        raw_file(path, n=0)
    with pytest.raises(DatasetError, match=pattern) as err:
        load_d4rl_hdf5(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)

"""Generated D4RL-style data: one tiny SAC run makes medium and medium-replay, cached, deterministic."""
from __future__ import annotations

import json
import threading

import h5py
import numpy as np
import pytest
from killed_writer import killed_writers_temp

from odt.datasets import generate
from odt.datasets.generate import GenerateError, default_target_return, generate_task, run_name
from odt.datasets.hdf5 import load_d4rl_hdf5
from odt.envs import fixed_observation_dims
from odt.tasks import get_task

TINY = {"seed": 3, "train_steps": 300, "transitions": 400}


@pytest.fixture
def count_runs(monkeypatch):
    calls = []
    original = generate.generate_run

    def counted(*args, **kwargs):
        calls.append(args[0].name)
        return original(*args, **kwargs)

    monkeypatch.setattr(generate, "generate_run", counted)
    return calls


def _arrays(path):
    with h5py.File(path) as f:
        return {k: f[k][()] for k in ("observations", "actions", "rewards", "terminals", "timeouts")}


@pytest.fixture(scope="module")
def hopper_run(tmp_path_factory):
    cache = tmp_path_factory.mktemp("gen")
    medium, info = generate_task("hopper-medium-v2", cache_dir=cache, **TINY)
    return cache, medium, info


def test_tiny_hopper_run_makes_both_datasets(hopper_run, count_runs):
    cache, medium, info = hopper_run
    replay, info2 = generate_task("hopper-medium-replay-v2", cache_dir=cache, **TINY)
    assert count_runs == []  # the sibling task reuses the cached SAC run
    assert medium.parent == replay.parent and info2 == info
    assert medium.parent.name == run_name(
        "hopper", 3, 300, default_target_return(get_task("hopper-medium-v2")), 400, "v5"
    )
    assert info["sac_steps"] == 300 and not info["reached_target"]
    assert [h["step"] for h in info["eval_history"]] == [300]

    med = load_d4rl_hdf5(medium, "hopper-medium-v2")  # the same loader as D4RL's files
    rep = load_d4rl_hdf5(replay, "hopper-medium-replay-v2")
    assert sum(len(t) for t in med) == 400  # --transitions rollout steps
    assert sum(len(t) for t in rep) == 300  # every SAC environment step is in the replay data
    for trajs in (med, rep):
        assert len(trajs) > 2
        assert all(t.terminals[-1] for t in trajs[:-1])  # early hopper episodes end by falling, not by time
        assert all(not t.terminals[:-1].any() for t in trajs)
        assert all(np.abs(t.actions).max() <= 1.0 for t in trajs)
        assert all(np.isfinite(t.observations).all() for t in trajs)
    # a hopper falls after a few dozen steps with an untrained policy
    assert 5 < np.mean([len(t) for t in rep[:-1]]) < 200
    assert get_task("hopper-medium-v2").ref_min < np.mean([t.episode_return for t in med]) < 1000


def test_same_seed_same_data_and_concurrent_fetches_train_once(hopper_run, tmp_path, count_runs):
    _, medium, _ = hopper_run
    stale = killed_writers_temp(tmp_path / medium.parent.name)  # left by a killed run
    stale.mkdir()
    results = []
    threads = [threading.Thread(target=lambda t=t: results.append(generate_task(t, cache_dir=tmp_path, **TINY)))
               for t in ("hopper-medium-v2", "hopper-medium-replay-v2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert count_runs == ["hopper-medium-v2"] or count_runs == ["hopper-medium-replay-v2"]
    assert len(results) == 2 and not stale.exists()
    again = tmp_path / medium.parent.name / "medium.hdf5"
    a, b = _arrays(medium), _arrays(again)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    before = _arrays(medium.parent / "medium-replay.hdf5")
    after = _arrays(again.parent / "medium-replay.hdf5")
    np.testing.assert_array_equal(before["observations"], after["observations"])


@pytest.mark.parametrize("task", ["walker2d-medium-v2", "halfcheetah-medium-replay-v2", "ant-medium-v2"])
def test_other_locomotion_envs_are_generatable(task, tmp_path):
    path, info = generate_task(task, seed=0, train_steps=120, transitions=150, cache_dir=tmp_path)
    spec = get_task(task)
    trajs = load_d4rl_hdf5(path, task)
    assert sum(len(t) for t in trajs) == (150 if spec.dataset == "medium" else 120)
    assert trajs[0].observations.shape[1] == spec.obs_dim and trajs[0].actions.shape[1] == spec.act_dim
    assert json.loads((path.parent / "run.json").read_text())["env"] == spec.env
    if spec.env == "ant":
        assert fixed_observation_dims(task, trajs) is None  # today's MuJoCo computes contact forces: keep them


def test_antmaze_cannot_be_generated(tmp_path):
    with pytest.raises(GenerateError, match="antmaze-umaze-diverse-v2: .*--source d4rl or --source minari"):
        generate_task("antmaze-umaze-diverse-v2", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []

"""The task registry: the ten D4RL names, their URLs, reference scores and normalisation."""
from __future__ import annotations

import numpy as np
import pytest

from odt.tasks import TASKS, UnknownTaskError, get_task, normalized_score

# d4rl/infos.py (v2): ref_min, ref_max, written out again here so a typo in the registry shows
REFERENCE = {
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
    "halfcheetah": (-280.178953, 12135.0),
    "ant": (-325.6, 3879.7),
    "antmaze": (0.0, 1.0),
}
TEN = [f"{env}-{d}-v2" for env in ("hopper", "walker2d", "halfcheetah", "ant") for d in ("medium", "medium-replay")]
TEN += ["antmaze-umaze-v2", "antmaze-umaze-diverse-v2"]


def test_registry_holds_exactly_the_ten_tasks():
    assert sorted(TASKS) == sorted(TEN)


@pytest.mark.parametrize("task", TEN)
def test_normalized_score_matches_reference(task):
    lo, hi = REFERENCE[task.split("-")[0]]
    assert normalized_score(task, lo) == pytest.approx(0.0, abs=1e-9)
    assert normalized_score(task, hi) == pytest.approx(100.0)
    raw = 0.3 * hi + 0.7 * lo + 17.0 * (hi > 1)
    assert normalized_score(task, raw) == pytest.approx(100 * (raw - lo) / (hi - lo))


def test_normalized_score_on_arrays_keeps_shape():
    raw = np.array([[-20.272305, 3234.3], [1617.0, 0.0]])
    score = normalized_score("hopper-medium-replay-v2", raw)
    assert isinstance(score, np.ndarray) and score.shape == (2, 2)
    np.testing.assert_allclose(score, 100 * (raw + 20.272305) / (3234.3 + 20.272305))
    assert isinstance(normalized_score("hopper-medium-v2", 100), float)


def test_known_paper_value():
    # ODT's hopper-medium online score in Table 5.1 is 97.54: a return of about 3154.24
    assert normalized_score("hopper-medium-v2", 3154.24) == pytest.approx(97.54, abs=0.005)


def test_unknown_task_lists_close_matches():
    with pytest.raises(UnknownTaskError) as err:
        get_task("hopper-medum-v2")
    message = str(err.value)
    assert "hopper-medum-v2" in message and "hopper-medium-v2" in message and "\n" not in message
    with pytest.raises(UnknownTaskError, match="known tasks: .*antmaze-umaze-diverse-v2"):
        normalized_score("pong", 1.0)
    with pytest.raises(ValueError):  # also a ValueError, for callers that catch bad input broadly
        get_task("halfcheetah-expert-v2")


def test_urls_lengths_scales_and_dims():
    base = "http://rail.eecs.berkeley.edu/datasets/offline_rl/"
    assert get_task("hopper-medium-replay-v2").url == base + "gym_mujoco_v2/hopper_medium_replay-v2.hdf5"
    assert get_task("halfcheetah-medium-v2").url == base + "gym_mujoco_v2/halfcheetah_medium-v2.hdf5"
    assert get_task("antmaze-umaze-v2").url == (
        base + "ant_maze_v2/Ant_maze_u-maze_noisy_multistart_False_multigoal_False_sparse_fixed.hdf5")
    assert get_task("antmaze-umaze-diverse-v2").url == (
        base + "ant_maze_v2/Ant_maze_u-maze_noisy_multistart_True_multigoal_True_sparse_fixed.hdf5")
    dims = {"hopper": (11, 3), "walker2d": (17, 6), "halfcheetah": (17, 6), "ant": (111, 8), "antmaze": (29, 8)}
    for name, spec in TASKS.items():
        assert (spec.obs_dim, spec.act_dim) == dims[spec.env]
        assert spec.max_episode_steps == (700 if spec.is_antmaze else 1000)
        assert spec.reward_scale == (1.0 if spec.is_antmaze else 0.001)
        assert spec.generatable == (not spec.is_antmaze)
        assert (spec.minari_id is not None) == spec.is_antmaze

import numpy as np
import pytest
from scipy import stats
from synthetic import labelled_trajectories

from odt.data import Trajectory, returns_to_go
from odt.replay import TrajectoryReplayBuffer

LENGTHS = [3, 10, 25, 40, 100]


def test_trajectories_are_drawn_in_proportion_to_length():
    buf = TrajectoryReplayBuffer(100, labelled_trajectories(LENGTHS))
    batch = buf.sample(100_000, 5, np.random.default_rng(0))
    ids = batch.states[:, -1, 0].astype(int)  # the last token is always real
    counts = np.bincount(ids, minlength=len(LENGTHS))
    expected = np.array(LENGTHS) / sum(LENGTHS) * len(ids)
    assert stats.chisquare(counts, expected).pvalue > 1e-3
    # and the test has power: uniform trajectory choice is rejected
    assert stats.chisquare(counts, np.full(len(LENGTHS), len(ids) / len(LENGTHS))).pvalue < 1e-6


def test_start_index_is_uniform_within_a_trajectory():
    buf = TrajectoryReplayBuffer(100, labelled_trajectories([50]))
    batch = buf.sample(50_000, 10, np.random.default_rng(1))
    first_real = batch.mask.argmax(axis=1)
    starts = batch.timesteps[np.arange(len(first_real)), first_real]
    counts = np.bincount(starts, minlength=50)
    assert len(counts) == 50
    assert stats.chisquare(counts).pvalue > 1e-3


def test_segments_are_contiguous_slices_with_exact_rtg_and_left_padding():
    trajs = labelled_trajectories(LENGTHS, seed=3)
    buf = TrajectoryReplayBuffer(100, trajs)
    K = 12
    b = buf.sample(2_000, K, np.random.default_rng(2))
    assert b.states.shape == (2_000, K, 4) and b.actions.shape == (2_000, K, 2)
    assert b.rewards.shape == b.returns_to_go.shape == b.timesteps.shape == b.mask.shape == (2_000, K)
    by_id = {i: t for i, t in enumerate(trajs)}
    saw_padding = False
    for i in range(len(b.mask)):
        m = b.mask[i].astype(bool)
        n = int(m.sum())
        assert n >= 1 and m[K - n:].all() and not m[: K - n].any()  # padding only on the left
        saw_padding |= n < K
        tid = int(b.states[i, -1, 0])
        t = by_id[tid]
        start = int(b.states[i, K - n, 1])
        sl = slice(start, start + n)
        np.testing.assert_array_equal(b.states[i, m], t.observations[sl])
        np.testing.assert_array_equal(b.actions[i, m], t.actions[sl])
        np.testing.assert_array_equal(b.rewards[i, m], t.rewards[sl])
        np.testing.assert_allclose(b.returns_to_go[i, m], returns_to_go(t.rewards)[sl], rtol=1e-6)
        np.testing.assert_array_equal(b.timesteps[i, m], np.arange(start, start + n))
        assert (b.states[i, ~m] == 0).all() and (b.returns_to_go[i, ~m] == 0).all()
        assert (start + n == len(t)) or n == K  # a short segment only where the trajectory ends
    assert saw_padding


def test_returns_to_go_is_raw_sum_to_the_end():
    t = Trajectory(np.zeros((4, 1)), np.zeros((4, 1)), [1.0, 2.0, 3.0, 4.0], [0, 0, 0, 1])
    np.testing.assert_array_equal(t.returns_to_go, [10.0, 9.0, 7.0, 4.0])


def test_initial_buffer_keeps_the_top_n_by_return_and_evicts_fifo():
    trajs = labelled_trajectories([5] * 10, seed=4)
    returns = np.array([t.episode_return for t in trajs])
    buf = TrajectoryReplayBuffer(4, trajs)
    kept = sorted(int(t.observations[0, 0]) for t in buf.trajectories)
    assert kept == sorted(np.argsort(returns)[-4:].tolist())
    assert buf.num_transitions == 20

    online = labelled_trajectories([7, 9, 11], seed=5)
    for i, t in enumerate(online):
        t.observations[:, 0] = 100 + i
    buf.add(online[:2])
    ids = [int(t.observations[0, 0]) for t in buf.trajectories]
    # the two oldest (lowest-return offline) trajectories left first; new ones at the end
    assert ids == [int(i) for i in np.argsort(returns)[-2:]] + [100, 101]
    buf.add(online[2:])
    assert [int(t.observations[0, 0]) for t in buf.trajectories][-3:] == [100, 101, 102]
    assert len(buf) == 4 and buf.num_transitions == 5 + 7 + 9 + 11


def test_online_trajectories_are_relabelled_with_the_return_they_achieved():
    buf = TrajectoryReplayBuffer(2, labelled_trajectories([4], seed=6))
    achieved = Trajectory(np.full((3, 4), 7.0), np.zeros((3, 2)), [5.0, 0.0, 1.0], [0, 0, 1])
    buf.add([achieved])
    b = buf.sample(500, 3, np.random.default_rng(0))
    from_online = b.states[:, -1, 0] == 7.0
    assert from_online.any()
    full = from_online & (b.mask.sum(1) == 3)
    np.testing.assert_array_equal(b.returns_to_go[full][0], [6.0, 1.0, 1.0])


def test_state_dict_round_trip_preserves_samples():
    buf = TrajectoryReplayBuffer(3, labelled_trajectories(LENGTHS))
    clone = TrajectoryReplayBuffer.from_state_dict(buf.state_dict())
    a = buf.sample(64, 8, np.random.default_rng(9))
    b = clone.sample(64, 8, np.random.default_rng(9))
    np.testing.assert_array_equal(a.states, b.states)
    np.testing.assert_array_equal(a.returns_to_go, b.returns_to_go)
    assert clone.capacity == 3


def test_empty_or_bad_buffers_are_refused():
    with pytest.raises(ValueError, match="capacity"):
        TrajectoryReplayBuffer(0, labelled_trajectories([3]))
    with pytest.raises(ValueError, match="at least one trajectory"):
        TrajectoryReplayBuffer(5, [])

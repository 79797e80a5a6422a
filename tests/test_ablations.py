"""The library's options for the paper's ablations: curriculum RTG (Fig. 5.3), relabelling off (Fig. 5.4), random
buffer initialisation (Fig. A.1), lambda and warmup at the start of finetuning (Fig. G.1, Table C.3), the training
dynamics a run keeps (Fig. 4.1), the sampling probabilities of Fig. F.1, and the verdict rule of the claims table."""
from __future__ import annotations

import math

import numpy as np
import pytest
from synthetic import labelled_trajectories
from test_loops import FINETUNE, MODEL, PRETRAIN, hopper, hopper_dataset

from odt import FinetuneConfig, Trajectory, finetune, pretrain
from odt.checkpoint import load_checkpoint
from odt.claims import alike, compare
from odt.config import ConfigError, validate
from odt.curves import read_csv
from odt.data import conditioned_returns_to_go, returns_to_go
from odt.loops import exploration_rtg
from odt.replay import TrajectoryReplayBuffer, sampling_probabilities


def constant(reward: float, steps: int, mark: float) -> Trajectory:
    """`steps` steps of reward `reward`; its first observation column is `mark`, to find it again."""
    terminals = np.arange(steps) == steps - 1
    return Trajectory(np.full((steps, 11), mark), np.zeros((steps, 3)), np.full(steps, reward), terminals)


def test_the_curriculum_explores_with_the_stated_percentile_of_the_buffer_returns_and_follows_the_buffer():
    returns = [10.0, 20.0, 30.0, 40.0, 50.0]
    buffer = TrajectoryReplayBuffer(5, [constant(r / 5, 5, i) for i, r in enumerate(returns)])
    np.testing.assert_allclose(buffer.returns, returns)
    for q, expected in [(0, 10.0), (50, 30.0), (90, 46.0), (100, 50.0)]:
        cfg = FinetuneConfig(curriculum_percentile=q, g_online=7200)
        assert exploration_rtg(cfg, buffer) == pytest.approx(expected)
    assert exploration_rtg(FinetuneConfig(g_online=7200), buffer) == 7200.0  # fixed: the buffer does not matter
    # two better trajectories push out the two oldest (10, 20): the percentile moves with the buffer
    buffer.add([constant(20.0, 5, 9), constant(40.0, 5, 10)])
    np.testing.assert_allclose(buffer.returns, [30, 40, 50, 100, 200])
    assert exploration_rtg(FinetuneConfig(curriculum_percentile=50), buffer) == pytest.approx(50.0)
    with pytest.raises(ConfigError, match="curriculum_percentile"):
        validate(FinetuneConfig, {"curriculum_percentile": 101})


def test_relabelling_off_keeps_the_conditioned_rtgs_and_on_stores_the_achieved_ones():
    rewards = np.array([5.0, 0.0, 1.0, 2.0], dtype=np.float32)
    np.testing.assert_allclose(conditioned_returns_to_go(rewards, 100.0), [100.0, 95.0, 95.0, 94.0])
    pre = pretrain(hopper_dataset(), MODEL, PRETRAIN, hopper, task="hopper-medium-v2", device="cpu", progress=False)
    stored = {}
    for relabel in (True, False):
        cfg = FINETUNE.model_copy(update={"hindsight_relabel": relabel, "online_samples": 30})
        run = finetune(pre.trainer, cfg, hopper, seed=3, device="cpu", progress=False)
        buf = run.trainer.buffer
        newest = len(buf) - 1
        rows = slice(buf.starts[newest], buf.ends[newest])
        rewards = buf.rewards[rows]
        stored[relabel] = (buf.returns_to_go[rows].copy(), rewards.copy())
    achieved, r_on = stored[True]
    conditioned, r_off = stored[False]
    np.testing.assert_allclose(achieved, returns_to_go(r_on), rtol=1e-5)
    # g_online minus the rewards received before each step, as the rollout fed them to the model
    np.testing.assert_allclose(conditioned, FINETUNE.g_online - (np.cumsum(r_off) - r_off), rtol=1e-5)
    assert conditioned[-1] > 100 > achieved[-1]  # 200 asked for, a few reward units achieved: far apart


def test_random_initialisation_draws_n_distinct_trajectories_reproducibly_for_a_seed():
    trajs = labelled_trajectories([5] * 30, seed=4)
    def drawn(seed: int) -> list[int]:
        buf = TrajectoryReplayBuffer(10, trajs, init="random", rng=np.random.default_rng(seed))
        return [int(t.observations[0, 0]) for t in buf.trajectories]
    a, b, c = drawn(0), drawn(0), drawn(1)
    assert a == b and len(set(a)) == 10 and set(a) != set(c)  # without replacement, the same for a seed
    top = TrajectoryReplayBuffer(10, trajs)
    assert {int(t.observations[0, 0]) for t in top.trajectories} != set(a)
    # over many seeds every trajectory is drawn about as often (10 of 30 each time)
    counts = np.zeros(30)
    for s in range(300):
        counts[drawn(s)] += 1
    assert counts.min() > 60 and counts.max() < 140
    with pytest.raises(ValueError, match="rng"):
        TrajectoryReplayBuffer(10, trajs, init="random")
    # the finetuning loop draws with the seed's RNG: the same buffer for a seed, another for the next
    pre = pretrain(hopper_dataset(n=12), MODEL, PRETRAIN, hopper, task="hopper-medium-v2", device="cpu",
                   progress=False)
    cfg = FINETUNE.model_copy(update={"buffer_init": "random", "online_samples": 0})
    starts = [tuple(finetune(pre.trainer, cfg, hopper, seed=s, device="cpu", progress=False).trainer.buffer.returns)
              for s in (0, 0, 1)]
    assert starts[0] == starts[1] and starts[0] != starts[2]


def test_finetuning_continues_lambda_and_the_warmup_unless_told_to_restart_them():
    pre = pretrain(hopper_dataset(), MODEL, PRETRAIN.model_copy(update={"init_temperature": 0.5}), hopper,
                   task="hopper-medium-v2", device="cpu", progress=False)
    lam = float(pre.trainer.temperature.detach())
    assert lam != pytest.approx(0.5) and pre.trainer.scheduler.last_epoch == 40
    cfg = FINETUNE.model_copy(update={"online_samples": 0, "warmup_steps": 100})
    go_on = finetune(pre.trainer, cfg, hopper, device="cpu", progress=False).trainer
    assert float(go_on.temperature.detach()) == pytest.approx(lam) and go_on.scheduler.last_epoch == 40
    assert go_on.optimizer.param_groups[0]["lr"] == pytest.approx(cfg.learning_rate * 41 / 100)
    restart = finetune(pre.trainer, cfg.model_copy(update={"init_temperature": 2.0, "restart_warmup": True}), hopper,
                       device="cpu", progress=False).trainer
    assert float(restart.temperature.detach()) == pytest.approx(2.0) and restart.scheduler.last_epoch == 0
    assert restart.optimizer.param_groups[0]["lr"] == pytest.approx(cfg.learning_rate / 100)
    assert not restart.temperature_optimizer.state  # fresh moments for the new lambda


def test_a_run_keeps_its_training_dynamics_through_a_resume(tmp_path):
    pre = pretrain(hopper_dataset(), MODEL, PRETRAIN, hopper, task="hopper-medium-v2", device="cpu", progress=False)
    assert [r["updates"] for r in pre.dynamics] == [10, 20, 30, 40]
    assert {"loss", "nll", "entropy", "temperature"} <= pre.dynamics[0].keys()
    run = finetune(pre.trainer, FINETUNE, hopper, seed=2, device="cpu", checkpoint=tmp_path / "ft.pt", progress=False)
    assert [r["round"] for r in run.dynamics] == list(range(1, run.final["round"] + 1))
    assert all(r["g_online"] == FINETUNE.g_online and r["temperature"] > 0 for r in run.dynamics)
    assert load_checkpoint(tmp_path / "ft.pt")["dynamics"] == run.dynamics
    again = finetune(pre.trainer, FINETUNE, hopper, seed=2, device="cpu", checkpoint=tmp_path / "ft.pt", progress=False)
    assert again.dynamics == run.dynamics
    rows = read_csv(run.write_dynamics(tmp_path / "dynamics.csv"))
    assert [r["updates"] for r in rows] == [r["updates"] for r in run.dynamics]
    assert rows[-1]["entropy"] == pytest.approx(run.dynamics[-1]["entropy"])
    assert math.isfinite(rows[-1]["nll"])


def test_length_and_return_sampling_probabilities_of_figure_f1():
    trajs = [constant(1.0, n, i) for i, n in enumerate([10, 20, 70])] + [constant(-1.0, 5, 3)]
    p = sampling_probabilities(trajs)
    np.testing.assert_allclose(p["p_length"], np.array([10, 20, 70, 5]) / 105)
    np.testing.assert_allclose(p["p_return"], [0.1, 0.2, 0.7, 0.0])  # a negative return is never drawn
    with pytest.raises(ValueError, match="positive return"):
        sampling_probabilities([constant(-1.0, 5, 0)])


def test_a_claim_holds_only_outside_the_spread_and_a_claim_of_two_arms_alike_never_holds():
    high, low = np.array([10.0, 12.0, 14.0]), np.array([1.0, 2.0, 3.0])  # means 12 and 2, stds 1.63 and 0.82
    wide = np.array([3.0, 12.0, 21.0])  # mean 12, std 7.35: 12 - 2 = 10 is outside it, 12 - 12 = 0 inside
    assert compare(high, low) == ("12.0 ± 1.6 vs 2.0 ± 0.8", "holds")
    assert compare(low, high)[1] == "does not hold"
    assert compare(high, wide)[1] == compare(wide, high)[1] == "inside the spread"
    assert compare(wide, low + 4.0)[1] == "inside the spread"  # 12 - 6 = 6 < 7.35: the larger std decides
    assert alike(high, wide) == ("12.0 ± 1.6 vs 12.0 ± 7.3", "consistent: inside the spread")
    assert alike(high, low)[1] == alike(low, high)[1] == "does not hold"

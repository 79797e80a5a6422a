"""Table 5.1's baselines: IQL's losses and value fit, offline IQL learning a task, DT's regression, SAC's loop."""
from __future__ import annotations

import functools
import re

import gymnasium as gym
import numpy as np
import pytest
import torch
from synthetic import episodes, policy_dataset

from odt import MemoryLogger, ModelConfig, OptimConfig, Trajectory
from odt.baselines.iql import IQL, IQLConfig, TransitionBuffer, advantage_weights, expectile_loss, iql, transitions
from odt.baselines.sac import SACConfig, sac
from odt.checkpoint import load_checkpoint
from odt.divergence import Diverged
from odt.evaluation import run_episodes
from odt.model import DecisionTransformer
from odt.replay import TrajectoryReplayBuffer
from odt.trainer import ODTTrainer


def test_expectile_loss_and_advantage_weights_match_hand_computed_values():
    diff = torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0])
    # |tau - 1(d < 0)| d^2 with tau = 0.7: negatives weigh 0.3, the rest 0.7
    expected = [0.3 * 4.0, 0.3 * 0.25, 0.0, 0.7 * 0.25, 0.7 * 9.0]
    torch.testing.assert_close(expectile_loss(diff, 0.7), torch.tensor(expected))
    torch.testing.assert_close(expectile_loss(diff, 0.5), 0.5 * diff.pow(2))  # tau 0.5: half the squared error
    q, v = torch.tensor([1.0, 2.0, 5.0, 0.0]), torch.tensor([1.0, 1.5, 1.0, 1.0])
    # exp(beta (q - v)) with beta 3, clipped at 100: exp(0)=1, exp(1.5), exp(12) -> 100, exp(-3)
    torch.testing.assert_close(advantage_weights(q, v, 3.0, 100.0),
                               torch.tensor([1.0, float(np.exp(1.5)), 100.0, float(np.exp(-3.0))]))


def sample_expectile(values: np.ndarray, tau: float) -> float:
    """The v with tau * sum_(x > v) (x - v) = (1 - tau) * sum_(x < v) (v - x): by bisection."""
    lo, hi = values.min(), values.max()
    for _ in range(100):
        v = (lo + hi) / 2
        grad = tau * np.clip(values - v, 0, None).sum() - (1 - tau) * np.clip(v - values, 0, None).sum()
        lo, hi = (v, hi) if grad > 0 else (lo, v)
    return float(v)


@pytest.mark.parametrize("tau", [0.7, 0.9])
def test_value_of_a_deterministic_chain_converges_to_the_expectile_of_the_returns(tau):
    """s0 -a-> s1 -b-> end, rewards a then b, the data's actions spread over [-1, 1].

    Q(s1, b) = b and V(s1) is the tau-expectile e of the data's b; Q(s0, a) = a + gamma e, so
    V(s0) = (1 + gamma) e (an expectile moves with a shift).
    """
    rng = np.random.default_rng(0)
    n, gamma = 4000, 0.9
    actions = rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0], size=(n, 2))
    s0, s1 = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    buffer = TransitionBuffer(2 * n, 2, 1)
    buffer.add(
        obs=np.tile(s0, (n, 1)), act=actions[:, :1], rew=actions[:, 0], next_obs=np.tile(s1, (n, 1)), done=np.zeros(n)
    )
    buffer.add(
        obs=np.tile(s1, (n, 1)), act=actions[:, 1:], rew=actions[:, 1], next_obs=np.tile(s1, (n, 1)), done=np.ones(n)
    )
    torch.manual_seed(0)
    cfg = IQLConfig(hidden_dim=32, learning_rate=3e-3, batch_size=512, discount=gamma, tau=0.05, expectile=tau)
    agent = IQL(2, 1, cfg, total_updates=3000)
    for _ in range(3000):
        agent.update(buffer.sample(cfg.batch_size, rng))
    e = sample_expectile(actions[:, 1], tau)
    with torch.no_grad():
        v = agent.nets.value(torch.tensor(np.stack([s0, s1]))).squeeze(-1).numpy()
    assert e > 0.15  # an upper expectile: well above the mean (0) of the data's actions
    np.testing.assert_allclose(v, [(1 + gamma) * e, e], atol=0.05)


def good_mountain_car_data(n: int, rng: np.random.Generator) -> list[Trajectory]:
    """Push in the direction of motion (a known solution), with a little noise: short, successful episodes."""
    def push(obs: np.ndarray) -> np.ndarray:
        return np.clip([1.0 if obs[1] >= 0 else -1.0] + rng.normal(0, 0.1, 1), -1, 1).astype(np.float32)

    return episodes(gym.make("MountainCarContinuous-v0"), push, n)


def test_offline_iql_on_a_good_policys_data_beats_random():
    rng = np.random.default_rng(0)
    data = good_mountain_car_data(15, rng)
    assert all(t.terminals[-1] for t in data) and np.mean([t.episode_return for t in data]) > 80
    cfg = IQLConfig(hidden_dim=64, offline_updates=1500, online_samples=0, log_every=500, eval_episodes=4)
    env_fn = functools.partial(gym.make, "MountainCarContinuous-v0")
    logger = MemoryLogger()
    run = iql(data, cfg, env_fn, seed=0, logger=logger, progress=False)
    envs = gym.vector.SyncVectorEnv([env_fn] * 4)

    random = run_episodes(lambda o: rng.uniform(-1, 1, (len(o), 1)), envs, [0, 1, 2, 3])
    assert run.final["eval_return"] > 70 > random.returns.mean()  # the goal reached, as the data did
    assert [s for s, _ in logger.rows] == [500, 1000, 1500] and "eval_return" in logger.rows[-1][1]


def test_iql_transitions_keep_the_next_state_and_drop_a_cut_off_last_step():
    data = policy_dataset(n_traj=2, length=4, obs_dim=3)
    data[1].terminals[-1] = True  # the first is cut off (time limit), the second ends in a terminal state
    t = transitions(data, scale=2.0, shift=-1.0)
    assert t["obs"].shape == (3 + 4, 3)  # 3 steps of the cut-off one, all 4 of the terminal one
    np.testing.assert_array_equal(t["next_obs"][:3], data[0].observations[1:4])
    np.testing.assert_allclose(t["rew"][:3], data[0].rewards[:3] * 2.0 - 1.0)
    assert t["done"].tolist() == [0, 0, 0, 0, 0, 0, 1]


def test_dt_is_odts_model_with_a_deterministic_head_and_its_mse_falls_ten_fold():
    trajs = policy_dataset()
    cfg = ModelConfig(state_dim=6, act_dim=2, context_len=5, embed_dim=32, n_layer=1, n_head=1, dropout=0.0,
                      stochastic=False, use_positional_embedding=True)
    trainer = ODTTrainer(cfg, OptimConfig(optimizer="adamw", batch_size=32, learning_rate=3e-3, weight_decay=1e-4,
                                          warmup_steps=20), TrajectoryReplayBuffer(1000, trajs), device="cpu")
    assert type(trainer.model) is DecisionTransformer and trainer.model.log_std_head is None
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    first = trainer.train_updates(20)["loss"]
    trainer.train_updates(300)
    last = trainer.train_updates(20)["loss"]
    assert last < first / 10, (first, last)
    assert "temperature" not in trainer.train_updates(1)  # no entropy constraint without a stochastic head


def test_sac_runs_logs_and_resumes_from_its_checkpoint(tmp_path):
    cfg = SACConfig(hidden_dim=32, batch_size=32, online_samples=400, random_steps=100, eval_every=200, eval_episodes=2,
                    log_every=100, checkpoint_every=50)
    env_fn = functools.partial(gym.make, "Hopper-v5")

    class Killed(MemoryLogger):
        def log(self, metrics, step):
            super().log(metrics, step)
            if step > 250:
                raise KeyboardInterrupt  # as a kill would, after a checkpoint

    with pytest.raises(KeyboardInterrupt):
        sac(
            cfg,
            env_fn,
            task="hopper-medium-v2",
            seed=0,
            logger=Killed(),
            checkpoint=tmp_path / "sac.pt",
            progress=False,
        )
    saved = load_checkpoint(tmp_path / "sac.pt")
    assert 0 < saved["num_timesteps"] < 400 and saved["buffer"]["observations"].shape[0] == saved["num_timesteps"]
    logger = MemoryLogger()
    run = sac(
        cfg, env_fn, task="hopper-medium-v2", seed=0, logger=logger, checkpoint=tmp_path / "sac.pt", progress=False
    )
    assert [e["online_samples"] for e in run.evaluations] == [0, 200, 400]
    assert run.trainer.num_timesteps == 400 and run.trainer._n_updates > 0
    assert logger.rows[0][0] > saved["num_timesteps"]  # continued from the checkpoint, not from the start
    assert all("wall_time" in row for _, row in logger.rows) and logger.rows[-1][1]["online_samples"] == 400
    assert {"actor_loss", "critic_loss", "ent_coef"} <= set(logger.rows[-1][1])


def test_a_diverging_iql_or_sac_stops_at_its_update_with_one_line_and_saves_no_nan(tmp_path):
    env_fn = functools.partial(gym.make, "Hopper-v5")
    rng = np.random.default_rng(0)
    data = episodes(env_fn(), lambda obs: rng.uniform(-1, 1, 3).astype(np.float32), 6, max_steps=40)
    cfg = IQLConfig(hidden_dim=16, batch_size=16, offline_updates=20, online_samples=0, log_every=10,
                    checkpoint_every=10, eval_every=50, eval_episodes=2, learning_rate=1e6)
    with pytest.raises(Diverged) as err:  # the first value step blows V up: Q's backup is infinite at once
        iql(data, cfg, env_fn, task="hopper-medium-v2", seed=2, checkpoint=tmp_path / "iql.pt", progress=False)
    assert str(err.value) == ("iql hopper-medium-v2 seed 2 diverged at update 1: the critic loss is inf; "
                              "lower iql.learning_rate (1000000.0)")
    assert not (tmp_path / "iql.pt").exists()

    cfg = SACConfig(hidden_dim=16, batch_size=16, online_samples=300, eval_every=100, eval_episodes=2, log_every=50,
                    checkpoint_every=20, learning_rate=1e6)
    with pytest.raises(Diverged) as err:
        sac(cfg, env_fn, task="hopper-medium-v2", seed=0, checkpoint=tmp_path / "sac.pt", progress=False)
    assert re.fullmatch(
        r"sac hopper-medium-v2 seed 0 diverged at update \d+: the (critic loss|actor loss|ent coef loss|"
        r"ent coef|weight norm) is (nan|inf); lower sac\.learning_rate \(1000000\.0\)",
        str(err.value),
    )
    saved = load_checkpoint(tmp_path / "sac.pt")  # the last checkpoint before: finite, and older than the divergence
    assert saved["n_updates"] < err.value.step
    assert all(torch.isfinite(t).all() for t in saved["params"]["policy"].values())


def test_iql_killed_in_either_phase_resumes_to_the_numbers_of_an_uninterrupted_run(tmp_path):
    env_fn = functools.partial(gym.make, "Hopper-v5")
    rng = np.random.default_rng(0)
    data = episodes(env_fn(), lambda obs: rng.uniform(-1, 1, 3).astype(np.float32), 6, max_steps=40)
    cfg = IQLConfig(hidden_dim=16, batch_size=16, offline_updates=30, online_samples=120, log_every=10,
                    checkpoint_every=10, eval_every=40, eval_episodes=2)
    logger = MemoryLogger()
    whole = iql(data, cfg, env_fn, task="hopper-medium-v2", seed=1, logger=logger, progress=False)
    assert [e["online_samples"] for e in whole.evaluations] == [0, 40, 80, 120]
    assert whole.offline_score == whole.evaluations[0]
    assert whole.num_updates == whole.trainer.num_updates == 150
    steps = [s for s, _ in logger.rows]
    assert steps[:3] == [10, 20, 30] and steps == sorted(set(steps))  # offline blocks, then one row per step at most

    class Killed(MemoryLogger):
        def __init__(self, after):
            super().__init__()
            self.after = after

        def log(self, metrics, step):
            super().log(metrics, step)
            if step > self.after:
                raise KeyboardInterrupt  # as a kill would, after the checkpoint before it

    for after in (15, 70):  # offline, then online
        with pytest.raises(KeyboardInterrupt):
            iql(data, cfg, env_fn, task="hopper-medium-v2", seed=1, logger=Killed(after),
                checkpoint=tmp_path / "iql.pt", progress=False)
        assert load_checkpoint(tmp_path / "iql.pt")["agent"]["updates"] <= after
    again = MemoryLogger()
    run = iql(data, cfg, env_fn, task="hopper-medium-v2", seed=1, logger=again, checkpoint=tmp_path / "iql.pt",
              progress=False)
    assert run.evaluations == whole.evaluations
    assert all(torch.equal(a, b) for a, b in zip(run.trainer.nets.parameters(), whole.trainer.nets.parameters()))
    def rows(log, start):  # without wall_time, which differs
        return [(step, {k: v for k, v in row.items() if k != "wall_time"}) for step, row in log.rows if step >= start]

    assert rows(again, 0) == rows(logger, again.rows[0][0])  # the rows after the checkpoint, logged again

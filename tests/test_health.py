"""Run health: across seeds, pretraining on good data ends near its best evaluation, not past a collapse."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
from test_baselines import good_mountain_car_data

from odt import ModelConfig, PretrainConfig, pretrain

# the fraction of its best evaluation a run's final evaluation keeps: a collapse like the one the cpu
# profile once showed (60-75 down to about 20) keeps 0.3
KEEP = 0.9


def test_pretraining_ends_near_its_best_evaluation_on_every_seed():
    data = good_mountain_car_data(20, np.random.default_rng(0))
    assert np.mean([t.episode_return for t in data]) > 80  # the goal reached in every episode
    model = ModelConfig(state_dim=2, act_dim=1, context_len=5, embed_dim=32, n_layer=1, n_head=1, max_ep_len=1000)
    cfg = PretrainConfig(pretrain_updates=600, batch_size=32, learning_rate=1e-3, warmup_steps=100, g_eval=95.0,
                         eval_context_len=5, eval_episodes=3, log_every=100, eval_every=100, checkpoint_every=600)
    for seed in range(3):
        run = pretrain(data, model, cfg, lambda: gym.make("MountainCarContinuous-v0"), seed=seed, device="cpu",
                       progress=False)
        scores = [e["eval_return"] for e in run.evaluations]
        assert [e["updates"] for e in run.evaluations] == list(range(100, 601, 100))
        assert max(scores) > 70, (seed, scores)  # it learned the task (a random policy scores below 0)
        assert scores[-1] >= KEEP * max(scores), (seed, scores)

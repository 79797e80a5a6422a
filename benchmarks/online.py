"""Online phases side by side: environment steps per second of ODT's finetuning, IQL's and SAC's (Hopper).

Each side is its library loop run for the same number of online samples, with the `cpu`
profile's settings (ODT d64 L2, batch 64, 100 updates per round; IQL and SAC 128-unit
layers, batch 256, one update per environment step), one evaluation episode at the start
and at the end, torch on one thread. ODT starts from a freshly built trainer on
synthetic Hopper-shaped data; IQL with no offline updates; SAC from scratch with its random
phase at a tenth of the budget. The figures are ratios to ODT, measured in one process
with the order rotated each repeat.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from benchmarks.common import Figure, Result, interleaved, synthetic_trajectories
from odt import FinetuneConfig, ModelConfig, OptimConfig, TrajectoryReplayBuffer, finetune
from odt.baselines.iql import IQLConfig, iql
from odt.baselines.sac import SACConfig, sac
from odt.trainer import ODTTrainer


def hopper() -> gym.Env:
    return gym.make("Hopper-v5")


def run(*, samples: int = 3000, repeats: int = 3) -> Result:
    torch.set_num_threads(1)
    data = synthetic_trajectories(50, min_len=50, max_len=300, seed=0)
    model = ModelConfig(state_dim=11, act_dim=3, context_len=10, embed_dim=64, n_layer=2, n_head=2)
    big = samples * 10  # no evaluation between the first and the last
    sides = {
        "ODT": lambda: finetune(
            ODTTrainer(model, OptimConfig(batch_size=64), TrajectoryReplayBuffer(100, data), device="cpu"),
            FinetuneConfig(
                batch_size=64,
                buffer_size=100,
                updates_per_round=100,
                online_samples=samples,
                eval_episodes=1,
                eval_every_rounds=big,
                eval_context_len=5,
            ),
            hopper,
            device="cpu",
            progress=False,
        ),
        "IQL": lambda: iql(
            data,
            IQLConfig(
                hidden_dim=128,
                offline_updates=0,
                online_samples=samples,
                eval_every=big,
                eval_episodes=1,
                log_every=big,
            ),
            hopper,
            progress=False,
        ),
        "SAC": lambda: sac(
            SACConfig(hidden_dim=128, online_samples=samples, eval_every=big, eval_episodes=1, log_every=big),
            hopper,
            progress=False,
        ),
    }
    timings = interleaved(sides, repeats)
    rates = {name: [int(run.final["online_samples"]) / seconds for seconds, run in timings[name]] for name in sides}
    figures = [Figure(f"{name} online env steps/s vs ODT's", [r / o for r, o in zip(rates[name], rates["ODT"])], "x")
               for name in ("IQL", "SAC")]
    rows = [{"algorithm": name, "env steps/s (median)": round(float(np.median(r)), 1),
             "min": round(min(r), 1), "max": round(max(r), 1)} for name, r in rates.items()]
    notes = [
        f"{samples} online samples per side, {repeats} repeats, order rotated; torch 1 thread. "
        "ODT: 100 updates per round of about one episode (about 0.5-4 updates per step at these episode "
        "lengths, with its batched rollout); IQL and SAC: one update per step, 128-unit layers (the cpu profile's)."
    ]
    return Result("online", "Online phases: environment steps/s of ODT, IQL and SAC", figures, rows, notes)


if __name__ == "__main__":
    import json

    print(json.dumps(run(samples=300, repeats=1).to_dict(), indent=1, default=str))

"""Update step: ODTTrainer.update vs forward + backward + optimiser step alone.

`update` does everything one gradient step of ODT needs: sample a batch, move it to the
device, forward, policy loss, backward, gradient clipping, LAMB, learning-rate schedule
and the dual step on the temperature. The bare step is forward, the same policy loss,
backward and the same LAMB instance on one batch sampled beforehand and already on the
device. The ratio is the cost of everything around the network.
"""
from __future__ import annotations

import numpy as np
import torch

from benchmarks.common import ACT_DIM, OBS_DIM, Figure, Result, at_most, interleaved, synthetic_trajectories
from odt.config import ModelConfig, OptimConfig
from odt.losses import TanhNormal, policy_loss
from odt.replay import TrajectoryReplayBuffer
from odt.trainer import ODTTrainer
from odt.update_graph import to_device

TARGET = 1.10
CONFIGS = {  # name: (embed_dim, n_layer, n_head)
    "small": (128, 3, 1),
    "paper": (512, 4, 4),  # Appendix C, Table C.1
}


def make_trainer(
    config: str | tuple[int, int, int],
    *,
    batch_size: int = 256,
    context_len: int = 20,
    n_traj: int = 200,
    device: str = "auto",
    seed: int = 0,
    cuda_graph: bool | None = None,
) -> ODTTrainer:
    d, L, H = CONFIGS[config] if isinstance(config, str) else config
    trajs = synthetic_trajectories(n_traj, min_len=20, max_len=1000, seed=seed)
    model_cfg = ModelConfig(
        state_dim=OBS_DIM, act_dim=ACT_DIM, context_len=context_len, embed_dim=d, n_layer=L, n_head=H
    )
    return ODTTrainer(
        model_cfg,
        OptimConfig(batch_size=batch_size),
        TrajectoryReplayBuffer(len(trajs), trajs),
        seed=seed,
        device=device,
        cuda_graph=cuda_graph,
    )


def bare_step_fn(trainer: ODTTrainer):
    """Forward, policy loss, backward, LAMB step on one fixed batch already on the device."""
    batch = to_device(trainer._sample(), trainer.device)
    # normalised, as the update's first line does
    batch["states"] = (batch["states"] - trainer._mean_t) / trainer._std_t
    model, opt, dev = trainer.model, trainer.optimizer, trainer.device
    temperature = trainer.temperature.detach()

    def step() -> None:
        model.train()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            mean, log_std = model(
                batch["states"], batch["actions"], batch["returns_to_go"], batch["timesteps"], batch["mask"]
            )
        loss, _, _ = policy_loss(
            TanhNormal(mean.float(), log_std.float()), batch["actions"], batch["mask"], temperature
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def run(
    *,
    configs: dict[str, int] | None = None,
    repeats: int | dict[str, int] = 5,
    batch_size: int = 256,
    context_len: int = 20,
    device: str = "auto",
) -> Result:
    """`configs` maps a CONFIGS name (or an (embed, layers, heads) tuple) to updates per timed sample."""
    configs = configs or {"small": 3, "paper": 1}
    figures, rows = [], []
    for name, n in configs.items():
        reps = repeats[name] if isinstance(repeats, dict) else repeats
        trainer = make_trainer(name, batch_size=batch_size, context_len=context_len, device=device)
        sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
        bare = bare_step_fn(trainer)

        def full() -> None:
            for _ in range(n):
                trainer.update()
            sync()

        def alone() -> None:
            for _ in range(n):
                bare()
            sync()

        full(), alone()  # warm-up: allocator, kernels, optimiser state
        t = interleaved({"update": full, "bare": alone}, reps)
        ratio = [u / b for (u, _), (b, _) in zip(t["update"], t["bare"])]
        d, L, H = CONFIGS[name] if isinstance(name, str) else name
        label = f"{name} (d{d} L{L} H{H})" if isinstance(name, str) else f"d{d} L{L} H{H}"
        figures.append(Figure(f"ODTTrainer.update / bare step, {label}", ratio, "x", f"<= {TARGET:.2f}x",
                              at_most(float(np.median(ratio)), TARGET)))
        for side in ("update", "bare"):
            secs = [s / n for s, _ in t[side]]
            rows.append({"config": label, "step": side, "median_s": float(np.median(secs)),
                         "min_s": float(np.min(secs)), "max_s": float(np.max(secs)), "repeats": reps,
                         "updates_per_repeat": n, "device": trainer.device.type})
    notes = [f"B={batch_size}, K={context_len}, obs 11, act 3; bare step = forward + policy loss + backward + "
             "LAMB step on a batch sampled beforehand and already on the device."]
    return Result("update", "Update step", figures, rows, notes)

"""Pretraining on the CPU: updates/s with 1 and with all torch threads, on an idle and on a loaded machine.

torch's OpenMP threads spin-wait for each other at every parallel region; on a machine
where another process holds a core, a thread that loses its core stalls the others. This
measures what that costs the pretraining update (the quick and cpu profiles' models), side
by side in one process with the order rotated: first as the machine is, then with one
busy-loop process per core but one running (started here and stopped by its pid). The
pipeline's default of one torch thread per seed, pretraining's included, follows from it (README, "Pipeline").

    python -m benchmarks.run --only threads
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import torch

from benchmarks.common import ACT_DIM, OBS_DIM, Figure, Result, interleaved, synthetic_trajectories
from odt.config import ModelConfig, PretrainConfig
from odt.replay import TrajectoryReplayBuffer
from odt.trainer import ODTTrainer

CONFIGS = {  # name: ModelConfig and PretrainConfig values of the profile's pretraining
    "quick": (dict(context_len=10, embed_dim=32, n_layer=1, n_head=2), dict(batch_size=64)),
    "cpu": (dict(context_len=10, embed_dim=64, n_layer=2, n_head=2), dict(batch_size=64)),
}


def make_trainer(config: str, transitions: int) -> ODTTrainer:
    model, optim = CONFIGS[config]
    trajs = synthetic_trajectories(max(1, transitions // 500), total=transitions, seed=0)
    return ODTTrainer(ModelConfig(state_dim=OBS_DIM, act_dim=ACT_DIM, use_positional_embedding=False, **model),
                      PretrainConfig(**optim), TrajectoryReplayBuffer(len(trajs), trajs), device="cpu")


def busy_loops(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:  # only the processes started here, by their pid
        p.kill()
        p.wait()


def measure(trainer: ODTTrainer, threads: list[int], updates: int, repeats: int) -> dict[int, list[float]]:
    def timed_at(n_threads: int):
        def run() -> None:
            torch.set_num_threads(n_threads)
            trainer.train_updates(updates)
        return run

    timed_at(threads[-1])()  # warm-up
    t = interleaved({n: timed_at(n) for n in threads}, repeats)
    return {n: [updates / s for s, _ in t[n]] for n in threads}


def run(*, configs: tuple[str, ...] = ("quick", "cpu"), updates: int = 20, repeats: int = 3,
        transitions: int = 20_000) -> Result:
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        return Result("threads", "Pretraining threads under load", skipped="one core: nothing to compare")
    before = torch.get_num_threads()
    threads = [1, cores]
    figures, rows = [], []
    try:
        for config in configs:
            trainer = make_trainer(config, transitions)
            for load in ("idle", "loaded"):
                procs = busy_loops(cores - 1) if load == "loaded" else []
                before_load = os.getloadavg()[0]
                try:
                    rates = measure(trainer, threads, updates, repeats)
                finally:
                    stop(procs)
                load_avg = f"{before_load:.2f} -> {os.getloadavg()[0]:.2f}"
                ratio = [a / b for a, b in zip(rates[1], rates[cores])]
                figures.append(
                    Figure(f"{config} pretraining, {load}: updates/s with 1 thread / with {cores}", ratio, "x")
                )
                for n in threads:
                    rows.append({"config": config, "machine": load, "threads": n,
                                 "median_updates_per_s": float(np.median(rates[n])),
                                 "min": float(np.min(rates[n])), "max": float(np.max(rates[n])),
                                 "load_average_1m": load_avg})
    finally:
        torch.set_num_threads(before)
    notes = [f"{updates} updates per timing, {repeats} repeats, order rotated; synthetic hopper-shaped data "
             f"({transitions} transitions); models: " + "; ".join(
                 f"{c} d{CONFIGS[c][0]['embed_dim']} L{CONFIGS[c][0]['n_layer']} K{CONFIGS[c][0]['context_len']} "
                 f"B{CONFIGS[c][1]['batch_size']}" for c in configs),
             f"loaded: {cores - 1} busy-loop process(es) (`python -c 'while True: pass'`) beside the benchmark; "
             "idle: the machine as it was, other users' work included (the 1-minute load average before -> after "
             "each measurement is in the table; on an idle machine it stays near 1, the benchmark's own load)."]
    return Result("threads", "Pretraining threads under load", figures, rows, notes)

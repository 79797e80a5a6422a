"""Memory: peak and steady-state RSS of pretraining on a 1M-transition dataset.

A synthetic dataset with D4RL hopper shapes (obs 11, act 3, ~1000 trajectories) is
written as a D4RL-layout HDF5 file; a fresh child process then does what the pretrain
stage does (load the file, build the replay buffer, build the trainer, run a few updates
of a tiny model) and reports its RSS after each step, its peak RSS, and the bytes of
data that the dataset list and the replay buffer hold between them (distinct
allocations, found by following numpy views to the memory that owns them). The dataset
list is kept alive to the end, as a stage's main() would keep it.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import torch

from benchmarks.common import ACT_DIM, OBS_DIM, Figure, Result, at_most, synthetic_trajectories
from odt.config import ModelConfig, OptimConfig
from odt.data import Trajectory
from odt.datasets.hdf5 import load_d4rl_hdf5
from odt.replay import TrajectoryReplayBuffer
from odt.trainer import ODTTrainer

MAX_COPIES = 1.1  # the buffer adds a returns-to-go column (4 of 65 bytes per transition)


def write_dataset(path: Path, transitions: int, n_traj: int, seed: int = 0) -> int:
    """D4RL layout: flat observations/actions/rewards/terminals/timeouts. Returns the data's bytes."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(500, 1500, size=n_traj)
    lengths = np.maximum(1, np.floor(lengths / lengths.sum() * transitions)).astype(np.int64)
    lengths[-1] += transitions - lengths.sum()
    ends = np.cumsum(lengths) - 1
    terminals = np.zeros(transitions, bool)
    timeouts = np.zeros(transitions, bool)
    terminals[ends[::2]] = True  # half end by falling, half by the time limit
    timeouts[ends[1::2]] = True
    with h5py.File(path, "w") as f:
        f["observations"] = rng.standard_normal((transitions, OBS_DIM), dtype=np.float32)
        f["actions"] = rng.uniform(-1, 1, (transitions, ACT_DIM)).astype(np.float32)
        f["rewards"] = rng.uniform(0, 5, transitions).astype(np.float32)
        f["terminals"] = terminals
        f["timeouts"] = timeouts
    return transitions * (4 * OBS_DIM + 4 * ACT_DIM + 4 + 1)  # what a list of Trajectory holds


def load(path: Path) -> list[Trajectory]:
    """The dataset through the project's loader (odt/datasets/hdf5.py)."""
    return load_d4rl_hdf5(path)


def _owner(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def held_bytes(arrays) -> int:
    """Bytes of the distinct allocations behind `arrays` (views count once, with their owner)."""
    owners: dict[int, int] = {}
    for a in arrays:
        o = _owner(a)
        owners[id(o)] = o.nbytes if o.base is None else max(owners.get(id(o), 0), a.nbytes)
    return sum(owners.values())


def _rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) in MB, from /proc.

    VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across execve, so a child
    started by a large parent (the update benchmark's paper-size model) would report the
    parent's peak as its own.
    """
    cur = peak = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return cur, peak


def child(path: Path, updates: int) -> dict:
    torch.set_num_threads(1)
    model_cfg = ModelConfig(state_dim=OBS_DIM, act_dim=ACT_DIM, context_len=10, embed_dim=32, n_layer=1, n_head=1)
    cfg = OptimConfig(batch_size=32)
    # warm up on a tiny dataset first, so that the runtime's own memory (torch kernels,
    # optimiser, autograd) is in the starting RSS and the growth below is the data's
    warm = ODTTrainer(model_cfg, cfg, TrajectoryReplayBuffer(10, synthetic_trajectories(10, max_len=50)), device="cpu")
    warm.train_updates(updates)
    del warm
    gc.collect()
    out = {"rss_start_mb": _rss_mb()[0]}
    trajs = load(path)
    gc.collect()
    out["rss_loaded_mb"] = _rss_mb()[0]
    buffer = TrajectoryReplayBuffer(len(trajs), trajs)
    gc.collect()
    out["rss_buffer_mb"] = _rss_mb()[0]
    trainer = ODTTrainer(model_cfg, cfg, buffer, device="cpu")
    trainer.train_updates(updates)
    del buffer
    gc.collect()
    out["rss_steady_mb"], out["rss_peak_mb"] = _rss_mb()
    data = [a for t in trajs for a in (t.observations, t.actions, t.rewards, t.terminals)]
    buf = trainer.buffer
    data += [buf.observations, buf.actions, buf.rewards, buf.returns_to_go, buf.terminals]
    out["held_bytes"] = held_bytes(data)
    out["trajectories"] = len(trajs)
    out["transitions"] = buf.num_transitions
    return out


def run(*, transitions: int = 1_000_000, n_traj: int = 1000, updates: int = 3) -> Result:
    with tempfile.TemporaryDirectory(prefix="odt-bench-mem-") as tmp:
        path = Path(tmp) / "hopper-synthetic.hdf5"
        data_bytes = write_dataset(path, transitions, n_traj)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.memory", "--child", str(path), "--updates", str(updates)],
            capture_output=True, text=True, env=env, check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"memory benchmark child failed: {proc.stderr.strip()[-2000:]}")
        m = json.loads(proc.stdout.strip().splitlines()[-1])
    data_mb = data_bytes / 2**20
    copies = m["held_bytes"] / data_bytes
    rss_copies = (m["rss_steady_mb"] - m["rss_start_mb"]) / data_mb
    figures = [
        Figure("data held by dataset list + replay buffer / dataset size", [copies], "x",
               f"<= {MAX_COPIES}x (one copy)", at_most(copies, MAX_COPIES)),
        Figure("steady RSS growth after loading / dataset size", [rss_copies], "x"),
        Figure("peak RSS of the pretraining process", [m["rss_peak_mb"]], "MB"),
    ]
    rows = [{"stage": k.removeprefix("rss_").removesuffix("_mb"), "rss_mb": round(v, 1)}
            for k, v in m.items() if k.startswith("rss_")]
    rows.append({"stage": "dataset size (obs, act, rew, terminals)", "rss_mb": round(data_mb, 1)})
    notes = [f"{m['transitions']} transitions in {m['trajectories']} trajectories; tiny model (d32 L1), "
             f"{updates} updates; rss start is after a warm-up run on a tiny dataset (runtime memory included)."]
    return Result("memory", "Memory", figures, rows, notes)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", type=Path, required=True, help="HDF5 dataset to pretrain on (internal)")
    p.add_argument("--updates", type=int, default=3)
    args = p.parse_args(argv)
    print(json.dumps(child(args.child, args.updates)))


if __name__ == "__main__":
    main()

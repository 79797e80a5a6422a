"""What every benchmark shares: side-by-side timing, result records, synthetic data, machine facts."""
from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import gymnasium
import numpy as np
import torch

from odt.data import Trajectory

# D4RL hopper shapes
OBS_DIM, ACT_DIM = 11, 3


@dataclass
class Figure:
    """One measured quantity: per-repeat values, summarised as median [min, max]."""

    name: str
    values: list[float]
    unit: str  # "x" for ratios, "%", "min", "MB", ...
    target: str = ""  # human-readable, e.g. ">= 100x"; empty: informational
    met: bool | None = None  # None: no target, or not measurable here

    @property
    def median(self) -> float:
        return float(statistics.median(self.values))

    @property
    def min(self) -> float:
        return float(min(self.values))

    @property
    def max(self) -> float:
        return float(max(self.values))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "median": self.median, "min": self.min, "max": self.max}


@dataclass
class Result:
    key: str  # module name: sampler, update, rollout, memory, logging, e2e, gpu
    title: str
    figures: list[Figure] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)  # supporting measurements, one table
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None  # why nothing was measured (no GPU, pipeline not there yet)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "figures": [f.to_dict() for f in self.figures],
                "rows": self.rows, "notes": self.notes, "skipped": self.skipped}


def at_least(value: float, bound: float) -> bool:
    return math.isfinite(value) and value >= bound


def at_most(value: float, bound: float) -> bool:
    return math.isfinite(value) and value <= bound


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[tuple[float, Any]]]:
    """Run every function once per repeat, rotating the order each repeat.

    Returns, per name, a list of (seconds, return value). Rotating the order means a
    burst of load from another process hits each side about equally often.
    """
    names = list(fns)
    out: dict[str, list[tuple[float, Any]]] = {n: [] for n in names}
    for r in range(repeats):
        shift = r % len(names)
        for n in names[shift:] + names[:shift]:
            out[n].append(timed(fns[n]))
    return out


def synthetic_trajectories(
    n_traj: int,
    *,
    min_len: int = 20,
    max_len: int = 1000,
    total: int | None = None,
    obs_dim: int = OBS_DIM,
    act_dim: int = ACT_DIM,
    seed: int = 0,
) -> list[Trajectory]:
    """Random trajectories of varying length with hopper shapes.

    With `total`, lengths are rescaled so that they sum to exactly `total` transitions.
    Values do not matter to any benchmark, only shapes and lengths.
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, size=n_traj)
    if total is not None:
        lengths = np.maximum(1, np.floor(lengths / lengths.sum() * total)).astype(np.int64)
        lengths[-1] += total - lengths.sum()
    out = []
    for n in lengths:
        out.append(Trajectory(
            rng.standard_normal((n, obs_dim), dtype=np.float32),
            rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
            rng.uniform(0, 5, size=n).astype(np.float32),
            np.zeros(n, dtype=bool),
        ))
    return out


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare numbers: CPU, cores, threads, library versions, load."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem_gib = None
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(mem_gib, 1) if mem_gib else None,
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "gymnasium": gymnasium.__version__,
        "os": platform.platform(),
        "load_average_1m": round(load[0], 2) if load else None,
    }

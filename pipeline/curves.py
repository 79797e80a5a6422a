"""Learning curves over seeds: per-seed CSV files, their mean and std, and the plot."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from odt.atomic import atomic_path, write_text

COLUMNS = ["round", "online_samples", "eval_return", "eval_return_std", "eval_normalized", "eval_normalized_std"]


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    """Floats as repr (they read back exactly)."""
    fmt = lambda v: repr(float(v)) if isinstance(v, (float, np.floating)) else str(v)  # noqa: E731
    lines = [",".join(columns)] + [",".join(fmt(r.get(c, "")) for c in columns) for r in rows]
    return write_text(path, "\n".join(lines) + "\n")


def read_csv(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def aggregate(curves: list[list[dict[str, float]]], budget: int, points: int = 21) -> list[dict[str, float]]:
    """Mean and std over seeds of normalized return vs online samples.

    Seeds evaluate at different sample counts (episode lengths differ), so each curve is
    linearly interpolated onto `points` evenly spaced sample counts in [0, budget].
    """
    grid = np.linspace(0, budget, points)
    ys = []
    for c in curves:
        x = np.array([r["online_samples"] for r in c], dtype=float)
        x[-1] = min(x[-1], budget)  # the final evaluation (first past the budget) is the score at the budget
        ys.append(np.interp(grid, x, [r["eval_normalized"] for r in c]))
    ys = np.stack(ys)
    mean, std = ys.mean(axis=0), ys.std(axis=0)
    return [{"online_samples": float(x), "mean": float(m), "std": float(s), "lower": float(m - s), "upper": float(m + s),
             "seeds": len(curves)} for x, m, s in zip(grid, mean, std)]


def summarize(results: list[dict[str, Any]]) -> dict[str, float]:
    """Offline and online normalized return, mean and std (ddof 0) over seeds."""
    off = np.array([r["offline_normalized"] for r in results])
    on = np.array([r["online_normalized"] for r in results])
    return {"seeds": len(results), "offline_mean": float(off.mean()), "offline_std": float(off.std()),
            "online_mean": float(on.mean()), "online_std": float(on.std()), "delta": float(on.mean() - off.mean())}


def plot(path: Path, curve: list[dict[str, float]], *, title: str, paper_online: float | None = None,
         offline: float | None = None) -> Path:
    """Mean line and +-std band; the paper's online score dashed. PNG, written atomically."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    x = np.array([r["online_samples"] for r in curve])
    mean = np.array([r["mean"] for r in curve])
    std = np.array([r["std"] for r in curve])
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(x, mean, color="C3", label=f"ODT (ours), mean over {int(curve[0]['seeds'])} seeds")
    ax.fill_between(x, mean - std, mean + std, color="C3", alpha=0.25, label="+-1 std")
    if offline is not None:
        ax.axhline(offline, color="grey", linestyle=":", label="ours, pretrained")
    if paper_online is not None and np.isfinite(paper_online):
        ax.axhline(paper_online, color="k", linestyle="--", label="paper, ODT online (Table 5.1)")
    ax.set_xlabel("online samples")
    ax.set_ylabel("normalized return")
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return Path(path)

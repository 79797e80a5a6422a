"""Learning curves over seeds: per-seed CSV files, their mean and std, and the plot."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from odt.atomic import atomic_path, write_text

# a curve.csv row: x columns, then these
SCORES = ["eval_return", "eval_return_std", "eval_normalized", "eval_normalized_std"]


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    """Floats as repr (they read back exactly)."""
    def fmt(v) -> str:
        return repr(float(v)) if isinstance(v, (float, np.floating)) else str(v)

    lines = [",".join(columns)] + [",".join(fmt(r.get(c, "")) for c in columns) for r in rows]
    return write_text(path, "\n".join(lines) + "\n")


def read_csv(path: Path) -> list[dict[str, float]]:
    """The rows `write_csv` wrote: numbers as floats, empty cells left out, text (a sweep's phase) kept."""
    def value(v: str) -> float | str:
        try:
            return float(v)
        except ValueError:
            return v

    with open(path, newline="") as f:
        return [{k: value(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def aggregate(
    curves: list[list[dict[str, float]]], budget: int, points: int = 21, x: str = "online_samples"
) -> list[dict[str, float]]:
    """Mean and std over seeds of normalized return vs `x` (online samples).

    Seeds evaluate at different sample counts (episode lengths differ), so each curve is
    linearly interpolated onto `points` evenly spaced values in [0, budget].
    """
    grid = np.linspace(0, budget, points)
    ys = []
    for c in curves:
        xs = np.array([r[x] for r in c], dtype=float)
        xs[-1] = min(xs[-1], budget)  # the final evaluation (first past the budget) is the score at the budget
        ys.append(np.interp(grid, xs, [r["eval_normalized"] for r in c]))
    ys = np.stack(ys)
    mean, std = ys.mean(axis=0), ys.std(axis=0)
    return [{x: float(g), "mean": float(m), "std": float(s), "lower": float(m - s), "upper": float(m + s),
             "seeds": len(curves)} for g, m, s in zip(grid, mean, std)]


def summarize(results: list[dict[str, Any]], scores: dict[str, str] | None = None) -> dict[str, float]:
    """Seeds; each score (`scores`: label -> a result's key; default offline and online normalized return) that the
    results have, mean and std (ddof 0) over seeds as `<label>_mean`, `<label>_std`; delta = online - offline."""
    out: dict[str, float] = {"seeds": len(results)}
    for label, key in (scores or {p: f"{p}_normalized" for p in ("offline", "online")}).items():
        if results and key in results[0]:
            values = np.array([r[key] for r in results])
            out |= {f"{label}_mean": float(values.mean()), f"{label}_std": float(values.std())}
    if "offline_mean" in out and "online_mean" in out:
        out["delta"] = out["online_mean"] - out["offline_mean"]
    return out


def plot(path: Path, series: dict[str, list[dict[str, float]]], *, title: str, x: str = "online_samples",
         xlabel: str = "online samples", lines: dict[str, float] | None = None) -> Path:
    """Each series' mean line and +-std band over seeds; `lines` as horizontal levels. PNG, written atomically."""
    fig, ax = pyplot().subplots(figsize=(6.4, 4.2), dpi=100)
    for i, (label, curve) in enumerate(series.items()):
        xs, mean, std = (np.array([r[k] for r in curve]) for k in (x, "mean", "std"))
        seeds = int(curve[0]["seeds"])
        ax.plot(xs, mean, color=f"C{i}", label=f"{label}, mean over {seeds} seeds" if seeds > 1 else label)
        ax.fill_between(xs, mean - std, mean + std, color=f"C{i}", alpha=0.2)
    for j, (label, value) in enumerate((lines or {}).items()):
        if value is not None and np.isfinite(value):
            ax.axhline(value, color=("grey", "k", "C7", "C8")[j % 4], linestyle=(":", "--", "-.", (0, (1, 3)))[j % 4],
                       label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("normalized return")
    ax.set_title(title)
    ax.legend(loc="best", fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_seed(path: Path, rows: list[dict[str, float]], *, seed: int, title: str) -> Path:
    """One seed's curve.csv rows (pretraining: vs updates; online: vs samples), the band its std over episodes."""
    x = "online_samples" if "online_samples" in rows[0] else "updates"
    curve = [{x: r[x], "mean": r["eval_normalized"], "std": r["eval_normalized_std"], "seeds": 1} for r in rows]
    return plot(path, {f"seed {seed} (band: std over episodes)": curve}, title=title, x=x, xlabel=x.replace("_", " "))


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib  # noqa: PLC0415 (optional: pyproject's pipeline extra)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (optional: pyproject's pipeline extra)

    return plt


def save_figure(fig, path: Path, **savefig) -> Path:
    """A matplotlib figure as PNG, written atomically (never half a file), then closed."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 (optional: pyproject's pipeline extra)

    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", **savefig)
    finally:
        plt.close(fig)
    return Path(path)

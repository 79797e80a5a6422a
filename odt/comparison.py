"""The paper's comparison, ours beside theirs: Table 5.1 and Figure E.1 from every algorithm's seed results.

Table 5.1's columns (normalized return, mean and std over seeds): DT, ODT offline, ODT online,
delta ODT, IQL offline, IQL online, delta IQL, SAC online. The paper's values are
odt/paper_table_5_1.csv (Zheng et al. 2022, Table 5.1). Results come by the name of what
produced them: `pretrain` and `finetune` (ODT), `dt`, `iql`, `sac`; each a list of seed
results (odt.loops.Run.scores plus `seed`) or of seed curves (Run.evaluations).
"""
from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from odt import curves
from odt.tasks import get_task

PAPER_TABLE = Path(__file__).with_name("paper_table_5_1.csv")
# our column: (what produced it, result key, the paper's column)
COLUMNS = {
    "dt": ("dt", "offline_normalized", "dt"),
    "odt_offline": ("finetune", "offline_normalized", "odt_offline"),
    "odt_online": ("finetune", "online_normalized", "odt_online"),
    "iql_offline": ("iql", "offline_normalized", "iql_offline"),
    "iql_online": ("iql", "online_normalized", "iql_online"),
    "sac_online": ("sac", "online_normalized", "sac_online"),
}
DELTAS = {
    "odt_delta": ("odt_online", "odt_offline", "delta_odt"),
    "iql_delta": ("iql_online", "iql_offline", "delta_iql"),
}
TITLES = {"dt": "DT", "odt_offline": "ODT offline", "odt_online": "ODT online", "odt_delta": "δ ODT",
          "iql_offline": "IQL offline", "iql_online": "IQL online", "iql_delta": "δ IQL", "sac_online": "SAC online"}
ONLINE = {"odt": "finetune", "iql": "iql", "sac": "sac"}  # Figure E.1's curves: column -> what produced them
LABELS = {"odt": "ODT", "iql": "IQL", "sac": "SAC (from scratch)"}
Row = dict[str, Any]


def paper_name(task: str) -> str:
    """hopper-medium-v2 -> hopper-medium (Table 5.1 names datasets without the version)."""
    return task.rsplit("-v", 1)[0] if task.rsplit("-v", 1)[-1].isdigit() else task


def load_paper(path: Path = PAPER_TABLE) -> dict[str, dict[str, float]]:
    """dataset -> column -> the paper's value (nan where Table 5.1 has none)."""
    with open(path, newline="") as f:
        return {r.pop("dataset"): {k: float(v) if v else math.nan for k, v in r.items()} for r in csv.DictReader(f)}


def baseline_tasks(name: str, tasks: list[str]) -> list[str]:
    """The tasks a baseline runs on: all of them, but SAC (from scratch, the data unused) once per environment,
    on its medium task where listed, and not on AntMaze (the paper has no SAC there)."""
    if name != "sac":
        return list(tasks)
    by_env: dict[str, str] = {}
    for task in sorted(tasks, key=lambda t: get_task(t).dataset != "medium"):
        spec = get_task(task)
        if not spec.is_antmaze:
            by_env.setdefault(spec.env, task)
    return [t for t in tasks if t in by_env.values()]


def sac_task(task: str, ran: list[str]) -> str | None:
    """The SAC run whose score stands in `task`'s column: its own, else the one on the same environment."""
    return task if task in ran else next((t for t in ran if get_task(t).env == get_task(task).env), None)


def scores(task: str, results: dict[str, list[dict[str, Any]]]) -> Row:
    """One task's columns (mean, std over seeds; nan where an algorithm did not run), the paper's beside each, and
    pretraining's best evaluation on the way (mean over seeds) beside the final one reported as ODT offline."""
    ref = load_paper().get(paper_name(task), {})
    row: Row = {}
    for col, (source, key, theirs) in COLUMNS.items():
        values = np.array([r[key] for r in results[source]]) if source in results else np.array([np.nan])
        row[f"{col}_mean"], row[f"{col}_std"] = float(values.mean()), float(values.std())
        row[f"paper_{col}"], row[f"paper_{col}_std"] = ref.get(theirs, math.nan), ref.get(theirs + "_std", math.nan)
    for col, (on, off, theirs) in DELTAS.items():
        row[f"{col}_mean"] = row[f"{on}_mean"] - row[f"{off}_mean"]
        row[f"paper_{col}"] = ref.get(theirs, math.nan)
    row["pretrain_best_mean"] = float(np.mean([r["best_normalized"] for r in results["pretrain"]]))
    return row


def online_curves(task_curves: dict[str, list], budget: int) -> list[Row]:
    """One row per grid point of [0, budget]: each algorithm's mean, lower, upper over seeds (empty where it did not
    run)."""
    rows: list[Row] = [{"online_samples": float(x)} for x in np.linspace(0, budget, 21)]
    for col, source in ONLINE.items():
        agg = curves.aggregate(task_curves[source], budget) if source in task_curves else None
        for i, row in enumerate(rows):
            for k in ("mean", "lower", "upper"):
                row[col if k == "mean" else f"{col}_{k}"] = agg[i][k] if agg else ""
    return rows


def pretrain_curve(seed_curves: list[list[dict[str, float]]], *, columns: int = 0) -> list[Row]:
    """Every seed's evaluations during pretraining (they fall on the same update counts) and their mean.

    Columns seed_0 .. seed_<k> for every seed, and at least `columns` of them (empty beyond the seeds there are).
    """
    rows = []
    for points in zip(*seed_curves):
        values = np.array([p["eval_normalized"] for p in points])
        per_seed = {f"seed_{k}": float(values[k]) if k < len(values) else "" for k in range(max(columns, len(values)))}
        rows.append({"updates": points[0]["updates"], "mean": float(values.mean()), "std": float(values.std()),
                     "seeds": len(values), **per_seed})
    return rows


def plot_online(path: Path, task_curves: dict[str, list], row: Row, *, title: str, paper: bool = False) -> Path:
    """Figure E.1 for one task: ODT, IQL and SAC vs online samples (mean, std band), DT and ODT pretrained as levels;
    with `paper`, the paper's ODT online level too (where the numbers compare with the paper's)."""
    series = {LABELS[col]: curves.aggregate(task_curves[source], row["online_samples"])
              for col, source in ONLINE.items() if source in task_curves}
    levels = {"ODT pretrained (ours)": row["odt_offline_mean"], "DT (ours)": row["dt_mean"]}
    if paper:
        levels["ODT online, paper (Table 5.1)"] = row["paper_odt_online"]
    return curves.plot(path, series, title=title, lines=levels)


def plot_pretrain(path: Path, pre: list[Row], seeds: int, *, title: str) -> Path:
    """pretrain_curve's rows: the mean over seeds with its std band, and every seed's line."""
    lines = {f"seed {k}": [{"updates": p["updates"], "mean": p[f"seed_{k}"], "std": 0.0, "seeds": 1} for p in pre]
             for k in range(seeds)}
    return curves.plot(path, {"mean over seeds": pre, **lines}, x="updates", xlabel="pretraining updates", title=title)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _cell(mean: float, std: float | None, paper: float, paper_std: float | None = None) -> str:
    ours = "n/a" if _missing(mean) else f"{mean:.1f}" + ("" if std is None else f" ± {std:.1f}")
    theirs = "" if _missing(paper) else f" ({paper:.1f}" + ("" if _missing(paper_std) else f" ± {paper_std:.1f}") + ")"
    return ours + theirs


def pattern(r: Row) -> str:
    """The paper's claims, checked on this row: delta ODT > delta IQL, and ODT online above SAC at the budget."""
    parts = []
    if not (_missing(r["odt_delta_mean"]) or _missing(r["iql_delta_mean"])):
        parts.append(f"δ ODT {'>' if r['odt_delta_mean'] > r['iql_delta_mean'] else '<='} δ IQL")
    if not _missing(r["sac_online_mean"]):
        parts.append(f"ODT {'above' if r['odt_online_mean'] > r['sac_online_mean'] else 'not above'} SAC")
    return "; ".join(parts) or "n/a"


def markdown(rows: list[Row], *, setting: str, seeds: int, notes: Sequence[str] = ()) -> str:
    """The report: Table 5.1 (scores' keys, and a row's task, online_samples, sac_from, {pretrain,finetune}_{lr,wd,
    hparams}), pretraining's best vs final, the learning rates and where they came from; `setting` names what the
    numbers were produced with, and each of `notes` is a paragraph at the end."""
    cols = list(TITLES)
    lines = [
        "# Table 5.1, ours beside the paper's",
        "",
        f"{setting}. Normalized return (D4RL scale, 100 = expert), mean ± std over {seeds} seeds; "
        "the paper's value in parentheses (10 seeds, 200k online samples). A seed is a whole run: ODT seed k pretrains "
        "with seed k and finetunes that checkpoint with seed k; DT and IQL train offline with seed k; IQL then "
        "finetunes, SAC learns from scratch, both for the online budget, one update per environment step. Offline: "
        "after pretraining; online: after the online budget; δ = online - offline.",
        "",
        "| task | online samples | " + " | ".join(TITLES[c] for c in cols) + " | the paper's pattern here |",
        "|---|---:|" + "---:|" * len(cols) + "---|",
    ]
    for r in rows:  # a delta is a difference of means: no std
        cells = [_cell(r[f"{c}_mean"], None if c in DELTAS else r[f"{c}_std"], r[f"paper_{c}"],
                       None if c in DELTAS else r[f"paper_{c}_std"]) for c in cols]
        lines.append(f"| {r['task']} | {r['online_samples']:,} | " + " | ".join(cells) + f" | {pattern(r)} |")
    shared = [r for r in rows if r["sac_from"] and r["sac_from"] != r["task"]]
    if shared:
        lines += [
            "",
            "SAC learns from scratch, so it runs once per environment: "
            + ", ".join(f"{r['task']}'s SAC column is {r['sac_from']}'s run" for r in shared)
            + " (the paper leaves those cells empty).",
        ]
    lines += [
        "",
        "Pretraining, best evaluation on the way (mean over seeds) vs the final one reported as ODT offline:",
        "",
        "| task | ODT offline (final) | best during pretraining |",
        "|---|---:|---:|",
    ]
    lines += [f"| {r['task']} | {r['odt_offline_mean']:.2f} | {r['pretrain_best_mean']:.2f} |" for r in rows]
    lines += [
        "",
        "Learning rate and weight decay of ODT:",
        "",
        "| task | pretrain lr | pretrain wd | from | finetune lr | finetune wd | from |",
        "|---|---:|---:|---|---:|---:|---|",
    ]
    lines += [
        f"| {r['task']} | {r['pretrain_lr']:g} | {r['pretrain_wd']:g} | {r['pretrain_hparams']} | {r['finetune_lr']:g} "
        f"| {r['finetune_wd']:g} | {r['finetune_hparams']} |"
        for r in rows
    ]
    for note in notes:
        lines += ["", note]
    return "\n".join([*lines, ""])

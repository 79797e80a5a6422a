"""Our Table 5.1: every column of the paper's, from the seeds' result files, with the paper's value beside ours.

Columns (normalized return, mean and std over seeds): DT, ODT offline, ODT online, delta ODT,
IQL offline, IQL online, delta IQL, SAC online. The paper's values are
pipeline/data/paper_table_5_1.csv (Zheng et al. 2022, Table 5.1).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from odt import curves
from odt.config import ConfigError
from pipeline import paths
from pipeline.params import Params, plan_task

PAPER_TABLE = Path(__file__).parent / "data" / "paper_table_5_1.csv"
# our column: (stage, result key, the paper's column)
COLUMNS = {
    "dt": ("dt", "offline_normalized", "dt"),
    "odt_offline": ("finetune", "offline_normalized", "odt_offline"),
    "odt_online": ("finetune", "online_normalized", "odt_online"),
    "iql_offline": ("iql", "offline_normalized", "iql_offline"),
    "iql_online": ("iql", "online_normalized", "iql_online"),
    "sac_online": ("sac", "online_normalized", "sac_online"),
}
DELTAS = {"odt_delta": ("odt_online", "odt_offline", "delta_odt"), "iql_delta": ("iql_online", "iql_offline", "delta_iql")}
TITLES = {"dt": "DT", "odt_offline": "ODT offline", "odt_online": "ODT online", "odt_delta": "δ ODT",
          "iql_offline": "IQL offline", "iql_online": "IQL online", "iql_delta": "δ IQL", "sac_online": "SAC online"}


def paper_name(task: str) -> str:
    """hopper-medium-v2 -> hopper-medium (Table 5.1 names datasets without the version)."""
    return task.rsplit("-v", 1)[0] if task.rsplit("-v", 1)[-1].isdigit() else task


def load_paper(path: Path = PAPER_TABLE) -> pd.DataFrame:
    return pd.read_csv(path).set_index("dataset")


def stage_of(params: Params, stage: str, task: str) -> str | None:
    """The task whose `stage` results stand for `task`: itself, or for SAC (from scratch) the task of the same
    environment it ran on; None when the stage did not run for it."""
    if stage in ("pretrain", "finetune"):
        return task
    ran = params.baselines.get(stage, [])
    if task in ran or stage != "sac":
        return task if task in ran else None
    from odt.tasks import get_task  # noqa: PLC0415

    return next((t for t in ran if get_task(t).env == get_task(task).env), None)


def seed_files(root: Path, params: Params, stage: str, task: str) -> tuple[list[dict], list[list[dict[str, float]]]]:
    """Every seed's result and curve of a stage, or one line naming what to run."""
    results, seed_curves = [], []
    for seed in range(params.seeds):
        seed_dir = paths.run_dir(root, task, stage) / f"seed_{seed}"
        if not (seed_dir / "result.json").is_file():
            raise ConfigError(f"{seed_dir / 'result.json'} is missing: {stage}@{task} did not finish seed {seed}; "
                              f"run `dvc repro {stage}@{task}`")
        results.append(json.loads((seed_dir / "result.json").read_text()))
        seed_curves.append(curves.read_csv(seed_dir / "curve.csv"))
    return results, seed_curves


def collect(params: Params, root: Path) -> tuple[pd.DataFrame, dict[str, dict[str, list]]]:
    """The table (one row per task) and every stage's per-seed curves, by task."""
    paper, rows, all_curves = load_paper(), [], {}
    for task in params.tasks:
        ref = paper.loc[paper_name(task)] if paper_name(task) in paper.index else None
        row: dict[str, Any] = {"task": task, "seeds": params.seeds,
                               "online_samples": plan_task(params, task).finetune.online_samples}
        loaded: dict[str, tuple[list, list]] = {}
        for stage in ("pretrain", "finetune", "dt", "iql", "sac"):
            source = stage_of(params, stage, task)
            if source is not None:
                loaded[stage] = seed_files(root, params, stage, source)
        all_curves[task] = {stage: c for stage, (_, c) in loaded.items()}
        for col, (stage, key, theirs) in COLUMNS.items():
            values = np.array([r[key] for r in loaded[stage][0]]) if stage in loaded else np.array([np.nan])
            row[f"{col}_mean"], row[f"{col}_std"] = float(values.mean()), float(values.std())
            row[f"paper_{col}"] = float(ref[theirs]) if ref is not None else float("nan")
            row[f"paper_{col}_std"] = float(ref[theirs + "_std"]) if ref is not None else float("nan")
        for col, (on, off, theirs) in DELTAS.items():
            row[f"{col}_mean"] = row[f"{on}_mean"] - row[f"{off}_mean"]
            row[f"paper_{col}"] = float(ref[theirs]) if ref is not None else float("nan")
        pre = loaded["pretrain"][0]
        row["pretrain_best_mean"] = float(np.mean([r["best_normalized"] for r in pre]))
        row["sac_from"] = stage_of(params, "sac", task) or ""
        for phase, results in (("pretrain", pre), ("finetune", loaded["finetune"][0])):
            hp = results[0]["hparams"]
            row |= {f"{phase}_lr": hp["learning_rate"], f"{phase}_wd": hp["weight_decay"], f"{phase}_hparams": hp["source"]}
        rows.append(row)
    return pd.DataFrame(rows), all_curves


def _cell(mean: float, std: float | None, paper: float, paper_std: float | None = None) -> str:
    ours = "n/a" if pd.isna(mean) else f"{mean:.1f}" + ("" if std is None else f" ± {std:.1f}")
    theirs = "" if pd.isna(paper) else f" ({paper:.1f}" + ("" if paper_std is None or pd.isna(paper_std) else f" ± {paper_std:.1f}") + ")"
    return ours + theirs


def pattern(r: Any) -> str:
    """The paper's claims, checked on this row: delta ODT > delta IQL, and ODT online above SAC at the budget."""
    parts = []
    if not (pd.isna(r.odt_delta_mean) or pd.isna(r.iql_delta_mean)):
        parts.append(f"δ ODT {'>' if r.odt_delta_mean > r.iql_delta_mean else '<='} δ IQL")
    if not pd.isna(r.sac_online_mean):
        parts.append(f"ODT {'above' if r.odt_online_mean > r.sac_online_mean else 'not above'} SAC")
    return "; ".join(parts) or "n/a"


def markdown(table: pd.DataFrame, params: Params) -> str:
    cols = list(TITLES)
    lines = [
        "# Table 5.1, ours beside the paper's",
        "",
        f"Profile `{params.profile}`. Normalized return (D4RL scale, 100 = expert), mean ± std over {params.seeds} seeds; "
        "the paper's value in parentheses (10 seeds, 200k online samples). A seed is a whole run: ODT seed k pretrains "
        "with seed k and finetunes that checkpoint with seed k; DT and IQL train offline with seed k; IQL then "
        "finetunes, SAC learns from scratch, both for the online budget, one update per environment step. Offline: "
        "after pretraining; online: after the online budget; δ = online - offline.",
        "",
        "| task | online samples | " + " | ".join(TITLES[c] for c in cols) + " | the paper's pattern here |",
        "|---|---:|" + "---:|" * len(cols) + "---|",
    ]
    for r in table.itertuples():
        cells = [_cell(getattr(r, f"{c}_mean"), None if c.endswith("delta") else getattr(r, f"{c}_std"),
                       getattr(r, f"paper_{c}"), None if c.endswith("delta") else getattr(r, f"paper_{c}_std"))
                 for c in cols]
        lines.append(f"| {r.task} | {r.online_samples:,} | " + " | ".join(cells) + f" | {pattern(r)} |")
    shared = [r for r in table.itertuples() if r.sac_from and r.sac_from != r.task]
    if shared:
        lines += ["", "SAC learns from scratch, so it runs once per environment: " + ", ".join(
            f"{r.task}'s SAC column is {r.sac_from}'s run" for r in shared) + " (the paper leaves those cells empty)."]
    lines += ["", "Pretraining, best evaluation on the way (mean over seeds) vs the final one reported as ODT offline:", "",
              "| task | ODT offline (final) | best during pretraining |", "|---|---:|---:|"]
    lines += [f"| {r.task} | {r.odt_offline_mean:.2f} | {r.pretrain_best_mean:.2f} |" for r in table.itertuples()]
    lines += ["", "Learning rate and weight decay of ODT:", "",
              "| task | pretrain lr | pretrain wd | from | finetune lr | finetune wd | from |", "|---|---:|---:|---|---:|---:|---|"]
    lines += [f"| {r.task} | {r.pretrain_lr:g} | {r.pretrain_wd:g} | {r.pretrain_hparams} | {r.finetune_lr:g} "
              f"| {r.finetune_wd:g} | {r.finetune_hparams} |" for r in table.itertuples()]
    if params.profile != "paper":
        lines += ["", f"Profile `{params.profile}` uses generated data, small models and a small online budget: "
                      "the numbers are honest for that setting but not comparable with the paper's."]
    lines += ["", "Learning curves: `reports/plots/<task>.png` (data: `reports/curves/<task>.csv`); pretraining: "
                  "`reports/plots/<task>-pretrain.png` (`reports/pretrain_curves/<task>.csv`).", ""]
    return "\n".join(lines)

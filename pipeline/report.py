"""DVC stage `report`: our Table 5.1 beside the paper's, the learning curves of every algorithm, DVC metrics.

    python -m pipeline.report

Reads runs/<task>/{pretrain,finetune,dt,iql,sac}/seed_*/ for every task in params.yaml and writes
  reports/results.csv, reports/results.md   all eight columns of Table 5.1 (pipeline/table.py), ours and the paper's;
  reports/metrics.json                      the same numbers for `dvc metrics show`;
  reports/curves/<task>.csv                 ODT, IQL and SAC: mean and mean +- std over seeds vs online samples;
  reports/pretrain_curves/<task>.csv        ODT's pretraining evaluations: every seed and the mean vs updates;
  reports/plots/<task>.png, <task>-pretrain.png   the paper's Figure E.1 for the task, and the pretraining curves.
"""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from odt import curves
from odt.atomic import atomic_dir, atomic_path
from odt.config import ConfigError
from pipeline import cli, paths, table
from pipeline.params import Params

ONLINE = {"odt": "finetune", "iql": "iql", "sac": "sac"}  # curve column -> stage
LABELS = {"odt": "ODT", "iql": "IQL", "sac": "SAC (from scratch)"}


def online_curves(task_curves: dict[str, list], budget: int) -> list[dict[str, float | str]]:
    """One row per grid point: each algorithm's mean, lower, upper (empty where it did not run)."""
    grid = np.linspace(0, budget, 21)
    rows = [{"online_samples": float(x)} for x in grid]
    for col, stage in ONLINE.items():
        agg = curves.aggregate(task_curves[stage], budget) if stage in task_curves else None
        for i, row in enumerate(rows):
            for k in ("mean", "lower", "upper"):
                row[col if k == "mean" else f"{col}_{k}"] = agg[i][k] if agg else ""
    return rows


def pretrain_curve(seed_curves: list[list[dict[str, float]]]) -> list[dict[str, float | str]]:
    """Every seed's evaluations during pretraining (they fall on the same update counts) and their mean.

    Columns seed_0 .. seed_9 always exist (empty where there are fewer seeds): `dvc plots` names them.
    """
    rows = []
    for points in zip(*seed_curves):
        values = np.array([p["eval_normalized"] for p in points])
        per_seed = {f"seed_{k}": float(values[k]) if k < len(values) else "" for k in range(max(10, len(values)))}
        rows.append({"updates": points[0]["updates"], "mean": float(values.mean()), "std": float(values.std()),
                     "seeds": len(values), **per_seed})
    return rows


def run_stage(params: Params, *, root: Path = paths.ROOT, reports: Path | None = None, track: bool = True) -> pd.DataFrame:
    root = Path(root)
    reports = Path(reports or root / "reports")
    results, all_curves = table.collect(params, root)
    metric_keys = [c for c in results.columns if c.endswith(("_mean", "_std")) or c.startswith("paper_")]
    metrics = {r["task"]: {k: None if pd.isna(r[k]) else round(float(r[k]), 4) for k in metric_keys}
               for r in results.to_dict("records")}
    # every output is written in full before any replaces its old version: an error on the way (a
    # full disk, a file-size limit) leaves the old report whole; the renames then follow one another
    with contextlib.ExitStack() as outputs:
        csv, md, metrics_json = (outputs.enter_context(atomic_path(reports / name))
                                 for name in ("results.csv", "results.md", "metrics.json"))
        curve_dir, pre_dir, plot_dir = (outputs.enter_context(atomic_dir(reports / name))
                                        for name in ("curves", "pretrain_curves", "plots"))
        csv.write_text(results.to_csv(index=False, float_format="%.4f"))
        md.write_text(table.markdown(results, params))
        metrics_json.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        for r in results.to_dict("records"):
            task, task_curves = r["task"], all_curves[r["task"]]
            online = online_curves(task_curves, r["online_samples"])
            curves.write_csv(curve_dir / f"{task}.csv", online, list(online[0]))
            series = {LABELS[col]: curves.aggregate(task_curves[stage], r["online_samples"])
                      for col, stage in ONLINE.items() if stage in task_curves}
            # the paper's level is drawn where it compares (the paper profile); elsewhere it squashes the curves
            paper = {"ODT online, paper (Table 5.1)": r["paper_odt_online"]} if params.profile == "paper" else {}
            curves.plot(plot_dir / f"{task}.png", series, title=f"{task} ({params.profile} profile)",
                        lines={"ODT pretrained (ours)": r["odt_offline_mean"], "DT (ours)": r["dt_mean"], **paper})
            pre = pretrain_curve(task_curves["pretrain"])
            curves.write_csv(pre_dir / f"{task}.csv", pre, list(pre[0]))
            seeds = {f"seed {k}": [{"updates": p["updates"], "mean": p[f"seed_{k}"], "std": 0.0, "seeds": 1} for p in pre]
                     for k in range(params.seeds)}
            curves.plot(plot_dir / f"{task}-pretrain.png", {"mean over seeds": pre, **seeds}, x="updates",
                        xlabel="pretraining updates", title=f"{task}: ODT pretraining, evaluated on the way")
    if track:
        _track(params, root, reports, results)
    return results


def _track(params: Params, root: Path, reports: Path, results: pd.DataFrame) -> None:
    """One run in experiment `odt/report` per distinct table, with the table and plots as artifacts."""
    from pipeline.caching import fingerprint  # noqa: PLC0415
    from pipeline.tracking import Tracker, stage_tags  # noqa: PLC0415

    tracker = Tracker(root)
    key = "report:" + fingerprint(results.to_csv(index=False, float_format="%.6f"))
    run = tracker.run(tracker.experiment("odt/report"), key, "report", stage_tags(root, params.profile, "report"))
    if tracker.status(run) == "FINISHED":
        return
    tracker.log_metrics(run, {f"{c}.{r['task']}": r[c] for r in results.to_dict("records") for c in results.columns
                              if c.endswith("_mean") and not pd.isna(r[c])})
    tracker.log_artifacts(run, [reports / "results.csv", reports / "results.md", reports / "metrics.json"])
    tracker.log_artifacts(run, sorted((reports / "plots").glob("*.png")), "plots")
    tracker.finish(run)


def main(argv: list[str] | None = None) -> int:
    ap = cli.Parser(prog="python -m pipeline.report", description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--root", default=".")
    ap.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    args = ap.parse_args(argv)
    params, _ = cli.load_or_exit(args.params)
    code, results = cli.run_guarded("report", lambda: run_stage(params, root=Path(args.root), track=not args.no_track),
                                    bad=(ConfigError,))
    if code:
        return code
    cols = ["task", *(f"{c}_mean" for c in table.TITLES)]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(results[cols].round(2).to_string(index=False))
    return 0

if __name__ == "__main__":
    sys.exit(main())

"""DVC stage `report`: our Table 5.1 beside the paper's, learning curves, DVC metrics.

    python -m pipeline.report

Reads runs/<task>/finetune/seed_*/ and runs/<task>/pretrain/eval.json for every task in
params.yaml and writes
  reports/results.csv, reports/results.md  offline (pretrained) and online (finetuned)
      normalized return, mean +- std over seeds, delta = online - offline, the paper's ODT
      numbers (pipeline/data/paper_table_5_1.csv) and the learning rate / weight decay used;
  reports/metrics.json                     the same numbers for `dvc metrics show`;
  reports/curves/<task>.csv                mean and std over seeds vs online samples (`dvc plots show`);
  reports/plots/<task>.png                 that curve with the paper's online score dashed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from odt.atomic import atomic_dir, write_json, write_text
from odt.config import ConfigError
from pipeline import cli, curves, paths
from pipeline.params import Params, plan_task

PAPER_TABLE = Path(__file__).parent / "data" / "paper_table_5_1.csv"


def paper_name(task: str) -> str:
    """hopper-medium-v2 -> hopper-medium (Table 5.1 names datasets without the version)."""
    return task.rsplit("-v", 1)[0] if task.rsplit("-v", 1)[-1].isdigit() else task


def load_paper(path: Path = PAPER_TABLE) -> pd.DataFrame:
    return pd.read_csv(path).set_index("dataset")


def collect(task: str, params: Params, root: Path) -> tuple[dict[str, Any], list[list[dict[str, float]]]]:
    """Per-seed results and curves of one task, checked to be complete."""
    ft = paths.finetune_dir(root, task)
    results, seed_curves = [], []
    for seed in range(params.seeds):
        path = ft / f"seed_{seed}" / "result.json"
        if not path.is_file():
            raise ConfigError(f"{path} is missing: finetune@{task} did not finish seed {seed}; run `dvc repro finetune@{task}`")
        results.append(json.loads(path.read_text()))
        seed_curves.append(curves.read_csv(ft / f"seed_{seed}" / "curve.csv"))
    pre_path = paths.pretrain_dir(root, task) / "eval.json"
    if not pre_path.is_file():
        raise ConfigError(f"{pre_path} is missing; run `dvc repro pretrain@{task}`")
    pretrain = json.loads(pre_path.read_text())
    summary = curves.summarize(results)
    hp_ft = results[0]["hparams"]
    row = {
        "task": task,
        "seeds": summary["seeds"],
        "offline_mean": summary["offline_mean"],
        "offline_std": summary["offline_std"],
        "online_mean": summary["online_mean"],
        "online_std": summary["online_std"],
        "delta": summary["delta"],
        "online_samples": plan_task(params, task).finetune.online_samples,  # the budget; seeds overshoot it by < 1 episode
        "pretrain_seed0": pretrain["normalized_mean"],
        "pretrain_lr": pretrain["hparams"]["learning_rate"],
        "pretrain_wd": pretrain["hparams"]["weight_decay"],
        "pretrain_hparams": pretrain["hparams"]["source"],
        "finetune_lr": hp_ft["learning_rate"],
        "finetune_wd": hp_ft["weight_decay"],
        "finetune_hparams": hp_ft["source"],
    }
    return row, seed_curves


def build_table(params: Params, root: Path, paper: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list]]:
    rows, task_curves = [], {}
    for task in params.tasks:
        row, task_curves[task] = collect(task, params, root)
        name = paper_name(task)
        ref = paper.loc[name] if name in paper.index else None
        for ours, theirs in (("paper_offline", "odt_offline"), ("paper_offline_std", "odt_offline_std"),
                             ("paper_online", "odt_online"), ("paper_online_std", "odt_online_std"),
                             ("paper_delta", "delta_odt")):
            row[ours] = float(ref[theirs]) if ref is not None else float("nan")
        rows.append(row)
    return pd.DataFrame(rows), task_curves


def _pm(mean: float, std: float) -> str:
    return "n/a" if pd.isna(mean) else f"{mean:.2f} ± {std:.2f}"


def markdown(table: pd.DataFrame, params: Params) -> str:
    lines = [
        "# ODT: offline pretraining and online finetuning, ours vs the paper (Table 5.1)",
        "",
        f"Profile `{params.profile}`; normalized return (D4RL scale, 100 = expert), mean ± std over "
        f"{params.seeds} finetuning seeds from one pretrained checkpoint per task. Offline: the pretrained policy "
        "evaluated by each seed (pretraining g_eval and context); online: after the online-sample budget; "
        "delta = online - offline. Paper: ODT columns of Table 5.1 (10 seeds, 200k online samples).",
        "",
        "| task | seeds | online samples | offline (ours) | online (ours) | delta (ours) "
        "| offline (paper) | online (paper) | delta (paper) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table.itertuples():
        paper_delta = "n/a" if pd.isna(r.paper_delta) else f"{r.paper_delta:.2f}"
        lines.append(f"| {r.task} | {r.seeds} | {r.online_samples:,} | {_pm(r.offline_mean, r.offline_std)} "
                     f"| {_pm(r.online_mean, r.online_std)} | {r.delta:+.2f} | {_pm(r.paper_offline, r.paper_offline_std)} "
                     f"| {_pm(r.paper_online, r.paper_online_std)} | {paper_delta} |")
    lines += ["", "Learning rate and weight decay used:", "",
              "| task | pretrain lr | pretrain wd | from | finetune lr | finetune wd | from |",
              "|---|---:|---:|---|---:|---:|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.task} | {r.pretrain_lr:g} | {r.pretrain_wd:g} | {r.pretrain_hparams} "
                     f"| {r.finetune_lr:g} | {r.finetune_wd:g} | {r.finetune_hparams} |")
    if params.profile != "paper":
        lines += ["", f"Profile `{params.profile}` uses generated data, a small model and a small online budget: "
                      "the numbers are honest for that setting but not comparable with the paper's."]
    lines += ["", "Learning curves: `reports/plots/<task>.png` (data in `reports/curves/<task>.csv`).", ""]
    return "\n".join(lines)


def run_stage(params: Params, *, root: Path = paths.ROOT, reports: Path | None = None, track: bool = True) -> pd.DataFrame:
    root = Path(root)
    reports = Path(reports or root / "reports")
    table, task_curves = build_table(params, root, load_paper())
    csv_text = table.to_csv(index=False, float_format="%.4f")
    write_text(reports / "results.csv", csv_text)
    write_text(reports / "results.md", markdown(table, params))
    metrics = {r["task"]: {k: (None if pd.isna(r[k]) else round(float(r[k]), 4)) for k in
                           ("offline_mean", "offline_std", "online_mean", "online_std", "delta", "paper_online", "paper_delta")}
               for r in table.to_dict("records")}
    write_json(reports / "metrics.json", metrics)
    with atomic_dir(reports / "curves") as curve_dir, atomic_dir(reports / "plots") as plot_dir:
        for r in table.to_dict("records"):
            curve = curves.aggregate(task_curves[r["task"]], r["online_samples"])
            curves.write_csv(curve_dir / f"{r['task']}.csv", curve, list(curve[0]))
            curves.plot(plot_dir / f"{r['task']}.png", curve, title=f"{r['task']} ({params.profile} profile)",
                              paper_online=r["paper_online"], offline=r["offline_mean"])
    if track:
        _track(params, root, reports, table)
    return table


def _track(params: Params, root: Path, reports: Path, table: pd.DataFrame) -> None:
    """One run in experiment `odt/report` per distinct table, with the table and plots as artifacts."""
    from pipeline.caching import fingerprint  # noqa: PLC0415
    from pipeline.tracking import Tracker, stage_tags  # noqa: PLC0415

    tracker = Tracker(root)
    exp = tracker.experiment("odt/report")
    key = "report:" + fingerprint(table.to_csv(index=False, float_format="%.6f"))
    run = tracker.run(exp, key, "report", stage_tags(root, params.profile, "report"))
    if tracker.status(run) == "FINISHED":
        return
    metrics = {f"{k}.{r['task']}": r[k] for r in table.to_dict("records")
               for k in ("offline_mean", "offline_std", "online_mean", "online_std", "delta")}
    tracker.log_metrics(run, metrics)
    tracker.log_artifacts(run, [reports / "results.csv", reports / "results.md", reports / "metrics.json"])
    tracker.log_artifacts(run, sorted((reports / "plots").glob("*.png")), "plots")
    tracker.finish(run)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--root", default=".")
    ap.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    args = ap.parse_args(argv)
    params, _ = cli.load_or_exit(args.params)
    try:
        table = run_stage(params, root=Path(args.root), track=not args.no_track)
    except ConfigError as err:
        return cli.fail(str(err))
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table[["task", "seeds", "offline_mean", "offline_std", "online_mean", "online_std", "delta",
                     "paper_offline", "paper_online", "paper_delta"]].round(2).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

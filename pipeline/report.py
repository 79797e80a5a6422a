"""DVC stage `report`: our Table 5.1 beside the paper's, the learning curves of every algorithm, DVC metrics.

    python -m pipeline.report

Reads runs/<task>/{pretrain,finetune,dt,iql,sac}/seed_*/ for every task in params.yaml and writes
  reports/results.csv, reports/results.md   all eight columns of Table 5.1 (odt/comparison.py), ours and the paper's;
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
from typing import Any

import pandas as pd

from odt import comparison, curves
from odt.atomic import atomic_dir, atomic_path
from odt.config import ConfigError
from pipeline import cli, paths
from pipeline.caching import fingerprint
from pipeline.params import Params, plan_task
from pipeline.tracking import Tracker, stage_tags

PRETRAIN_COLUMNS = 10  # reports/pretrain_curves/<task>.csv always has seed_0 .. seed_9: dvc.yaml's plots name them


def read_seeds(directory: Path, seeds: int) -> tuple[list[dict[str, Any]], list[list[dict[str, float]]]]:
    """Seeds 0..seeds-1's results and curves, as a stage published them: directory/seed_<k>/result.json, curve.csv."""
    results, seed_curves = [], []
    for seed in range(seeds):
        seed_dir = Path(directory) / f"seed_{seed}"
        if not (seed_dir / "result.json").is_file():
            raise FileNotFoundError(f"{seed_dir / 'result.json'} is missing: seed {seed} did not finish")
        results.append(json.loads((seed_dir / "result.json").read_text()))
        seed_curves.append(curves.read_csv(seed_dir / "curve.csv"))
    return results, seed_curves


def notes(profile: str) -> list[str]:
    """results.md's closing paragraphs: whether its numbers compare with the paper's, and where the curves are."""
    caveat = [] if profile == "paper" else [
        f"Profile `{profile}` uses generated data, small models and a small online budget: "
        "the numbers are honest for that setting but not comparable with the paper's."]
    return [*caveat, "Learning curves: `reports/plots/<task>.png` (data: `reports/curves/<task>.csv`); pretraining: "
                     "`reports/plots/<task>-pretrain.png` (`reports/pretrain_curves/<task>.csv`)."]


def stage_of(params: Params, stage: str, task: str) -> str | None:
    """The task whose `stage` results stand for `task` (for SAC, maybe another on its environment); None: none ran."""
    ran = params.baselines.get(stage, [])
    if stage in ("pretrain", "finetune"):
        return task
    return comparison.sac_task(task, ran) if stage == "sac" else task if task in ran else None


def collect(params: Params, root: Path) -> tuple[pd.DataFrame, dict[str, dict[str, list]]]:
    """The table (one row per task: odt.comparison.scores, and where SAC's run and ODT's hyperparameters came from)
    and every stage's per-seed curves, by task."""
    rows, all_curves = [], {}
    for task in params.tasks:
        loaded = {}  # stage -> every seed's results and curves, or one line naming what to run
        for stage in ("pretrain", "finetune", "dt", "iql", "sac"):
            if (source := stage_of(params, stage, task)) is not None:
                try:
                    loaded[stage] = read_seeds(paths.run_dir(root, source, stage), params.seeds)
                except FileNotFoundError as err:
                    raise ConfigError(f"{err}; run `dvc repro {stage}@{source}`") from None
        all_curves[task] = {stage: c for stage, (_, c) in loaded.items()}
        row = {"task": task, "seeds": params.seeds, "online_samples": plan_task(params, task).finetune.online_samples,
               **comparison.scores(task, {stage: r for stage, (r, _) in loaded.items()}),
               "sac_from": stage_of(params, "sac", task) or ""}
        for phase in ("pretrain", "finetune"):
            hp = loaded[phase][0][0]["hparams"]
            row |= {
                f"{phase}_lr": hp["learning_rate"],
                f"{phase}_wd": hp["weight_decay"],
                f"{phase}_hparams": hp["source"],
            }
        rows.append(row)
    return pd.DataFrame(rows), all_curves


def run_stage(
    params: Params, *, root: Path = paths.ROOT, reports: Path | None = None, track: bool = True
) -> pd.DataFrame:
    root = Path(root)
    reports = Path(reports or root / "reports")
    results, all_curves = collect(params, root)
    records = results.to_dict("records")
    metric_keys = [c for c in results.columns if c.endswith(("_mean", "_std")) or c.startswith("paper_")]
    metrics = {r["task"]: {k: None if pd.isna(r[k]) else round(float(r[k]), 4) for k in metric_keys}
               for r in records}
    # every output is written in full before any replaces its old version: an error on the way (a
    # full disk, a file-size limit) leaves the old report whole; the renames then follow one another
    with contextlib.ExitStack() as outputs:
        csv, md, metrics_json = (outputs.enter_context(atomic_path(reports / name))
                                 for name in ("results.csv", "results.md", "metrics.json"))
        curve_dir, pre_dir, plot_dir = (outputs.enter_context(atomic_dir(reports / name))
                                        for name in ("curves", "pretrain_curves", "plots"))
        csv.write_text(results.to_csv(index=False, float_format="%.4f"))
        md.write_text(comparison.markdown(records, setting=f"Profile `{params.profile}`", seeds=params.seeds,
                                          notes=notes(params.profile)))
        metrics_json.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        for r in records:
            task, task_curves = r["task"], all_curves[r["task"]]
            online = comparison.online_curves(task_curves, r["online_samples"])
            curves.write_csv(curve_dir / f"{task}.csv", online, list(online[0]))
            # the paper's level is drawn where it compares (the paper profile); elsewhere it squashes the curves
            comparison.plot_online(plot_dir / f"{task}.png", task_curves, r, title=f"{task} ({params.profile} profile)",
                                   paper=params.profile == "paper")
            pre = comparison.pretrain_curve(task_curves["pretrain"], columns=PRETRAIN_COLUMNS)
            curves.write_csv(pre_dir / f"{task}.csv", pre, list(pre[0]))
            comparison.plot_pretrain(plot_dir / f"{task}-pretrain.png", pre, params.seeds,
                                     title=f"{task}: ODT pretraining, evaluated on the way")
    if track:
        _track(params, root, reports, results)
    return results


def _track(params: Params, root: Path, reports: Path, results: pd.DataFrame) -> None:
    """One run in experiment `odt/report` per distinct table, with the table and plots as artifacts."""
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
    cols = ["task", *(f"{c}_mean" for c in comparison.TITLES)]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(results[cols].round(2).to_string(index=False))
    return 0

if __name__ == "__main__":
    sys.exit(main())

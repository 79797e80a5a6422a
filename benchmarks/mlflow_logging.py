"""Logging: the share of a finetuning run's wall time spent in MLflow, through the pipeline's helper.

A finetuning run of the small model on Hopper-v5 (odt.loops.finetune) logs the way
pipeline/finetune.py does, with pipeline.tracking's Tracker and RunLogger into a sqlite
store in a temporary directory: experiment, parent and child runs with their params,
one metric row per round in one log_batch call each, then summary metrics, artifacts
(curve CSV and policy) and the runs' end. Every tracking call is timed; the share is
their sum over the run's wall time. A round here is short (few updates), so the real
stages spend a smaller share. Opening the store for the first time (schema
creation, once per repository) and importing mlflow (once per process) are reported
separately, not in the share.
"""
from __future__ import annotations

import contextlib
import json
import tempfile
import time
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np

from benchmarks.common import ACT_DIM, OBS_DIM, Figure, Result, at_most, synthetic_trajectories
from odt.checkpoint import save_policy
from odt.config import FinetuneConfig, ModelConfig
from odt.loops import finetune
from odt.replay import TrajectoryReplayBuffer
from odt.trainer import ODTTrainer
from pipeline.tracking import RunLogger, Tracker

ROOT = Path(__file__).resolve().parent.parent
TARGET_PCT = 2.0


class Stopwatch:
    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    @contextlib.contextmanager
    def __call__(self):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - t0
            self.calls += 1


class TimedLogger:
    """The pipeline's RunLogger, every call timed."""

    def __init__(self, inner, stopwatch: Stopwatch):
        self.inner, self.stopwatch, self.rows = inner, stopwatch, 0

    def log(self, metrics, step: int) -> None:
        with self.stopwatch():
            self.inner.log(metrics, step)
        self.rows += 1

    def report(self, value: float, step: int, final: bool) -> None:
        with self.stopwatch():
            self.inner.report(value, step, final)


def finetune_once(tracker, run_key: str, workdir: Path, *, model: ModelConfig, cfg: FinetuneConfig, seed: int) -> dict:
    """One tracked finetuning run; returns wall time, time in tracking calls, rows and calls."""
    mlflow_time = Stopwatch()
    start = time.perf_counter()
    trainer = ODTTrainer(model, cfg, TrajectoryReplayBuffer(10_000, synthetic_trajectories(50, max_len=300, seed=seed)),
                         seed=seed, device="cpu")
    params = {**cfg.model_dump(), **{f"model.{k}": v for k, v in model.__dict__.items()}}
    tags = {"task": "benchmark", "dvc_stage": "finetune@benchmark"}
    with mlflow_time():
        exp = tracker.experiment("odt/benchmark")
        parent = tracker.run(exp, f"finetune:{run_key}", "finetune", tags)
        tracker.log_params(parent, params)
        child = tracker.run(exp, f"finetune:{run_key}:seed0", "seed 0", {**tags, "seed": 0}, parent=parent)
        tracker.log_params(child, {**params, "seed": 0})
        logger = TimedLogger(RunLogger(tracker.uri, child), mlflow_time)
    run = finetune(trainer, cfg, partial(gym.make, "Hopper-v5"), seed=seed, device="cpu", logger=logger, progress=False)
    curve = workdir / f"{run_key}-curve.csv"
    curve.write_text("round,online_samples,eval_return\n" + "".join(
        f"{h['round']},{h['online_samples']},{h['eval_return']}\n" for h in run.evaluations))
    policy = save_policy(workdir / f"{run_key}-policy.pt", run.trainer, cfg)
    with mlflow_time():
        logger.inner.log_summary({"online_return": run.final["eval_return"]}, step=run.trainer.num_updates)
        tracker.log_artifacts(child, [curve, policy])
        tracker.finish(child)
        tracker.log_metrics(parent, {"online_mean": run.final["eval_return"]}, step=run.trainer.num_updates)
        tracker.log_artifacts(parent, [curve])
        tracker.finish(parent)
    return {"wall_s": time.perf_counter() - start, "mlflow_s": mlflow_time.seconds, "tracking_calls": mlflow_time.calls,
            "rows": logger.rows, "rounds": run.final["round"], "online_samples": run.final["online_samples"],
            "updates": run.trainer.num_updates}


def run(*, repeats: int = 3, quick: bool = False) -> Result:
    if not (ROOT / "pipeline" / "tracking.py").is_file():
        return Result("logging", "MLflow logging", skipped="pipeline/tracking.py does not exist yet.")
    model = ModelConfig(state_dim=OBS_DIM, act_dim=ACT_DIM, context_len=20, embed_dim=128, n_layer=3, n_head=1)
    cfg = FinetuneConfig(batch_size=16 if quick else 64, updates_per_round=3 if quick else 20, rollouts_per_round=1,
                         online_samples=40 if quick else 1000, buffer_size=100, eval_every_rounds=4, eval_episodes=2,
                         warmup_steps=10)
    if quick:
        model = ModelConfig(state_dim=OBS_DIM, act_dim=ACT_DIM, context_len=5, embed_dim=32, n_layer=1, n_head=1)
    with tempfile.TemporaryDirectory(prefix="odt-bench-mlflow-") as tmp:
        t0 = time.perf_counter()


        import_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        tracker = Tracker(Path(tmp), f"sqlite:///{tmp}/mlflow.db")
        tracker.experiment("odt/benchmark")
        store_s = time.perf_counter() - t0
        runs = [finetune_once(tracker, f"r{i}", Path(tmp), model=model, cfg=cfg, seed=i) for i in range(repeats)]
        db_mb = (Path(tmp) / "mlflow.db").stat().st_size / 2**20
    share = [100.0 * r["mlflow_s"] / r["wall_s"] for r in runs]
    figures = [Figure("MLflow share of a finetuning run's wall time", share, "%", f"<= {TARGET_PCT:g}%",
                      at_most(float(np.median(share)), TARGET_PCT))]
    rows = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in runs]
    rows += [{"wall_s": None, "mlflow_s": round(store_s, 3), "tracking_calls": "store creation (once per repo)"},
             {"wall_s": None, "mlflow_s": round(import_s, 3), "tracking_calls": "import mlflow (once per process)"}]
    notes = [
        f"Model d{model.embed_dim} L{model.n_layer}, B={cfg.batch_size}, {cfg.updates_per_round} updates per round, "
        f"{cfg.online_samples} online samples, evaluation every {cfg.eval_every_rounds} rounds "
        f"({cfg.eval_episodes} episodes); a row sent every round, as odt.loops.finetune logs; "
        f"sqlite store {db_mb:.1f} MB at the end.",
        "Each repeat is one full run (runs, params, rows, summary, artifacts, end); share per run, "
        "median [min, max] over runs.",
    ]
    return Result("logging", "MLflow logging", figures, rows, notes)


if __name__ == "__main__":
    print(json.dumps(run(repeats=1, quick=True).to_dict(), indent=1, default=str))

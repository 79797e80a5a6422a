"""Logging: the share of a finetuning run's wall time spent in MLflow, through the pipeline's helper.

A finetuning run of the small model on Hopper-v5 (ODTTrainer.finetune) logs the way
pipeline/finetune.py does, with pipeline.tracking's Tracker and RunLogger into a sqlite
store in a temporary directory: experiment, parent and child runs with their params,
metric rows in log_batch calls, then summary metrics, artifacts (curve CSV and policy)
and the runs' end. Every tracking call is timed; the share is their sum over the run's
wall time. Conservative cadence: rows are sent after every round (the pipeline sends
them every `checkpoint_every_rounds`, 10 by default) and a round is short (few updates),
so the real stages spend a smaller share. Opening the store for the first time (schema
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
import torch

from benchmarks.common import ACT_DIM, OBS_DIM, Figure, Result, at_most, synthetic_trajectories
from odt.config import TrainConfig
from odt.model import ModelConfig
from odt.replay import TrajectoryReplayBuffer
from odt.trainer import ODTTrainer

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


def finetune_once(tracker, run_key: str, workdir: Path, *, model: ModelConfig, cfg: TrainConfig, rows_every: int) -> dict:
    """One tracked finetuning run; returns wall time, time in tracking calls, rows and calls."""
    from pipeline.tracking import RunLogger

    mlflow_time = Stopwatch()
    start = time.perf_counter()
    trainer = ODTTrainer(model, cfg, TrajectoryReplayBuffer(10_000, synthetic_trajectories(50, max_len=300, seed=cfg.seed)))
    explore = gym.vector.SyncVectorEnv([partial(gym.make, "Hopper-v5")] * cfg.rollouts_per_round)
    evaluate = gym.vector.SyncVectorEnv([partial(gym.make, "Hopper-v5")] * cfg.eval_episodes)
    params = {**cfg.model_dump(), **{f"model.{k}": v for k, v in model.__dict__.items()}}
    tags = {"task": "benchmark", "dvc_stage": "finetune@benchmark"}
    with mlflow_time():
        exp = tracker.experiment("odt/benchmark")
        parent = tracker.run(exp, f"finetune:{run_key}", "finetune", tags)
        tracker.log_params(parent, params)
        child = tracker.run(exp, f"finetune:{run_key}:seed0", "seed 0", {**tags, "seed": 0}, parent=parent)
        tracker.log_params(child, {**params, "seed": 0})
        logger = RunLogger(tracker.uri, child)
    rows, pending = [], []

    def callback(metrics: dict[str, float]) -> None:  # as pipeline.common._finetune's callback
        row = {**metrics, "num_updates": float(metrics["step"]), "step": float(metrics["online_samples"]),
               "wall_time": time.perf_counter() - start}
        rows.append(row)
        pending.append(row)
        if trainer.rounds % rows_every == 0 or trainer.online_samples >= cfg.online_samples:
            with mlflow_time():
                logger(pending)
            pending.clear()

    trainer.finetune(explore, evaluate, callback=callback, progress=False)
    curve = workdir / f"{run_key}-curve.csv"
    curve.write_text("round,online_samples,eval_return\n" + "".join(
        f"{h['round']},{h['online_samples']},{h['eval_return']}\n" for h in trainer.history))
    policy = workdir / f"{run_key}-policy.pt"
    torch.save(trainer.model.state_dict(), policy)
    with mlflow_time():
        logger.log({"online_return": trainer.history[-1]["eval_return"]}, step=trainer.online_samples)
        tracker.log_artifacts(child, [curve, policy])
        tracker.finish(child)
        tracker.log_metrics(parent, {"online_mean": trainer.history[-1]["eval_return"]}, step=trainer.online_samples)
        tracker.log_artifacts(parent, [curve])
        tracker.finish(parent)
    explore.close(), evaluate.close()
    return {"wall_s": time.perf_counter() - start, "mlflow_s": mlflow_time.seconds, "tracking_calls": mlflow_time.calls,
            "rows": len(rows), "rounds": trainer.rounds, "online_samples": trainer.online_samples,
            "updates": trainer.num_updates}


def run(*, repeats: int = 3, quick: bool = False, rows_every: int = 1) -> Result:
    if not (ROOT / "pipeline" / "tracking.py").is_file():
        return Result("logging", "MLflow logging", skipped="pipeline/tracking.py does not exist yet.")
    model = ModelConfig(state_dim=OBS_DIM, act_dim=ACT_DIM, context_len=20, embed_dim=128, n_layer=3, n_head=1)
    cfg = TrainConfig(batch_size=16 if quick else 64, updates_per_round=3 if quick else 20, rollouts_per_round=1,
                      online_samples=40 if quick else 1000, buffer_size=100, eval_every_rounds=4, eval_episodes=2,
                      warmup_steps=10, device="cpu")
    if quick:
        model = ModelConfig(state_dim=OBS_DIM, act_dim=ACT_DIM, context_len=5, embed_dim=32, n_layer=1, n_head=1)
    with tempfile.TemporaryDirectory(prefix="odt-bench-mlflow-") as tmp:
        t0 = time.perf_counter()
        import mlflow.tracking  # noqa: F401

        from pipeline.tracking import Tracker

        import_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        tracker = Tracker(Path(tmp), f"sqlite:///{tmp}/mlflow.db")
        tracker.experiment("odt/benchmark")
        store_s = time.perf_counter() - t0
        runs = [finetune_once(tracker, f"r{i}", Path(tmp), model=model, cfg=cfg.model_copy(update={"seed": i}),
                              rows_every=rows_every) for i in range(repeats)]
        db_mb = (Path(tmp) / "mlflow.db").stat().st_size / 2**20
    share = [100.0 * r["mlflow_s"] / r["wall_s"] for r in runs]
    figures = [Figure("MLflow share of a finetuning run's wall time", share, "%", f"<= {TARGET_PCT:g}%",
                      at_most(float(np.median(share)), TARGET_PCT))]
    rows = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in runs]
    rows += [{"wall_s": None, "mlflow_s": round(store_s, 3), "tracking_calls": "store creation (once per repo)"},
             {"wall_s": None, "mlflow_s": round(import_s, 3), "tracking_calls": "import mlflow (once per process)"}]
    notes = [f"Model d{model.embed_dim} L{model.n_layer}, B={cfg.batch_size}, {cfg.updates_per_round} updates per round, "
             f"{cfg.online_samples} online samples, evaluation every {cfg.eval_every_rounds} rounds "
             f"({cfg.eval_episodes} episodes); rows sent every {rows_every} round(s); sqlite store {db_mb:.1f} MB at the end.",
             "Each repeat is one full run (runs, params, rows, summary, artifacts, end); share per run, "
             "median [min, max] over runs."]
    return Result("logging", "MLflow logging", figures, rows, notes)


if __name__ == "__main__":
    print(json.dumps(run(repeats=1, quick=True).to_dict(), indent=1, default=str))

"""Stage building blocks shared by pretrain, finetune and (later) tune.

The plain functions here know nothing of MLflow or DVC: they take a task plan and the
params, write resumable state into a work directory, and hand metric rows to an optional
`log_fn(rows)` and evaluations to an optional `report(value, step)` (an Optuna trial can
prune from there). Resume after kill -9 is exact: a work directory is keyed by a
fingerprint of everything that determines its result (configs, input file hashes, code),
its checkpoint holds the trainer state plus the metric rows so far, and a finished seed
leaves `result.json`, so a rerun never recomputes it.

    build_trainer(task, params, phase, overrides=None, *, seed=0, root=ROOT, ...) -> ODTTrainer
    run_pretrain(task, params, *, out_dir, log_fn=None, eval_every=None, report=None, ...) -> dict
    run_finetune_seed(task, params, seed, *, checkpoint=None, out_dir=None, log_fn=None, report=None, ...) -> dict
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import sys
import traceback
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from odt.atomic import atomic_path
from odt.datasets.download import sha256_file
from odt.checkpoint import load_checkpoint, save_checkpoint
from odt.config import TrainConfig, validate
from odt.model import DecisionTransformer, ModelConfig
from odt.replay import TrajectoryReplayBuffer
from odt.trainer import ODTTrainer
from odt.config import ConfigError
from pipeline.params import Params, TaskPlan, load_params, plan_task, read_tuned

ROOT = Path(__file__).resolve().parents[1]
LogFn = Callable[[list[dict[str, float]]], None]  # receives metric rows, each with a "step"
ReportFn = Callable[[float, int], None]  # (normalized return, step) at each evaluation
EVAL_KEYS = ("eval_return", "eval_return_std", "eval_normalized", "eval_normalized_std")


# command line -------------------------------------------------------------------------------
def fail(message: str, code: int = 2, *, trace: bool = False) -> int:
    """One line on stderr starting with `error:`; code 2 for bad input, 1 for a failed run."""
    if trace:
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    return code


def stage_main(argv: list[str] | None, *, doc: str, stage: str, run: Callable[..., dict[str, Any]], root_help: str,
               failed: tuple[type[Exception], ...] = ()) -> int:
    """The command line every per-task stage shares: --task, --params, --root, --no-track.

    `run(plan, params, root=..., track=...)` returns the one-line JSON summary to print. Bad
    input is one `error:` line and exit 2; a failed run (or one of `failed`) exits 1.
    """
    from odt.datasets.hdf5 import DatasetError  # noqa: PLC0415
    from odt.envs import EnvMismatchError  # noqa: PLC0415

    ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    ap.add_argument("--task", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--root", default=".", help=root_help)
    ap.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    args = ap.parse_args(argv)
    params, plan = load_or_exit(args.params, args.task)
    try:
        summary = run(plan, params, root=Path(args.root), track=not args.no_track)
    except (FileNotFoundError, ConfigError, EnvMismatchError, DatasetError) as err:
        return fail(str(err))
    except failed as err:
        return fail(str(err), code=1)
    except Exception as err:
        return fail(f"{stage} {args.task} failed: {type(err).__name__}: {err}", code=1, trace=True)
    print(json.dumps(summary))
    return 0


def load_or_exit(path: str | Path, task: str | None = None) -> tuple[Params, TaskPlan | None]:
    """Validated params and every task's plan (or only `task`'s), or exit 2 with one line naming the bad key."""
    try:
        params, plans = load_params(path, [task] if task else None)
    except ConfigError as err:
        sys.exit(fail(str(err)))
    return params, plans.get(task) if task else None


# paths and atomic writes ------------------------------------------------------------------
def data_path(root: Path, task: str) -> Path:
    return Path(root) / "data" / task / f"{task}.hdf5"


def pretrain_dir(root: Path, task: str) -> Path:
    return Path(root) / "runs" / task / "pretrain"


def finetune_dir(root: Path, task: str) -> Path:
    return Path(root) / "runs" / task / "finetune"


def work_root(root: Path, task: str) -> Path:
    """Resumable state; not a DVC output, so a rerun of the stage finds it after DVC cleans the outputs."""
    return Path(root) / ".cache" / "work" / task


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def copy_file(src: str | Path, dst: str | Path) -> Path:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    lines = [",".join(columns)] + [",".join(_fmt(r.get(c, "")) for c in columns) for r in rows]
    return write_text(path, "\n".join(lines) + "\n")


def _fmt(v: Any) -> str:
    return repr(float(v)) if isinstance(v, (float, np.floating)) else str(v)


def read_csv(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


# fingerprints -------------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def _file_sha(path: str, size: int, mtime_ns: int) -> str:  # size and mtime: the cache key
    return sha256_file(path)


def file_sha(path: str | Path) -> str:
    st = Path(path).stat()
    return _file_sha(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1)
def code_sha() -> str:
    """Hash of the code that computes results: odt/ and the pipeline's shared modules."""
    import odt  # noqa: PLC0415

    here = Path(__file__).parent
    files = sorted(Path(odt.__file__).parent.rglob("*.py")) + [here / "common.py", here / "params.py"]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# configs and trainers -------------------------------------------------------------------------
def as_plan(task: str | TaskPlan, params: Params) -> TaskPlan:
    return task if isinstance(task, TaskPlan) else plan_task(params, task)


def train_config(
    task: str | TaskPlan,
    params: Params,
    phase: str,
    overrides: dict[str, Any] | None = None,
    *,
    seed: int = 0,
    root: Path = ROOT,
) -> tuple[TrainConfig, dict[str, Any]]:
    """The phase's TrainConfig: params, then the tuned lr/wd (use_tuned), then `overrides`.

    Also returns where the learning rate and weight decay came from, for the report.
    """
    plan = as_plan(task, params)
    values = plan.train_config(phase).model_dump()
    source = "params"
    if params.use_tuned:
        path = Path(root) / plan.tuned[phase]
        values |= read_tuned(path, plan.name, phase)
        source = f"tuned ({plan.tuned[phase]})"
    if overrides:
        values |= overrides
        if {"learning_rate", "weight_decay"} & set(overrides):
            source = "overrides"
    cfg = validate(TrainConfig, {**values, "seed": seed}, f"{plan.name} {phase} config")
    return cfg, {"learning_rate": cfg.learning_rate, "weight_decay": cfg.weight_decay, "source": source}


def _fresh_trainer(plan: TaskPlan, cfg: TrainConfig, data: Path) -> ODTTrainer:
    from odt.datasets.hdf5 import load_d4rl_hdf5  # noqa: PLC0415

    trajectories = load_d4rl_hdf5(data, task=plan.name)
    return ODTTrainer(plan.model, cfg, TrajectoryReplayBuffer(len(trajectories), trajectories))


def _from_pretrained(checkpoint: Path, cfg: TrainConfig) -> ODTTrainer:
    """Pretrained weights, optimiser and warmup position; this seed's own RNG streams."""
    trainer = ODTTrainer.from_checkpoint(str(checkpoint), cfg)
    trainer.rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    return trainer


def build_trainer(
    task: str | TaskPlan,
    params: Params,
    phase: str,
    overrides: dict[str, Any] | None = None,
    *,
    seed: int = 0,
    root: Path = ROOT,
    data: Path | None = None,
    checkpoint: Path | None = None,
) -> ODTTrainer:
    """A fresh trainer for `phase`: on the offline data (pretrain) or from the pretrained checkpoint (finetune)."""
    plan = as_plan(task, params)
    cfg, _ = train_config(plan, params, phase, overrides, seed=seed, root=root)
    if phase == "pretrain":
        return _fresh_trainer(plan, cfg, Path(data or data_path(root, plan.name)))
    if phase == "finetune":
        return _from_pretrained(Path(checkpoint or pretrain_dir(root, plan.name) / "checkpoint.pt"), cfg)
    raise ValueError(f"phase must be 'pretrain' or 'finetune', got {phase!r}")


def pretrain_key(plan: TaskPlan, params: Params, cfg: TrainConfig, data: Path) -> dict[str, Any]:
    """Everything that determines a pretraining result (its fingerprint and MLflow params)."""
    return {
        "stage": "pretrain",
        "task": plan.name,
        "model": dataclasses.asdict(plan.model),
        "train": cfg.model_dump(),
        "run": plan.pretrain_run.model_dump(),
        "env_version": params.env_version,
        "data_sha256": file_sha(data),
        "code_sha256": code_sha(),
    }


def finetune_key(plan: TaskPlan, params: Params, cfg: TrainConfig, checkpoint: Path, *, root: Path = ROOT) -> dict[str, Any]:
    """Same for finetuning; the seed is left out (one key per stage, seeds are below it)."""
    pre_cfg = plan.pretrain
    return {
        "fixed_obs": fixed_obs_key(fixed_obs(root, plan.name)),
        "stage": "finetune",
        "task": plan.name,
        "train": cfg.model_copy(update={"seed": 0}).model_dump(),
        "run": plan.finetune_run.model_dump(),
        "offline_eval": {k: getattr(pre_cfg, k) for k in ("g_eval", "eval_context_len", "eval_episodes")},
        "env_version": params.env_version,
        "checkpoint_sha256": file_sha(checkpoint),
        "code_sha256": code_sha(),
    }


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: MLflow params."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


# environments and evaluation -----------------------------------------------------------------
def dataset_meta_path(root: Path, task: str) -> Path:
    """data/<task>/<task>.json, written by the fetch stage beside the .hdf5."""
    return data_path(root, task).with_suffix(".json")


def fixed_obs(root: Path, task: str):
    """Observation dims the environment must pin as the dataset holds them (Ant's contact forces), or None."""
    from odt.envs import load_fixed_obs  # noqa: PLC0415

    meta = dataset_meta_path(root, task)
    return load_fixed_obs(meta) if meta.is_file() else None


def fixed_obs_key(fixed) -> dict[str, list] | None:
    """`fixed_obs` as plain lists, for fingerprints."""
    return None if fixed is None else {"dims": [int(d) for d in fixed[0]], "values": [float(v) for v in fixed[1]]}


def make_envs(plan: TaskPlan, n: int, params: Params, fixed=None):
    """`n` environments of the task, checked against the model's (the dataset's) dims: one line if they differ."""
    from odt.envs import check_dims, make_vector_env  # noqa: PLC0415

    envs = make_vector_env(plan.name, n, version=params.env_version, fixed_obs=fixed)
    check_dims(plan.name, envs, plan.model.state_dim, plan.model.act_dim)
    return envs


def scorer(task: str) -> Callable[[np.ndarray], np.ndarray]:
    from odt.tasks import normalized_score  # noqa: PLC0415

    return lambda returns: np.asarray(normalized_score(task, np.asarray(returns)), dtype=np.float64)


@contextlib.contextmanager
def _config(trainer: ODTTrainer, cfg: TrainConfig):
    """Evaluate with another phase's g_eval and context length, and the trainer's own seeding rule."""
    old = trainer.cfg
    trainer.cfg = cfg
    try:
        yield trainer
    finally:
        trainer.cfg = old


def evaluate_entry(trainer: ODTTrainer, envs, score, *, index: int, cfg: TrainConfig | None = None) -> dict[str, float]:
    with _config(trainer, cfg or trainer.cfg):
        result = trainer.evaluate(envs, index=index)
    normalized = score(result.returns)
    return {
        "eval_return": float(result.returns.mean()),
        "eval_return_std": float(result.returns.std()),
        "eval_normalized": float(normalized.mean()),
        "eval_normalized_std": float(normalized.std()),
    }


# checkpoints with pipeline state -------------------------------------------------------------
def _save_state(path: Path, trainer: ODTTrainer, rows: list[dict[str, float]], elapsed: float) -> None:
    save_checkpoint(path, {**trainer.state_dict(), "pipeline": {"rows": rows, "elapsed": float(elapsed)}})


def _resume(path: Path, cfg: TrainConfig) -> tuple[ODTTrainer, list[dict[str, float]], float]:
    trainer = ODTTrainer.from_checkpoint(str(path), cfg)
    extra = load_checkpoint(path)["pipeline"]
    return trainer, list(extra["rows"]), float(extra["elapsed"])


def save_policy(path: Path, trainer: ODTTrainer, task: str) -> Path:
    """Weights and what inference needs, without optimiser or replay buffer."""
    return save_checkpoint(path, {
        "task": task,
        "model_config": dataclasses.asdict(trainer.model_cfg),
        "model": trainer.model.state_dict(),
        "state_mean": torch.from_numpy(trainer.state_mean),
        "state_std": torch.from_numpy(trainer.state_std),
        "reward_scale": trainer.cfg.reward_scale,
        "g_eval": trainer.cfg.g_eval,
        "eval_context_len": trainer.cfg.eval_context_len,
    })


def load_policy(path: str | Path) -> tuple[DecisionTransformer, dict[str, Any]]:
    """(model in eval mode, the rest of the policy file) for odt.evaluation.evaluate."""
    state = load_checkpoint(path)
    model = DecisionTransformer(ModelConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    info = {k: v for k, v in state.items() if k not in ("model", "model_config")}
    info["state_mean"], info["state_std"] = info["state_mean"].numpy(), info["state_std"].numpy()
    return model.eval(), info


def _emit(log_fn: LogFn | None, rows: list[dict[str, float]]) -> None:
    if log_fn is not None and rows:
        log_fn(rows)


# pretraining ---------------------------------------------------------------------------------
def run_pretrain(
    task: str | TaskPlan,
    params: Params,
    *,
    out_dir: Path | None = None,
    log_fn: LogFn | None = None,
    eval_every: int | None = None,
    report: ReportFn | None = None,
    overrides: dict[str, Any] | None = None,
    root: Path = ROOT,
    data: Path | None = None,
    work_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Offline pretraining (seed 0), then the pretrained policy's evaluation.

    Writes `work_dir/state.pt` every `checkpoint_every` updates and resumes from it; on
    success copies the checkpoint to `out_dir/checkpoint.pt` and writes
    `out_dir/eval.json`. Returns the evaluation and the hyperparameters used.
    """
    plan = as_plan(task, params)
    data = Path(data or data_path(root, plan.name))
    if not data.is_file():
        raise FileNotFoundError(f"dataset {data} does not exist; run the fetch stage for {plan.name} first")
    cfg, hparams = train_config(plan, params, "pretrain", overrides, root=root)
    run = plan.pretrain_run
    eval_every = run.eval_every if eval_every is None else eval_every
    work = Path(work_dir or work_root(root, plan.name) / f"pretrain-{fingerprint(pretrain_key(plan, params, cfg, data))}")
    done_path = work / "result.json"

    if done_path.is_file():  # finished before: publish again, compute nothing
        result = json.loads(done_path.read_text())
        if log_fn is not None and (work / "rows.json").is_file():
            _emit(log_fn, json.loads((work / "rows.json").read_text()))
    else:
        result = _pretrain(plan, params, cfg, run, data, work, log_fn, eval_every, report, progress,
                           fixed_obs(root, plan.name))
        result["hparams"] = hparams
        write_json(done_path, result)
        (work / "state.pt").unlink(missing_ok=True)  # checkpoint.pt holds the same state
    if out_dir is not None:
        out_dir = Path(out_dir)
        copy_file(work / "checkpoint.pt", out_dir / "checkpoint.pt")
        write_json(out_dir / "eval.json", result)
    result["work_dir"] = str(work)
    return result


def _pretrain(plan, params, cfg, run, data, work, log_fn, eval_every, report, progress, fixed) -> dict[str, Any]:
    state_path = work / "state.pt"
    start = time.perf_counter()
    if state_path.is_file():
        trainer, rows, elapsed = _resume(state_path, cfg)
        _emit(log_fn, rows)  # the logger drops what it already has
    else:
        trainer, rows, elapsed = _fresh_trainer(plan, cfg, data), [], 0.0
    score = scorer(plan.name)
    envs = make_envs(plan, cfg.eval_episodes, params, fixed)  # built first: a dims mismatch fails before training
    total = cfg.pretrain_updates
    pending: list[dict[str, float]] = []

    def callback(metrics: dict[str, float]) -> None:
        step = int(metrics["step"])
        row = {**metrics, "wall_time": elapsed + time.perf_counter() - start}
        if eval_every and step % eval_every == 0 and step < total:
            row |= evaluate_entry(trainer, envs, score, index=step)
            if report is not None:
                report(row["eval_normalized"], step)
        rows.append(row)
        pending.append(row)
        if step % run.checkpoint_every == 0 or step >= total:
            _save_state(state_path, trainer, rows, row["wall_time"])
            _emit(log_fn, pending)
            pending.clear()

    trainer.pretrain(total, log_every=run.log_every, callback=callback, progress=progress)
    if total == 0 or not state_path.is_file():
        _save_state(state_path, trainer, rows, elapsed + time.perf_counter() - start)
    # the pretrained policy: evaluation index 0, the rule each finetuning seed also uses for its offline score
    final = evaluate_entry(trainer, envs, score, index=0)
    wall = elapsed + time.perf_counter() - start
    if report is not None:
        report(final["eval_normalized"], trainer.num_updates)
    copy_file(state_path, work / "checkpoint.pt")
    save_policy(work / "policy.pt", trainer, plan.name)
    write_json(work / "rows.json", rows)
    return {
        "task": plan.name,
        "normalized_mean": final["eval_normalized"],
        "normalized_std": final["eval_normalized_std"],
        "return_mean": final["eval_return"],
        "return_std": final["eval_return_std"],
        "episodes": cfg.eval_episodes,
        "g_eval": cfg.g_eval,
        "eval_context_len": cfg.eval_context_len,
        "updates": trainer.num_updates,
        "wall_time": wall,
    }


# finetuning ----------------------------------------------------------------------------------
CURVE_COLUMNS = ["round", "online_samples", *EVAL_KEYS]


def finetune_work_dir(task: str | TaskPlan, params: Params, *, checkpoint: Path | None = None,
                      overrides: dict[str, Any] | None = None, root: Path = ROOT) -> Path:
    """The stage's work directory; each seed works in `seed_<k>` below it."""
    plan = as_plan(task, params)
    checkpoint = Path(checkpoint or pretrain_dir(root, plan.name) / "checkpoint.pt")
    cfg, _ = train_config(plan, params, "finetune", overrides, root=root)
    return work_root(root, plan.name) / f"finetune-{fingerprint(finetune_key(plan, params, cfg, checkpoint, root=root))}"


def seed_done(work_dir: Path, seed: int) -> dict[str, Any] | None:
    path = Path(work_dir) / f"seed_{seed}" / "result.json"
    return json.loads(path.read_text()) if path.is_file() else None


def run_finetune_seed(
    task: str | TaskPlan,
    params: Params,
    seed: int,
    *,
    checkpoint: Path | None = None,
    out_dir: Path | None = None,
    log_fn: LogFn | None = None,
    report: ReportFn | None = None,
    overrides: dict[str, Any] | None = None,
    root: Path = ROOT,
    work_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Online finetuning of one seed from the pretrained checkpoint (Algorithm 1).

    First evaluates the pretrained policy with the pretraining phase's g_eval and context
    (the seed's offline score) and with the finetuning phase's (the curve's first point),
    then runs rounds until the online budget, evaluating every `eval_every_rounds`.
    Resumable from `work_dir/seed_<k>/state.pt`; a finished seed is read back, not rerun.
    On success `out_dir/seed_<k>/` holds result.json, curve.csv and policy.pt.
    """
    plan = as_plan(task, params)
    checkpoint = Path(checkpoint or pretrain_dir(root, plan.name) / "checkpoint.pt")
    if not checkpoint.is_file():
        raise FileNotFoundError(f"pretrained checkpoint {checkpoint} does not exist; run the pretrain stage for {plan.name} first")
    work = Path(work_dir or finetune_work_dir(plan, params, checkpoint=checkpoint, overrides=overrides, root=root))
    seed_dir = work / f"seed_{seed}"
    result = seed_done(work, seed)
    if result is None:
        cfg, hparams = train_config(plan, params, "finetune", overrides, seed=seed, root=root)
        # the offline score uses the pretraining phase's g_eval, context and episodes (never tuned)
        pre_cfg = plan.pretrain.model_copy(update={"seed": seed})
        result = _finetune(plan, params, cfg, pre_cfg, checkpoint, seed_dir, log_fn, report, progress,
                           fixed_obs(root, plan.name))
        result["hparams"] = hparams
        write_json(seed_dir / "result.json", result)  # the done marker: written last
        (seed_dir / "state.pt").unlink(missing_ok=True)  # the buffer makes it large; the result is all we keep
    elif log_fn is not None and (seed_dir / "rows.json").is_file():
        _emit(log_fn, json.loads((seed_dir / "rows.json").read_text()))
    if out_dir is not None:
        publish_seed(seed_dir, Path(out_dir) / f"seed_{seed}")
    return result


def publish_seed(seed_dir: Path, dst: Path) -> None:
    for name in ("policy.pt", "curve.csv", "result.json"):
        copy_file(seed_dir / name, dst / name)


def _finetune(plan, params, cfg, pre_cfg, checkpoint, seed_dir, log_fn, report, progress, fixed) -> dict[str, Any]:
    state_path = seed_dir / "state.pt"
    score = scorer(plan.name)
    eval_envs = make_envs(plan, cfg.eval_episodes, params, fixed)
    start = time.perf_counter()
    if state_path.is_file():
        trainer, rows, elapsed = _resume(state_path, cfg)
        _emit(log_fn, rows)
    else:
        trainer, rows, elapsed = _from_pretrained(checkpoint, cfg), [], 0.0
        pre_envs = eval_envs if pre_cfg.eval_episodes == cfg.eval_episodes else make_envs(plan, pre_cfg.eval_episodes, params, fixed)
        offline = evaluate_entry(trainer, pre_envs, score, index=0, cfg=pre_cfg)
        first = evaluate_entry(trainer, eval_envs, score, index=0)
        trainer.history.append({"round": 0.0, "online_samples": 0.0, **first})
        row = {"step": 0.0, "online_samples": 0.0, "num_updates": float(trainer.num_updates),
               **{k.replace("eval_", "offline_"): v for k, v in offline.items()}, **first,
               "wall_time": time.perf_counter() - start}
        rows.append(row)
        _save_state(state_path, trainer, rows, row["wall_time"])
        _emit(log_fn, [row])
        if report is not None:
            report(first["eval_normalized"], 0)
    explore_envs = make_envs(plan, cfg.rollouts_per_round, params, fixed)
    every = plan.finetune_run.checkpoint_every_rounds
    pending: list[dict[str, float]] = []

    def callback(metrics: dict[str, float]) -> None:
        row = {**metrics, "num_updates": float(metrics["step"]), "step": float(metrics["online_samples"]),
               "wall_time": elapsed + time.perf_counter() - start}
        rows.append(row)
        pending.append(row)
        if report is not None and "eval_normalized" in metrics:
            report(metrics["eval_normalized"], int(metrics["online_samples"]))
        if trainer.rounds % every == 0 or trainer.online_samples >= cfg.online_samples:
            _save_state(state_path, trainer, rows, row["wall_time"])
            _emit(log_fn, pending)
            pending.clear()

    trainer.finetune(explore_envs, eval_envs, callback=callback, score=score, progress=progress)
    offline = rows[0]
    final = trainer.history[-1]
    save_policy(seed_dir / "policy.pt", trainer, plan.name)
    write_csv(seed_dir / "curve.csv", trainer.history, CURVE_COLUMNS)
    write_json(seed_dir / "rows.json", rows)
    return {
        "task": plan.name,
        "seed": int(cfg.seed),
        "offline_normalized": offline["offline_normalized"],
        "offline_normalized_std": offline["offline_normalized_std"],
        "offline_return": offline["offline_return"],
        "online_normalized": final["eval_normalized"],
        "online_normalized_std": final["eval_normalized_std"],
        "online_return": final["eval_return"],
        "online_samples": int(trainer.online_samples),
        "rounds": int(trainer.rounds),
        "num_updates": int(trainer.num_updates),
        "wall_time": rows[-1]["wall_time"],
    }


# parallel seeds ------------------------------------------------------------------------------
def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def plan_workers(n_jobs: int, n_tasks: int, backend: str, threads_per_worker: int | None) -> tuple[int, int]:
    """(workers, torch threads per seed), with workers x threads <= cores for loky on this machine.

    Threads default to 1 on every backend, whatever the number of workers or of seeds
    left: torch's CPU results depend on the thread count, so a seed gives the same
    numbers on loky, dask and ray, and when it resumes alone after a kill. A cluster
    (dask, ray) places work itself.
    """
    threads = threads_per_worker or 1
    if backend != "loky":
        return n_jobs, threads
    cores = available_cores()
    workers = max(1, min(n_jobs, n_tasks, cores))
    return workers, max(1, min(threads, cores // workers))


@contextlib.contextmanager
def joblib_backend(backend: str, n_jobs: int, address: str | None):
    """joblib.parallel_config for loky, dask (a distributed.Client) or ray."""
    import joblib  # noqa: PLC0415

    if backend == "loky":
        with joblib.parallel_config(backend="loky", n_jobs=n_jobs):
            yield
    elif backend == "dask":
        import distributed  # noqa: PLC0415

        if address:
            with distributed.Client(address) as client, joblib.parallel_config(backend="dask", n_jobs=n_jobs):
                yield client
        else:
            try:
                client = distributed.get_client()
            except ValueError:
                raise RuntimeError(
                    "parallel.backend is dask but parallel.address is empty and no dask Client is running; "
                    "set parallel.address to the scheduler (tcp://host:8786)"
                ) from None
            with joblib.parallel_config(backend="dask", n_jobs=n_jobs):
                yield client
    elif backend == "ray":
        try:
            import ray  # noqa: PLC0415
            from ray.util.joblib import register_ray  # noqa: PLC0415
        except ImportError:
            raise RuntimeError("parallel.backend is ray but ray is not installed: pip install 'ray[default]'") from None
        register_ray()
        ray.init(address=address, ignore_reinit_error=True)  # None: a local ray instance
        with joblib.parallel_config(backend="ray", n_jobs=n_jobs):
            yield
    else:
        raise ValueError(f"unknown joblib backend {backend!r}")


def run_parallel(fn: Callable[..., dict], jobs: Iterable[dict[str, Any]], *, backend: str, n_jobs: int,
                 address: str | None = None) -> list[dict]:
    from joblib import Parallel, delayed  # noqa: PLC0415

    jobs = list(jobs)
    if not jobs:
        return []
    with joblib_backend(backend, n_jobs, address):
        return Parallel()(delayed(fn)(**job) for job in jobs)


# learning curves -----------------------------------------------------------------------------
def aggregate_curves(curves: list[list[dict[str, float]]], budget: int, points: int = 21) -> list[dict[str, float]]:
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


def plot_curve(path: Path, curve: list[dict[str, float]], *, title: str, paper_online: float | None = None,
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

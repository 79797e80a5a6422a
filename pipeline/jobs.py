"""One seed of each stage, as a worker runs it: the library's loop, what it leaves in the seed directory, its result;
and ODT's two phases as stages of seeds (`pretrain_stage`, `finetune_stage`), which the experiments reuse.

pipeline.seeds.run calls a stage's job as `job(seed, seed_dir, logger)` in a worker process
(the stage binds its `Setup` with functools.partial), once for every seed without a
result.json; a job started again after a kill resumes from the checkpoint it left in
`seed_dir`. The result it returns becomes the seed's result.json: the loop's scores
(odt.loops.Run.scores), its update count and what the stage adds. A learning rate that
diverges is named as params.yaml spells it, or as the tuned file it came from.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from odt import curves
from odt.divergence import Diverged
from pipeline import caching, paths, seeds
from pipeline.params import Params, TaskPlan, learning_rate_setting, phase_config


@dataclass(frozen=True)
class Setup:
    """What every seed of a stage trains with."""

    stage: str  # pretrain, dt, finetune, iql, sac
    plan: TaskPlan
    cfg: Any  # the stage's config: PretrainConfig (pretrain, dt), FinetuneConfig, IQLConfig, SACConfig
    device: str
    root: Path  # absolute: data/ and runs/ are found from it
    hparams: dict[str, Any] | None = None  # ODT and DT: learning rate, weight decay and where they came from
    pretrained: Path | None = None  # finetune: the pretraining work directory it starts from (paths.pretrained)


def pretrain_stage(plan: TaskPlan, params: Params, *, root: Path, dt: bool = False) -> seeds.Stage:
    """The seeds of ODT's pretraining (the task's `pretrain` block, or its tuned values) or, `dt`, of the DT baseline
    (its `dt.train` block): each runs `pretrain` from the fetched dataset."""
    root = Path(root).resolve()
    if dt:
        cfg = plan.baseline("dt")
        hparams = {"learning_rate": cfg.learning_rate, "weight_decay": cfg.weight_decay, "source": "params"}
    else:
        cfg, hparams = phase_config(plan, params, "pretrain", root=root)
    setup = Setup("dt" if dt else "pretrain", plan, cfg, params.device, root, hparams)
    data = paths.existing_dataset(root, plan.name)  # missing or altered: one line, before any seed
    return seeds.Stage(
        setup.stage, plan.name, params, root,
        key=caching.pretrain_key(setup.stage, plan, params, plan.dt_model if dt else plan.model, cfg, data),
        job=functools.partial(pretrain, setup),
        files=("checkpoint.pt", "curve.csv", "dynamics.csv", "result.json"),
        step=cfg.pretrain_updates,
        tags={"hparams_source": hparams["source"]},
        extra=lambda results: {
            "best_mean": sum(r["best_normalized"] for r in results) / len(results),
            "updates": cfg.pretrain_updates,
            "hparams": hparams,
        },
    )


def finetune_stage(plan: TaskPlan, params: Params, *, root: Path, pretrained: Path | None = None) -> seeds.Stage:
    """Every seed finetunes its pretrained checkpoint with the task's `finetune` block (or its tuned values); each
    input is checked once here, before any seed or MLflow run starts.

    `pretrained`: the work directory of a pretraining (an experiment's variant, pipeline/experiment.py), whose
    seed_<k>/checkpoint.pt seed k starts from; default: the pretrain stage's runs/<task>/pretrain/."""
    from odt.envs import check_dims, vector_env

    root = Path(root).resolve()
    paths.existing_dataset(root, plan.name)  # each seed reloads the offline data: missing or altered, one line now
    checkpoints = paths.existing_checkpoints(root, plan.name, params.seeds, pretrained)
    envs = vector_env(plan.env_fn(root), 1)  # a dims mismatch: one line, before any seed
    check_dims(plan.name, envs, plan.model.state_dim, plan.model.act_dim)
    envs.close()
    cfg, hparams = phase_config(plan, params, "finetune", root=root)
    return seeds.Stage(
        "finetune", plan.name, params, root, key=caching.finetune_key(plan, params, cfg, checkpoints, root, pretrained),
        job=functools.partial(finetune, Setup("finetune", plan, cfg, params.device, root, hparams, pretrained)),
        files=("policy.pt", "curve.csv", "dynamics.csv", "result.json"), step=cfg.online_samples,
        tags={"hparams_source": hparams["source"]},
        extra=lambda results: {"online_samples": cfg.online_samples, "hparams": hparams})


def pretrain(setup: Setup, seed: int, seed_dir: Path, logger) -> dict[str, Any]:
    """ODT's pretraining, or the DT baseline (odt.loops.pretrain with the task's `dt` block); leaves checkpoint.pt and
    curve.csv. The result: the final evaluation (the offline score) and the best one on the way."""
    from odt.loops import pretrain as loop

    plan, dt = setup.plan, setup.stage == "dt"
    try:
        run = loop(paths.dataset(setup.root, plan.name), plan.dt_model if dt else plan.model, setup.cfg,
                   plan.env_fn(setup.root), task=plan.name, seed=seed, device=setup.device, logger=logger,
                   checkpoint=seed_dir / "checkpoint.pt", progress=False)
    except Diverged as err:
        raise err.named(f"{setup.stage} {plan.name} seed {seed}",
                        learning_rate_setting(plan, "dt.train" if dt else "pretrain", setup.hparams))
    run.write_curve(seed_dir / "curve.csv")
    run.write_dynamics(seed_dir / "dynamics.csv")
    return {"task": plan.name, "seed": seed, **run.scores(), "num_updates": run.num_updates,
            "hparams": setup.hparams}


def finetune(setup: Setup, seed: int, seed_dir: Path, logger) -> dict[str, Any]:
    """Pretraining seed k's checkpoint finetuned online with seed k; leaves policy.pt and curve.csv."""
    from odt.checkpoint import save_policy
    from odt.loops import finetune as loop

    plan, cfg = setup.plan, setup.cfg
    try:
        run = loop(paths.pretrained(setup.root, plan.name, seed, setup.pretrained), cfg, plan.env_fn(setup.root),
                   data=paths.dataset(setup.root, plan.name), seed=seed, offline=plan.pretrain, device=setup.device,
                   logger=logger, checkpoint=seed_dir / "state.pt", progress=False)
    except Diverged as err:
        raise err.named(f"finetune {plan.name} seed {seed}", learning_rate_setting(plan, "finetune", setup.hparams))
    save_policy(seed_dir / "policy.pt", run.trainer, cfg)
    run.write_curve(seed_dir / "curve.csv")
    run.write_dynamics(seed_dir / "dynamics.csv")
    (seed_dir / "state.pt").unlink()  # the buffer makes it large; the result is all we keep
    return {"task": plan.name, "seed": seed, **run.scores(), "rounds": run.final["round"],
            "num_updates": run.num_updates, "hparams": setup.hparams}


def iql(setup: Setup, seed: int, seed_dir: Path, logger) -> dict[str, Any]:
    """The IQL baseline, offline on the dataset then online; leaves curve.csv."""
    from odt.baselines.iql import iql as loop

    plan = setup.plan
    run = loop(paths.dataset(setup.root, plan.name), setup.cfg, plan.env_fn(setup.root), task=plan.name, seed=seed,
               device=setup.device, logger=logger, checkpoint=seed_dir / "state.pt", progress=False)
    run.write_curve(seed_dir / "curve.csv")
    (seed_dir / "state.pt").unlink()  # the replay buffer makes it large
    return {"task": plan.name, "seed": seed, **run.scores(), "num_updates": run.num_updates}


def sac(setup: Setup, seed: int, seed_dir: Path, logger) -> dict[str, Any]:
    """SAC from scratch in the task's environment; leaves curve.csv."""
    from odt.baselines.sac import sac as loop

    plan = setup.plan
    run = loop(setup.cfg, plan.env_fn(setup.root), task=plan.name, seed=seed, device=setup.device, logger=logger,
               checkpoint=seed_dir / "state.pt", progress=False)
    run.write_curve(seed_dir / "curve.csv")
    (seed_dir / "state.pt").unlink()
    return {"task": plan.name, "seed": seed, **run.scores(), "num_updates": run.num_updates}


def g_eval_sweep(setup: Setup, finetuned: Path, values: tuple[float, ...], seed: int, seed_dir: Path,
                 logger) -> dict[str, Any]:
    """Figure 4.2 / 5.2 (left) for one seed: its pretrained checkpoint (`setup.pretrained`) and its finetuned policy
    (`finetuned`/seed_<k>/policy.pt) each evaluated at every g_eval in `values`, with their phase's context length
    and episodes, on the same episode seeds throughout; leaves sweep.csv (phase, g_eval, scores)."""
    from odt.checkpoint import load_policy
    from odt.envs import vector_env
    from odt.evaluation import g_eval_sweep as sweep

    plan, start, rows = setup.plan, time.perf_counter(), []
    for phase, path, cfg in [("pretrained", paths.pretrained(setup.root, plan.name, seed, setup.pretrained),
                              plan.pretrain), ("finetuned", finetuned / f"seed_{seed}" / "policy.pt", plan.finetune)]:
        model, info = load_policy(path)
        envs = vector_env(plan.env_fn(setup.root), cfg.eval_episodes)
        rows += [{"phase": phase, **r} for r in sweep(model, envs, values, seed=seed, task=plan.name,
                                                      state_mean=info["state_mean"], state_std=info["state_std"],
                                                      context_len=cfg.eval_context_len)]
        envs.close()
    curves.write_csv(seed_dir / "sweep.csv", rows, ["phase", "g_eval", *curves.SCORES])
    return {"task": plan.name, "seed": seed, "values": list(values), "wall_time": time.perf_counter() - start}

"""DVC stage `experiment@<id>`: one of the paper's experiments (params.yaml `experiments.<id>`) on each of its tasks.

    python -m pipeline.experiment --name fig5-4

Each variant pretrains and finetunes its seeds as the pretrain and finetune stages do
(pipeline/seeds.py), its MLflow runs tagged `experiment` and `variant`; a phase that another
variant or experiment computed alike is reused (README, "The paper's claims, checked"). Kind
`g_eval` then evaluates every seed's two policies at each g_eval; kind `sampling` is Fig. F.1.
Writes experiments/<id>/<task>/<variant>/<phase>/seed_<k>/ and experiments/<id>.json.
"""
from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path
from typing import Any

import numpy as np

from odt import curves
from odt.atomic import write_json
from odt.config import ConfigError
from odt.replay import sampling_probabilities
from pipeline import caching, cli, jobs, paths, seeds
from pipeline.params import BASE, ExperimentParams, Params, plan_task

FILES = ("curve.csv", "dynamics.csv", "result.json")  # per seed; checkpoints and policies stay in the work cache


def variant(params: Params, name: str, task: str, label: str, *, root: Path, track: bool) -> dict[str, Any]:
    """Pretraining, then finetuning, of one variant (`BASE`: no overrides) of `task`: what `seeds.run` returned for
    each, the plan and the params with the experiment's seed count."""
    spec = params.experiments[name]
    plan = plan_task(params, task, (name, label))
    own = params.model_copy(update={"seeds": spec.seeds})
    out = paths.experiment_dir(root, name) / task / label
    def mark(stage: seeds.Stage, phase: str) -> seeds.Stage:
        return dataclasses.replace(stage, variant=(name, label), out=out / phase, files=FILES)

    pre = seeds.run(mark(jobs.pretrain_stage(plan, own, root=root), "pretrain"), track=track)
    fin = seeds.run(mark(jobs.finetune_stage(plan, own, root=root, pretrained=Path(pre["work_dir"])), "finetune"),
                    track=track)
    return {"pretrain": pre, "finetune": fin, "plan": plan, "params": own}


def _summaries(ran: dict[str, Any]) -> dict[str, Any]:
    return {phase: ran[phase]["summary"] for phase in ("pretrain", "finetune")}


def run_variants(params: Params, name: str, task: str, *, root: Path, track: bool) -> dict[str, Any]:
    return {v: _summaries(variant(params, name, task, v, root=root, track=track))
            for v in params.experiments[name].variants}


def run_g_eval(params: Params, name: str, task: str, *, root: Path, track: bool) -> dict[str, Any]:
    """The base variant, then each seed's pretrained and finetuned policy evaluated at every g_eval."""
    spec = params.experiments[name]
    base = variant(params, name, task, BASE, root=root, track=track)
    plan, own = base["plan"], base["params"]
    pre, fin = Path(base["pretrain"]["work_dir"]), Path(base["finetune"]["work_dir"])
    values = tuple(float(g) for g in spec.g_eval)
    setup = jobs.Setup("g_eval", plan, plan.finetune, own.device, root, pretrained=pre)
    key = {"stage": "g_eval", "task": task, "pretrained": pre.name, "finetuned": fin.name, "g_eval": values,
           "pretrain_eval": plan.pretrain.evaluation.model_dump(),
           "finetune_eval": plan.finetune.evaluation.model_dump(), "code_sha256": caching.code_sha()}
    sweep = seeds.Stage("g_eval", task, own, root, key=key, files=("sweep.csv", "result.json"), variant=(name, BASE),
                        job=functools.partial(jobs.g_eval_sweep, setup, fin, values),
                        out=paths.experiment_dir(root, name) / task / "g_eval")
    seeds.run(sweep, track=track)
    return {BASE: _summaries(base), "g_eval": list(values)}


def run_sampling(params: Params, name: str, task: str, *, root: Path, track: bool) -> dict[str, Any]:
    """Figure F.1: each trajectory's probability of being sampled by length and by return; how they correlate."""
    from odt.datasets.hdf5 import load_d4rl_hdf5

    p = sampling_probabilities(load_d4rl_hdf5(paths.existing_dataset(root, task), task=task))
    rows = [dict(zip(p, values)) for values in zip(*p.values())]
    curves.write_csv(paths.experiment_dir(root, name) / task / "sampling.csv", rows, list(p))
    return {"trajectories": len(rows), "pearson": float(np.corrcoef(p["p_length"], p["p_return"])[0, 1])}


KINDS = {"variants": run_variants, "g_eval": run_g_eval, "sampling": run_sampling}


def experiment(params: Params, name: str, *, root: Path, track: bool = True) -> dict[str, Any]:
    """Every task of experiment `name`; its summary, also written to experiments/<name>.json."""
    if name not in params.experiments:
        raise ConfigError(f"experiment '{name}' is not in params.yaml (experiments: "
                          f"{', '.join(params.experiments) or 'none'})")
    spec: ExperimentParams = params.experiments[name]
    summary = {"experiment": name, "kind": spec.kind, "seeds": spec.seeds,
               "tasks": {task: KINDS[spec.kind](params, name, task, root=Path(root).resolve(), track=track)
                         for task in spec.tasks}}
    write_json(paths.experiment_dir(root, name).with_suffix(".json"), summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = cli.Parser(prog="python -m pipeline.experiment", description=__doc__.strip().splitlines()[0])
    ap.add_argument("--name", required=True, help="the experiment's id in params.yaml `experiments` (fig5-4, ...)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--root", default=".", type=Path, help="repository root (data/, runs/ and mlflow.db live there)")
    ap.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    args = ap.parse_args(argv)

    def body():
        params, _ = cli.load_or_exit(args.params)
        return experiment(params, args.name, root=args.root, track=not args.no_track)

    code, out = cli.run_guarded(f"experiment {args.name}", body, failed=(seeds.SeedsFailed,), bad=cli.bad_input())
    if code == 0:
        print(f"experiment {args.name}: {', '.join(out['tasks'])} done; experiments/{args.name}.json")
    return code


if __name__ == "__main__":
    sys.exit(main())

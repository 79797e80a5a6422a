"""DVC stage `dt@<task>`: the Decision Transformer baseline (Chen et al. 2021), offline, one run per seed.

    python -m pipeline.dt --task hopper-medium-v2

The same loop as ODT's pretraining (odt.loops.pretrain) with the task's `dt` block: a
deterministic head trained by MSE, AdamW, the positional embedding kept, evaluated with its
return target. Writes runs/<task>/dt/seed_<k>/{checkpoint.pt, curve.csv, result.json} and
runs/<task>/dt.json. MLflow: parent run `dt`, a child run per seed, tagged algorithm=dt.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pipeline import paths
from pipeline.params import Params, TaskPlan
from pipeline.pretrain import run_seeds


def run_stage(plan: TaskPlan, params: Params, *, root: Path = paths.ROOT, track: bool = True, **parallel) -> dict[str, Any]:
    cfg = plan.baseline("dt")
    hparams = {"learning_rate": cfg.learning_rate, "weight_decay": cfg.weight_decay, "source": "params"}
    return run_seeds("dt", plan, params, plan.dt_model, cfg, root=Path(root).resolve(), track=track, hparams=hparams,
                     **parallel)


def main(argv: list[str] | None = None) -> int:
    from pipeline.cli import stage_main  # noqa: PLC0415

    return stage_main(argv, doc=__doc__, stage="dt", run_stage=run_stage,
                      fields=("task", "seeds", "offline_mean", "offline_std"))


if __name__ == "__main__":
    sys.exit(main())

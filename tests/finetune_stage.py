"""The finetune stage's test inputs and outputs: one task of the tiny profile, 4 seeds (conftest's `pretrained` and
`baseline` fixtures build them once a session)."""
from __future__ import annotations

import json
import shutil
import sys

from pipeline import paths

FT_TASK = "hopper-medium-v2"
FT_SEEDS = 4


def stage_cmd(stage: str, root, *extra: str) -> list[str]:
    """`python -m pipeline.<stage>` on FT_TASK with the inputs and params.yaml in `root`."""
    return [sys.executable, "-m", f"pipeline.{stage}", "--task", FT_TASK, "--root", str(root), "--params",
            str(root / "params.yaml"), *extra]


def stage_inputs(root, src):
    """params.yaml, dataset and every seed's pretrained checkpoint (copied from `src`), no work directory."""
    root.mkdir(parents=True, exist_ok=True)
    for rel in ("params.yaml", f"data/{FT_TASK}/{FT_TASK}.hdf5"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, root / rel)
    shutil.copytree(src / "runs" / FT_TASK / "pretrain", root / "runs" / FT_TASK / "pretrain")
    return root


def finetune_results(root) -> dict[int, dict]:
    """Per-seed result.json and curve.csv as published by the finetune stage, wall time left out."""
    out = {}
    for seed in range(FT_SEEDS):
        seed_dir = paths.run_dir(root, FT_TASK, "finetune") / f"seed_{seed}"
        result = json.loads((seed_dir / "result.json").read_text())
        result.pop("wall_time")
        out[seed] = {"result": result, "curve": (seed_dir / "curve.csv").read_text()}
    return out

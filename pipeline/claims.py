"""The paper's claims, checked: a plot per experiment and task, and the claims table, in reports/experiments/.

Written by the report stage, or alone by `python -m pipeline.claims`: what each experiment left in
experiments/, judged and drawn by odt/claims.py (the verdict rule is there), as
<id>-<task>.png, claims.md, claims.csv and variants.csv (each variant's overrides and scores).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from odt import claims, curves
from odt.atomic import atomic_dir
from odt.tasks import get_task
from pipeline import cli, paths
from pipeline.params import BASE, Params, plan_task

REPORTS = Path("reports") / "experiments"
COLUMNS = ["experiment", "task", "claim", "arms", "measured (final)", "verdict (final)", "measured (best)",
           "verdict (best)", "test", "seeds"]


def _seeds(directory: Path, file: str) -> list[Path]:
    return sorted(directory.glob(f"seed_*/{file}"), key=lambda p: int(p.parent.name.removeprefix("seed_")))


def arm(params: Params, root: Path, name: str, task: str, variant: str) -> claims.Arm:
    """A variant's settings (its plan) and what its seeds published."""
    plan = plan_task(params, task, (name, variant))
    out = paths.experiment_dir(root, name) / task / variant
    pre, fin = (_seeds(out / phase, "dynamics.csv") for phase in ("pretrain", "finetune"))
    return claims.Arm(plan.model, plan.pretrain, plan.finetune,
                      results=[json.loads(p.read_text()) for p in _seeds(out / "finetune", "result.json")],
                      curves=[curves.read_csv(p) for p in _seeds(out / "finetune", "curve.csv")],
                      dynamics=[curves.read_csv(a) + curves.read_csv(b) for a, b in zip(pre, fin)])


def data(params: Params, root: Path, name: str, task: str) -> Any:
    """What odt.claims reads of one experiment on one task: its arms, or its sweep's or sampling's rows."""
    spec, where = params.experiments[name], paths.experiment_dir(root, name) / task
    if spec.kind == "variants":
        return {v: arm(params, root, name, task, v) for v in spec.variants}
    if spec.kind == "g_eval":
        return [{**row, "seed": k} for k, p in enumerate(_seeds(where / "g_eval", "sweep.csv"))
                for row in curves.read_csv(p)]
    return curves.read_csv(where / "sampling.csv")


def variant_rows(params: Params, root: Path, name: str, task: str, found: Any) -> list[dict[str, Any]]:
    """Each variant's overrides and scores (offline, final, best: mean and std over seeds)."""
    spec = params.experiments[name]
    arms = found if spec.kind == "variants" else {BASE: arm(params, root, name, task, BASE)} \
        if spec.kind == "g_eval" else {}
    overrides = {v: spec.variants[v].blocks(task) if v in spec.variants else {} for v in arms}
    return [{"experiment": name, "task": task, "variant": v,
             "overrides": str({k: o for k, o in overrides[v].items() if o}), **a.summary()} for v, a in arms.items()]


def report(params: Params, root: Path, out: Path) -> dict[str, Any]:
    """Every experiment's plot, claims and variants, written to `out` (replaced whole, or not at all)."""
    found_claims, variants = [], []
    with atomic_dir(out) as tmp:
        for name, spec in params.experiments.items():
            if not paths.experiment_dir(root, name).with_suffix(".json").is_file():  # not run (yet): said
                found_claims.append({"experiment": name, "claim": f"not run: `dvc repro experiment@{name}`"})
                continue
            for task in spec.tasks:
                found, beta = data(params, root, name, task), -get_task(task).act_dim
                claims.PLOTS[spec.kind](tmp / f"{name}-{task}.png", found, title=f"{name} on {task}", beta=beta)
                variants += variant_rows(params, root, name, task, found)
                for row in claims.CLAIMS.get(name, lambda *a: [])(found, beta):
                    seeds = spec.seeds if spec.kind != "sampling" else None  # Fig. F.1 reads the data only
                    found_claims.append({"experiment": name, "task": task, "seeds": seeds, **row})
        table = pd.DataFrame(found_claims, columns=COLUMNS)
        (tmp / "claims.csv").write_text(table.to_csv(index=False))
        (tmp / "variants.csv").write_text(pd.DataFrame(variants).to_csv(index=False, float_format="%.2f"))
        lines = ["# The paper's claims, checked", "",
                 f"Profile `{params.profile}`. A claim holds only outside the seeds' spread (difference of the means "
                 "above the larger std over seeds); *final* is the evaluation after the whole online budget, *best* "
                 "the best evaluation during finetuning. Plots: `<experiment>-<task>.png` beside this file.", ""]
        shown = table.astype(object).fillna("")  # empty cells blank (a claim judged on final scores only)
        lines.append(shown.to_markdown(index=False) if len(table) else "No experiments in params.yaml.")
        (tmp / "claims.md").write_text("\n".join(lines) + "\n")
    return {"claims": len(table), "holds": int((table["verdict (final)"] == "holds").sum())}


def main(argv: list[str] | None = None) -> int:
    ap = cli.Parser(prog="python -m pipeline.claims", description=__doc__.strip().splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--root", default=".", type=Path)
    ap.add_argument("--out", default=None, type=Path, help="default: reports/experiments under the root")
    args = ap.parse_args(argv)

    def body():
        params, _ = cli.load_or_exit(args.params)
        return report(params, args.root.resolve(), args.out or args.root / REPORTS)

    code, out = cli.run_guarded("claims", body, bad=cli.bad_input())
    if code == 0:
        print(f"claims: {out['claims']} checked, {out['holds']} hold (final); {args.out or REPORTS}/claims.md")
    return code


if __name__ == "__main__":
    sys.exit(main())

"""The paper's claims, checked: a plot per experiment and task, and the claims table, in reports/experiments/.

The report stage (pipeline/report.py) writes them; `python -m pipeline.claims` writes them alone.
Reads what `python -m pipeline.experiment` left in runs/experiments/ for every experiment in
params.yaml. Each claim of the paper is one sentence, our measured numbers beside it, and a
verdict: "holds" only outside the seeds' spread (the difference of two means larger than the
larger of their standard deviations over seeds), "inside the spread" when the measured
difference is smaller than that, "does not hold" when it is outside the spread the other way.
Finetuning results are judged twice, labelled: on the final evaluation (after the whole online
budget) and on the best evaluation during finetuning, as the paper's protocol leaves open which
one its curves and tables report.

Writes reports/experiments/<id>-<task>.png, claims.md, claims.csv (one row per claim and task) and
variants.csv (one row per variant: its overrides and scores).
"""
from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from odt import curves
from odt.atomic import write_text
from odt.tasks import get_task
from pipeline import cli, paths
from pipeline.experiment import BASE
from pipeline.params import Params, TaskPlan, plan_task

REPORTS = Path("reports") / "experiments"
SCORES = {"final": "online_normalized", "best": "best_normalized"}


# reading what the experiments left ---------------------------------------------------------
def seed_results(root: Path, name: str, task: str, variant: str, phase: str = "finetune") -> list[dict[str, Any]]:
    directory = paths.experiment_dir(root, name) / task / variant / phase
    return [json.loads(p.read_text()) for p in sorted(directory.glob("seed_*/result.json"), key=_seed_number)]


def seed_csvs(root: Path, name: str, task: str, variant: str, phase: str, file: str) -> list[list[dict[str, float]]]:
    directory = paths.experiment_dir(root, name) / task / variant / phase
    return [curves.read_csv(p) for p in sorted(directory.glob(f"seed_*/{file}"), key=_seed_number)]


def _seed_number(path: Path) -> int:
    return int(path.parent.name.removeprefix("seed_"))


def plans(params: Params, name: str, task: str) -> dict[str, TaskPlan]:
    """Each variant's resolved settings (what its arm is, whatever it is named)."""
    return {v: plan_task(params, task, (name, v)) for v in params.experiments[name].variants}


# verdicts --------------------------------------------------------------------------------
def compare(better: np.ndarray, worse: np.ndarray) -> tuple[str, str]:
    """`better` claimed above `worse`: the measured means +- std over seeds, and the verdict."""
    diff, spread = better.mean() - worse.mean(), max(better.std(), worse.std())
    verdict = "holds" if diff > spread else ("does not hold" if diff < -spread else "inside the spread")
    return f"{better.mean():.1f} ± {better.std():.1f} vs {worse.mean():.1f} ± {worse.std():.1f}", verdict


def alike(a: np.ndarray, b: np.ndarray) -> tuple[str, str]:
    """`a` and `b` claimed comparable: holds when their difference is inside the spread."""
    text, verdict = compare(a, b)
    return text, {"inside the spread": "holds"}.get(verdict, "does not hold")


def scores(root: Path, name: str, task: str, variant: str, which: str) -> np.ndarray:
    return np.array([r[SCORES[which]] for r in seed_results(root, name, task, variant)])


def arm(arms: dict[str, TaskPlan], test: Callable[[TaskPlan], bool]) -> str | None:
    return next((v for v, plan in arms.items() if test(plan)), None)


def two_arms(root, name, task, arms, better, worse, sentence, group=lambda plan: None) -> list[dict[str, Any]]:
    """A claim that an arm passing `better` (a test on its settings) scores above one passing `worse`, on final and
    best scores; with `group`, within each group of arms alike in it (Fig. 5.1's two model sizes)."""
    rows = []
    for g in dict.fromkeys(group(plan) for plan in arms.values()):
        mine = {v: plan for v, plan in arms.items() if group(plan) == g}
        a, b = arm(mine, better), arm(mine, worse)
        if a is None or b is None:
            rows.append({"claim": sentence, "measured (final)": "not run: the experiment lacks one of the two arms"})
            continue
        row = {"claim": sentence, "arms": f"{a} vs {b}"}
        for which in SCORES:
            row[f"measured ({which})"], row[f"verdict ({which})"] = compare(*(scores(root, name, task, v, which)
                                                                              for v in (a, b)))
        rows.append(row)
    return rows


def late(rows: list[dict[str, float]], key: str) -> float:
    """The mean of `key` over the last tenth of a run's dynamics rows (at least one): where it converged to."""
    values = [r[key] for r in rows if key in r]
    return float(np.mean(values[-max(1, len(values) // 10):]))


def converged(root, name, task, variant) -> dict[str, np.ndarray]:
    """Per seed: the late entropy, NLL and lambda of finetuning (`late`)."""
    rows = seed_csvs(root, name, task, variant, "finetune", "dynamics.csv")
    return {k: np.array([late(r, k) for r in rows]) for k in ("entropy", "nll", "temperature")}


# the claims, by experiment ---------------------------------------------------------------
def claim_4_1(root, params, name, task) -> list[dict[str, Any]]:
    beta = -get_task(task).act_dim
    out = []
    for v in params.experiments[name].variants:
        c = converged(root, name, task, v)
        ent, nll, lam = c["entropy"], c["nll"], c["temperature"]
        out.append({"claim": f"NLL and entropy converge to beta = {beta}", "arms": v,
                    "measured (final)": f"late entropy {ent.mean():.2f} ± {ent.std():.2f}, NLL {nll.mean():.2f} ± "
                                        f"{nll.std():.2f}",
                    "verdict (final)": "holds" if max(abs(ent.mean() - beta), abs(nll.mean() - beta)) <= 0.1 * abs(beta)
                    else "does not hold", "test": "both within 10% of |beta|"})
        out.append({"claim": "lambda goes to 0", "arms": v, "measured (final)": f"late lambda {lam.mean():.4f} ± "
                    f"{lam.std():.4f}", "verdict (final)": "holds" if lam.mean() <= 0.01 else "does not hold",
                    "test": "late lambda <= 0.01"})
    return out


def claim_4_2(root, params, name, task) -> list[dict[str, Any]]:
    table = sweep_table(root, name, task)
    by = table.groupby(["phase", "g_eval"])["eval_normalized"]
    mean, std = by.mean(), by.std(ddof=0)
    pre, fin = mean["pretrained"], mean["finetuned"]
    lo, hi = pre.index.min(), pre.index.max()
    text, verdict = compare(table.query("phase == 'pretrained' and g_eval == @hi")["eval_normalized"].to_numpy(),
                            table.query("phase == 'pretrained' and g_eval == @lo")["eval_normalized"].to_numpy())
    return [{"claim": "after pretraining the return follows g_eval (higher g_eval, higher return)",
             "arms": f"g_eval {hi:g} vs {lo:g}", "measured (final)": text, "verdict (final)": verdict},
            {"claim": "after finetuning the return is less sensitive to g_eval than after pretraining",
             "arms": "range of the means over g_eval",
             "measured (final)": f"finetuned {fin.max() - fin.min():.1f} vs pretrained {pre.max() - pre.min():.1f} "
                                 f"(largest seed std {std.max():.1f})",
             "verdict (final)": "holds" if (pre.max() - pre.min()) - (fin.max() - fin.min()) > std.max()
             else "inside the spread"}]


def claim_5_1(root, params, name, task):
    return two_arms(root, name, task, plans(params, name, task), lambda p: p.model.stochastic,
                    lambda p: not p.model.stochastic, "the stochastic policy finetunes above the deterministic variant",
                    group=lambda p: (p.model.embed_dim, p.model.n_layer, p.model.n_head))


def claim_5_2(root, params, name, task):
    arms = plans(params, name, task)
    by_g = sorted(arms, key=lambda v: arms[v].finetune.g_online)
    if len(by_g) < 3:
        return [{"claim": "g_online sweep", "measured (final)": "not run: needs three g_online values"}]
    out = []
    low, mid, top = by_g[0], by_g[1], by_g[-1]
    for which in SCORES:
        a, b, c = (scores(root, name, task, v, which) for v in (low, mid, top))
        out.append({"claim": "g_online at 1x and 2x the expert return score alike", "arms": f"{low} vs {mid}",
                    f"measured ({which})": alike(a, b)[0], f"verdict ({which})": alike(a, b)[1]})
        out.append({"claim": "a much larger g_online scores lower", "arms": f"{mid} vs {top}",
                    f"measured ({which})": compare(b, c)[0], f"verdict ({which})": compare(b, c)[1]})
    return _merge_rows(out)


def claim_5_3(root, params, name, task):
    arms = plans(params, name, task)
    fixed = arm(arms, lambda p: p.finetune.curriculum_percentile is None)
    curricula = sorted((v for v in arms if v != fixed), key=lambda v: arms[v].finetune.curriculum_percentile)
    if fixed is None or not curricula:
        return [{"claim": "curriculum RTG",
                 "measured (final)": "not run: needs a fixed g_online arm and a curriculum arm"}]
    out = []
    best = max(curricula, key=lambda v: scores(root, name, task, v, "final").mean())  # one arm for both verdicts
    for which in SCORES:
        text, verdict = compare(scores(root, name, task, fixed, which), scores(root, name, task, best, which))
        out.append({"claim": "a fixed g_online beats the best curriculum", "arms": f"{fixed} vs {best}",
                    f"measured ({which})": text, f"verdict ({which})": verdict})
        if len(curricula) > 1:
            text, verdict = compare(*(scores(root, name, task, v, which) for v in (curricula[-1], curricula[0])))
            out.append({"claim": "a larger percentile q scores higher", "arms": f"{curricula[-1]} vs {curricula[0]}",
                        f"measured ({which})": text, f"verdict ({which})": verdict})
    return _merge_rows(out)


def claim_5_4(root, params, name, task):
    return two_arms(root, name, task, plans(params, name, task), lambda p: p.finetune.hindsight_relabel,
                    lambda p: not p.finetune.hindsight_relabel, "with hindsight relabelling the return ends higher")


def claim_a_1(root, params, name, task):
    return two_arms(root, name, task, plans(params, name, task), lambda p: p.finetune.buffer_init == "top",
                    lambda p: p.finetune.buffer_init == "random", "a top-N buffer slightly beats a random one")


def claim_b_1(root, params, name, task):
    return two_arms(root, name, task, plans(params, name, task), lambda p: p.finetune.eval_context_len == 1,
                    lambda p: p.finetune.eval_context_len == 5, "evaluation context 1 beats 5 (the paper: on Ant)")


def claim_b_2(root, params, name, task):
    return two_arms(root, name, task, plans(params, name, task), lambda p: not p.model.use_positional_embedding,
                    lambda p: p.model.use_positional_embedding, "without positional embedding finetuning scores higher")


def claim_d_1(root, params, name, task):
    arms = plans(params, name, task)
    by_g = sorted(arms, key=lambda v: arms[v].finetune.g_online)
    out = []
    for which in SCORES:
        text, verdict = alike(*(scores(root, name, task, v, which) for v in (by_g[0], by_g[-1])))
        out.append({"claim": "g_online = the expert return scores like 2x the expert return",
                    "arms": f"{by_g[0]} vs {by_g[-1]}", f"measured ({which})": text, f"verdict ({which})": verdict})
    return _merge_rows(out)


def claim_f_1(root, params, name, task):
    table = pd.read_csv(paths.experiment_dir(root, name) / task / "sampling.csv")
    r = float(np.corrcoef(table["p_length"], table["p_return"])[0, 1])
    return [{"claim": "sampling by length and by return are strongly correlated on dense-reward data",
             "measured (final)": f"Pearson r = {r:.3f} over {len(table)} trajectories",
             "verdict (final)": "holds" if r >= 0.8 else "does not hold", "test": "r >= 0.8"}]


def claim_g_1(root, params, name, task):
    beta = -get_task(task).act_dim
    lams, ents = {}, {}
    for v in params.experiments[name].variants:
        c = converged(root, name, task, v)
        lams[v], ents[v] = c["temperature"].mean(), c["entropy"].mean()
    spread = max(lams.values()) - min(lams.values())
    return [{"claim": f"from every initial lambda the entropy converges to beta = {beta}",
             "measured (final)": ", ".join(f"{v}: {e:.2f}" for v, e in ents.items()),
             "verdict (final)": "holds" if all(abs(e - beta) <= 0.1 * abs(beta) for e in ents.values())
             else "does not hold", "test": "each within 10% of |beta|"},
            {"claim": "lambda settles at one value in (0, 1) whatever its start",
             "measured (final)": ", ".join(f"{v}: {x:.3f}" for v, x in lams.items()),
             "verdict (final)": "holds" if spread <= 0.05 and all(0 < x < 1 for x in lams.values())
             else "does not hold", "test": "all in (0, 1), within 0.05 of each other"}]


def _merge_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of one claim and arms measured on final and on best scores, as one row."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        merged.setdefault((r["claim"], r.get("arms", "")), {}).update(r)
    return list(merged.values())


CLAIMS: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "fig4-1": claim_4_1, "fig4-2": claim_4_2, "fig5-1": claim_5_1, "fig5-2": claim_5_2, "fig5-3": claim_5_3,
    "fig5-4": claim_5_4, "figA-1": claim_a_1, "figB-1": claim_b_1, "figB-2": claim_b_2, "figD-1": claim_d_1,
    "figF-1": claim_f_1, "figG-1": claim_g_1,
}


# plots -----------------------------------------------------------------------------------
def sweep_table(root: Path, name: str, task: str) -> pd.DataFrame:
    files = sorted((paths.experiment_dir(root, name) / task / "g_eval").glob("seed_*/sweep.csv"), key=_seed_number)
    return pd.concat([pd.read_csv(f).assign(seed=_seed_number(f)) for f in files], ignore_index=True)


def mean_by(rows_per_seed: list[list[dict[str, float]]], x: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """`key` averaged over the seeds that have a row at each value of `x` (rounds end at different samples)."""
    table = pd.DataFrame([r for rows in rows_per_seed for r in rows if key in r])
    if table.empty:
        return np.array([]), np.array([])
    means = table.groupby(x)[key].mean()
    return means.index.to_numpy(), means.to_numpy()


def plot_variants(root: Path, params: Params, name: str, task: str, path: Path) -> Path:
    """Return vs online samples (mean +- std over seeds), NLL and entropy, lambda, and the exploration RTG vs
    updates (pretraining and finetuning), one colour per variant."""
    plt = curves.pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), dpi=100)
    (ret, ent), (lam, rtg) = axes
    beta = -get_task(task).act_dim
    for i, v in enumerate(params.experiments[name].variants):
        color = f"C{i % 10}"
        seed_curves = seed_csvs(root, name, task, v, "finetune", "curve.csv")
        budget = plan_task(params, task, (name, v)).finetune.online_samples
        agg = curves.aggregate(seed_curves, budget) if seed_curves else []
        if agg:
            xs, mean, std = (np.array([r[k] for r in agg]) for k in ("online_samples", "mean", "std"))
            ret.plot(xs, mean, color=color, label=f"{v} ({len(seed_curves)} seeds)")
            ret.fill_between(xs, mean - std, mean + std, color=color, alpha=0.15)
        dyn = [a + b for a, b in zip(seed_csvs(root, name, task, v, "pretrain", "dynamics.csv"),
                                     seed_csvs(root, name, task, v, "finetune", "dynamics.csv"))]
        for key, ax, style in (("entropy", ent, "-"), ("nll", ent, ":"), ("temperature", lam, "-"),
                               ("g_online", rtg, "-")):
            xs, ys = mean_by(dyn, "updates", key)
            if len(xs):
                ax.plot(xs, ys, color=color, linestyle=style, label=f"{v} {key}" if ax is ent else v)
    ent.axhline(beta, color="k", linestyle="--", label=f"beta = {beta}")
    titles = [(ret, "normalized return (final policy at each evaluation)", "online samples"),
              (ent, "entropy (solid) and NLL (dotted)", "updates (pretraining, then finetuning)"),
              (lam, "lambda", "updates"), (rtg, "exploration RTG g_online", "updates")]
    for ax, title, xlabel in titles:
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    lam.set_yscale("log")
    fig.suptitle(f"{name} on {task}: mean over seeds (return: band +- std)")
    fig.tight_layout()
    return curves.save_figure(fig, path)


def plot_g_eval(root: Path, params: Params, name: str, task: str, path: Path) -> Path:
    """Figure 4.2: return vs g_eval after pretraining and after finetuning, mean +- std over seeds."""
    plt = curves.pyplot()
    table = sweep_table(root, name, task)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    for i, phase in enumerate(("pretrained", "finetuned")):
        by = table[table.phase == phase].groupby("g_eval")["eval_normalized"]
        mean, std = by.mean(), by.std(ddof=0)
        ax.errorbar(mean.index, mean.to_numpy(), yerr=std.to_numpy(), color=f"C{i}", marker="o", capsize=3,
                    label=f"{phase} ({table.seed.nunique()} seeds)")
    ax.set_xlabel("g_eval (raw return asked for)")
    ax.set_ylabel("normalized return")
    ax.set_title(f"{name} on {task}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return curves.save_figure(fig, path)


def plot_sampling(root: Path, params: Params, name: str, task: str, path: Path) -> Path:
    """Figure F.1: each trajectory's probability of being sampled by return against by length."""
    plt = curves.pyplot()
    table = pd.read_csv(paths.experiment_dir(root, name) / task / "sampling.csv")
    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=100)
    ax.scatter(table.p_length, table.p_return, s=6, alpha=0.6)
    top = max(table.p_length.max(), table.p_return.max())
    ax.plot([0, top], [0, top], color="k", linestyle="--", linewidth=0.8, label="equal")
    r = float(np.corrcoef(table.p_length, table.p_return)[0, 1])
    ax.set_xlabel("P(trajectory), by length (ODT)")
    ax.set_ylabel("P(trajectory), by return")
    ax.set_title(f"{name} on {task}: r = {r:.3f}, {len(table)} trajectories", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return curves.save_figure(fig, path)


PLOTS = {"variants": plot_variants, "g_eval": plot_g_eval, "sampling": plot_sampling}


# the report ------------------------------------------------------------------------------
def variant_rows(root: Path, params: Params, name: str, task: str) -> list[dict[str, Any]]:
    spec = params.experiments[name]
    labels = list(spec.variants) if spec.kind == "variants" else [BASE] if spec.kind == "g_eval" else []
    rows = []
    for v in labels:
        results = seed_results(root, name, task, v)
        overrides = spec.variants[v].blocks(task) if v in spec.variants else {}
        row = {"experiment": name, "task": task, "variant": v,
               "overrides": str({k: o for k, o in overrides.items() if o}),
               "seeds": len(results)}
        for col, key in (("offline", "offline_normalized"), *SCORES.items()):
            values = np.array([r[key] for r in results])
            row |= {f"{col}_mean": values.mean(), f"{col}_std": values.std()} if len(values) else {}
        rows.append(row)
    return rows


def report(params: Params, root: Path, out: Path) -> dict[str, Any]:
    """Every experiment's plot, claims and variants, written to `out`."""
    claims, variants = [], []
    for name, spec in params.experiments.items():
        if not paths.experiment_dir(root, name).with_suffix(".json").is_file():  # not run (yet): said, not skipped
            claims.append({"experiment": name, "claim": f"not run: `dvc repro experiment@{name}`"})
            continue
        for task in spec.tasks:
            PLOTS[spec.kind](root, params, name, task, out / f"{name}-{task}.png")
            variants += variant_rows(root, params, name, task)
            for row in CLAIMS.get(name, lambda *a: [])(root, params, name, task):
                claims.append({"experiment": name, "task": task, "seeds": spec.seeds, **row})
    columns = ["experiment", "task", "claim", "arms", "measured (final)", "verdict (final)", "measured (best)",
               "verdict (best)", "test", "seeds"]
    table = pd.DataFrame(claims, columns=columns)
    write_text(out / "claims.csv", table.to_csv(index=False))
    write_text(out / "variants.csv", pd.DataFrame(variants).to_csv(index=False, float_format="%.2f"))
    lines = ["# The paper's claims, checked", "",
             f"Profile `{params.profile}`. A claim holds only outside the seeds' spread (difference of the means above "
             "the larger std over seeds); *final* is the evaluation after the whole online budget, *best* the best "
             "evaluation during finetuning. Plots: `<experiment>-<task>.png` beside this file.", ""]
    lines.append(table.fillna("").to_markdown(index=False) if len(table) else "No experiments in params.yaml.")
    write_text(out / "claims.md", "\n".join(lines) + "\n")
    return {"claims": len(table), "holds": int((table["verdict (final)"] == "holds").sum()) if len(table) else 0}


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

"""The paper's claims beyond Table 5.1, checked against what runs measured; each experiment's figure.

Knows no directory or profile (pipeline/claims.py reads the runs and passes them in). An
experiment's data is one of: its arms (`Arm`: a variant's settings and its seeds' results,
curves and training dynamics), the rows of a g_eval sweep (Fig. 4.2), or the rows of Fig.
F.1's sampling probabilities. A claim function returns table rows: the claim in one sentence,
the arms compared, the measured numbers and a verdict. "holds" only outside the seeds' spread
(the difference of two means larger than the larger of their standard deviations over seeds),
"inside the spread" when smaller, "does not hold" when outside it the other way. A claim that two
arms score alike is "consistent: inside the spread" or "does not hold", never "holds". Finetuning
claims are judged twice, labelled: on the final evaluation and on the best one during
finetuning (the paper does not say which its curves show).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from odt import curves
from odt.config import FinetuneConfig, ModelConfig, PretrainConfig

SCORES = {"final": "online_normalized", "best": "best_normalized"}  # label -> a finetuning result's key
Row = dict[str, Any]


@dataclass
class Arm:
    """One variant: its settings and what its seeds left (in seed order)."""

    model: ModelConfig
    pretrain: PretrainConfig
    finetune: FinetuneConfig
    results: list[dict[str, Any]]  # finetuning's result per seed (offline_/online_/best_normalized)
    curves: list[list[dict[str, float]]]  # finetuning's evaluations per seed (curve.csv)
    dynamics: list[list[dict[str, float]]]  # pretraining's, then finetuning's dynamics rows per seed

    def summary(self) -> dict[str, float]:
        """Seeds, then offline, final and best normalized return: mean and std over seeds."""
        return curves.summarize(self.results, {"offline": "offline_normalized", **SCORES})

    def scores(self, which: str) -> np.ndarray:
        return np.array([r[SCORES[which]] for r in self.results])

    def late(self, key: str) -> np.ndarray:
        """Per seed, the mean of `key` over the last tenth of its finetuning rows: where it converged to."""
        out = []
        for rows in self.dynamics:
            values = [r[key] for r in rows if key in r and "round" in r]
            out.append(np.mean(values[-max(1, len(values) // 10):]))
        return np.array(out)


# verdicts ----------------------------------------------------------------------------------
def compare(better: np.ndarray, worse: np.ndarray) -> tuple[str, str]:
    """`better` claimed above `worse`: the measured means ± std over seeds, and the verdict."""
    diff, spread = better.mean() - worse.mean(), max(better.std(), worse.std())
    verdict = "holds" if diff > spread else ("does not hold" if diff < -spread else "inside the spread")
    return f"{better.mean():.1f} ± {better.std():.1f} vs {worse.mean():.1f} ± {worse.std():.1f}", verdict


def alike(a: np.ndarray, b: np.ndarray) -> tuple[str, str]:
    """`a` and `b` claimed comparable: a difference inside the spread is consistent with the claim but does not show
    it (wide spreads would make anything alike), so this claim never "holds"; outside the spread it does not."""
    text, verdict = compare(a, b)
    return text, "consistent: inside the spread" if verdict == "inside the spread" else "does not hold"


def judged(claim: str, arms: str, measure: Callable[[str], tuple[str, str]]) -> Row:
    """One row: `measure(which)` on final and on best scores."""
    row = {"claim": claim, "arms": arms}
    for which in SCORES:
        row[f"measured ({which})"], row[f"verdict ({which})"] = measure(which)
    return row


def first(arms: dict[str, Arm], test: Callable[[Arm], bool]) -> str | None:
    return next((name for name, arm in arms.items() if test(arm)), None)


def two_arms(arms: dict[str, Arm], better, worse, claim: str, group=lambda arm: None) -> list[Row]:
    """An arm passing `better` (a test on its settings) claimed above one passing `worse`; with `group`, within each
    group of arms alike in it (Fig. 5.1's two model sizes)."""
    rows = []
    for g in dict.fromkeys(group(arm) for arm in arms.values()):
        mine = {n: arm for n, arm in arms.items() if group(arm) == g}
        a, b = first(mine, better), first(mine, worse)
        if a is None or b is None:
            rows.append({"claim": claim, "measured (final)": "not run: the experiment lacks one of the two arms"})
        else:
            rows.append(judged(claim, f"{a} vs {b}", lambda w, a=a, b=b: compare(arms[a].scores(w), arms[b].scores(w))))
    return rows


def _converge_to(values: np.ndarray, beta: float) -> bool:
    return abs(values.mean() - beta) <= 0.1 * abs(beta)


# the claims, by experiment -------------------------------------------------------------------
def fig_4_1(arms: dict[str, Arm], beta: float) -> list[Row]:
    out = []
    for name, arm in arms.items():
        ent, nll, lam = arm.late("entropy"), arm.late("nll"), arm.late("temperature")
        out.append({"claim": f"NLL and entropy converge to beta = {beta:g}", "arms": name,
                    "measured (final)": f"late entropy {ent.mean():.2f} ± {ent.std():.2f}, NLL {nll.mean():.2f} ± "
                                        f"{nll.std():.2f}", "test": "both within 10% of |beta|",
                    "verdict (final)": "holds" if _converge_to(ent, beta) and _converge_to(nll, beta) else
                    "does not hold"})
        out.append({"claim": "lambda goes to 0", "arms": name, "test": "late lambda <= 0.01",
                    "measured (final)": f"late lambda {lam.mean():.4f} ± {lam.std():.4f}",
                    "verdict (final)": "holds" if lam.mean() <= 0.01 else "does not hold"})
    return out


def sweep_means(rows: list[Row], phase: str) -> dict[float, np.ndarray]:
    """A g_eval sweep's normalized returns of `phase` (pretrained, finetuned), per g_eval, one value per seed."""
    out: dict[float, list[float]] = {}
    for r in rows:
        if r["phase"] == phase:
            out.setdefault(float(r["g_eval"]), []).append(r["eval_normalized"])
    return {g: np.array(v) for g, v in sorted(out.items())}


def fig_4_2(rows: list[Row], beta: float) -> list[Row]:
    pre, fin = sweep_means(rows, "pretrained"), sweep_means(rows, "finetuned")
    lo, hi = min(pre), max(pre)
    text, verdict = compare(pre[hi], pre[lo])
    span = {p: max(v.mean() for v in m.values()) - min(v.mean() for v in m.values()) for p, m in
            (("pretrained", pre), ("finetuned", fin))}
    spread = max(v.std() for m in (pre, fin) for v in m.values())
    return [{"claim": "after pretraining the return follows g_eval (higher g_eval, higher return)",
             "arms": f"g_eval {hi:g} vs {lo:g}", "measured (final)": text, "verdict (final)": verdict},
            {"claim": "after finetuning the return is less sensitive to g_eval than after pretraining",
             "arms": "range of the means over g_eval",
             "measured (final)": f"finetuned {span['finetuned']:.1f} vs pretrained {span['pretrained']:.1f} "
                                 f"(largest seed std {spread:.1f})",
             "verdict (final)": "holds" if span["pretrained"] - span["finetuned"] > spread else "inside the spread"}]


def fig_5_1(arms: dict[str, Arm], beta: float) -> list[Row]:
    return two_arms(arms, lambda a: a.model.stochastic, lambda a: not a.model.stochastic,
                    "the stochastic policy finetunes above the deterministic variant",
                    group=lambda a: (a.model.embed_dim, a.model.n_layer, a.model.n_head))


def fig_5_2(arms: dict[str, Arm], beta: float) -> list[Row]:
    by_g = sorted(arms, key=lambda n: arms[n].finetune.g_online)
    if len(by_g) < 3:
        return [{"claim": "g_online sweep", "measured (final)": "not run: needs three g_online values"}]
    low, mid, top = by_g[0], by_g[1], by_g[-1]
    return [judged("g_online at 1x and 2x the expert return score alike", f"{low} vs {mid}",
                   lambda w: alike(arms[low].scores(w), arms[mid].scores(w))),
            judged("a much larger g_online scores lower", f"{mid} vs {top}",
                   lambda w: compare(arms[mid].scores(w), arms[top].scores(w)))]


def fig_5_3(arms: dict[str, Arm], beta: float) -> list[Row]:
    fixed = first(arms, lambda a: a.finetune.curriculum_percentile is None)
    curricula = sorted((n for n in arms if n != fixed), key=lambda n: arms[n].finetune.curriculum_percentile)
    if fixed is None or not curricula:
        return [{"claim": "curriculum RTG",
                 "measured (final)": "not run: needs a fixed g_online arm and a curriculum arm"}]
    best = max(curricula, key=lambda n: arms[n].scores("final").mean())  # one arm for both verdicts
    out = [judged("a fixed g_online beats the best curriculum", f"{fixed} vs {best}",
                  lambda w: compare(arms[fixed].scores(w), arms[best].scores(w)))]
    if len(curricula) > 1:
        hi, lo = curricula[-1], curricula[0]
        out.append(judged("a larger percentile q scores higher", f"{hi} vs {lo}",
                          lambda w: compare(arms[hi].scores(w), arms[lo].scores(w))))
    return out


def fig_5_4(arms: dict[str, Arm], beta: float) -> list[Row]:
    return two_arms(arms, lambda a: a.finetune.hindsight_relabel, lambda a: not a.finetune.hindsight_relabel,
                    "with hindsight relabelling the return ends higher")


def fig_a_1(arms: dict[str, Arm], beta: float) -> list[Row]:
    return two_arms(arms, lambda a: a.finetune.buffer_init == "top", lambda a: a.finetune.buffer_init == "random",
                    "a top-N buffer slightly beats a random one")


def fig_b_1(arms: dict[str, Arm], beta: float) -> list[Row]:
    return two_arms(arms, lambda a: a.finetune.eval_context_len == 1, lambda a: a.finetune.eval_context_len == 5,
                    "evaluation context 1 beats 5 (the paper: on Ant)")


def fig_b_2(arms: dict[str, Arm], beta: float) -> list[Row]:
    return two_arms(arms, lambda a: not a.model.use_positional_embedding, lambda a: a.model.use_positional_embedding,
                    "without positional embedding finetuning scores higher")


def fig_d_1(arms: dict[str, Arm], beta: float) -> list[Row]:
    by_g = sorted(arms, key=lambda n: arms[n].finetune.g_online)
    return [judged("g_online = the expert return scores like 2x the expert return", f"{by_g[0]} vs {by_g[-1]}",
                   lambda w: alike(arms[by_g[0]].scores(w), arms[by_g[-1]].scores(w)))]


def fig_f_1(rows: list[Row], beta: float) -> list[Row]:
    r = float(np.corrcoef([x["p_length"] for x in rows], [x["p_return"] for x in rows])[0, 1])
    return [{"claim": "sampling by length and by return are strongly correlated on dense-reward data",
             "measured (final)": f"Pearson r = {r:.3f} over {len(rows)} trajectories", "test": "r >= 0.8",
             "verdict (final)": "holds" if r >= 0.8 else "does not hold"}]


def fig_g_1(arms: dict[str, Arm], beta: float) -> list[Row]:
    ents = {n: arm.late("entropy") for n, arm in arms.items()}
    lams = {n: arm.late("temperature").mean() for n, arm in arms.items()}
    spread = max(lams.values()) - min(lams.values())
    return [{"claim": f"from every initial lambda the entropy converges to beta = {beta:g}",
             "measured (final)": ", ".join(f"{n}: {e.mean():.2f}" for n, e in ents.items()),
             "verdict (final)": "holds" if all(_converge_to(e, beta) for e in ents.values()) else "does not hold",
             "test": "each within 10% of |beta|"},
            {"claim": "lambda settles at one value in (0, 1) whatever its start",
             "measured (final)": ", ".join(f"{n}: {x:.3f}" for n, x in lams.items()),
             "verdict (final)": "holds" if spread <= 0.05 and all(0 < x < 1 for x in lams.values())
             else "does not hold", "test": "all in (0, 1), within 0.05 of each other"}]


# an experiment's id -> its claims, from its data (arms, sweep rows or sampling rows) and beta = -dim(A)
CLAIMS: dict[str, Callable[[Any, float], list[Row]]] = {
    "fig4-1": fig_4_1, "fig4-2": fig_4_2, "fig5-1": fig_5_1, "fig5-2": fig_5_2, "fig5-3": fig_5_3,
    "fig5-4": fig_5_4, "figA-1": fig_a_1, "figB-1": fig_b_1, "figB-2": fig_b_2, "figD-1": fig_d_1,
    "figF-1": fig_f_1, "figG-1": fig_g_1,
}


# figures ---------------------------------------------------------------------------------------
def mean_by(rows_per_seed: list[list[dict[str, float]]], key: str, x: str = "updates") -> tuple[list, list]:
    """`key` averaged at each value of `x` over the seeds that have it (rounds end at different samples)."""
    at: dict[float, list[float]] = {}
    for rows in rows_per_seed:
        for r in rows:
            if key in r:
                at.setdefault(r[x], []).append(r[key])
    xs = sorted(at)
    return xs, [float(np.mean(at[v])) for v in xs]


def plot_arms(path: Path, arms: dict[str, Arm], *, title: str, beta: float) -> Path:
    """Return vs online samples (mean ± std over seeds), entropy and NLL with beta, lambda, and the exploration RTG
    vs updates (pretraining, then finetuning), one colour per arm."""
    fig, axes = curves.pyplot().subplots(2, 2, figsize=(11, 7.5), dpi=100)
    (ret, ent), (lam, rtg) = axes
    for i, (name, arm) in enumerate(arms.items()):
        color = f"C{i % 10}"
        if arm.curves:
            agg = curves.aggregate(arm.curves, arm.finetune.online_samples)
            xs, mean, std = (np.array([r[k] for r in agg]) for k in ("online_samples", "mean", "std"))
            ret.plot(xs, mean, color=color, label=f"{name} ({len(arm.curves)} seeds)")
            ret.fill_between(xs, mean - std, mean + std, color=color, alpha=0.15)
        for key, ax, style in (("entropy", ent, "-"), ("nll", ent, ":"), ("temperature", lam, "-"),
                               ("g_online", rtg, "-")):
            xs, ys = mean_by(arm.dynamics, key)
            if xs:
                ax.plot(xs, ys, color=color, linestyle=style, label=f"{name} {key}" if ax is ent else name)
    ent.axhline(beta, color="k", linestyle="--", label=f"beta = {beta:g}")
    for ax, what, xlabel in [(ret, "normalized return at each evaluation", "online samples"),
                             (ent, f"entropy (solid) and NLL (dotted); log scale beyond ±{2 - beta:g}",
                              "updates (pretraining, then finetuning)"),
                             (lam, "lambda", "updates"), (rtg, "exploration RTG g_online", "updates")]:
        ax.set(title=what, xlabel=xlabel)
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    lam.set_yscale("log")
    top = ent.get_ylim()[1]  # linear from below beta to the late values, log above them for the first NLLs (~50)
    ent.set_yscale("symlog", linthresh=2 - beta)
    ent.set_yticks([*range(math.floor(beta), 3, 1 if beta >= -4 else 2), *(t for t in (5, 10, 20, 50) if t < top)])
    ent.yaxis.set_major_formatter("{x:g}")
    fig.suptitle(f"{title}: mean over seeds (return: band ± std)")
    fig.tight_layout()
    return curves.save_figure(fig, path)


def plot_g_eval(path: Path, rows: list[Row], *, title: str, beta: float) -> Path:
    """Figure 4.2: return vs g_eval after pretraining and after finetuning, mean ± std over seeds."""
    fig, ax = curves.pyplot().subplots(figsize=(6.4, 4.2), dpi=100)
    for i, phase in enumerate(("pretrained", "finetuned")):
        by = sweep_means(rows, phase)
        ax.errorbar(list(by), [v.mean() for v in by.values()], yerr=[v.std() for v in by.values()], color=f"C{i}",
                    marker="o", capsize=3, label=f"{phase} ({len(next(iter(by.values())))} seeds)")
    ax.set(xlabel="g_eval (the raw return asked for)", ylabel="normalized return", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return curves.save_figure(fig, path)


def plot_sampling(path: Path, rows: list[Row], *, title: str, beta: float) -> Path:
    """Figure F.1: each trajectory's probability of being sampled by return against by length."""
    p_len, p_ret = (np.array([r[k] for r in rows]) for k in ("p_length", "p_return"))
    fig, ax = curves.pyplot().subplots(figsize=(5.2, 4.6), dpi=100)
    ax.scatter(p_len, p_ret, s=6, alpha=0.6)
    top = max(p_len.max(), p_ret.max())
    ax.plot([0, top], [0, top], color="k", linestyle="--", linewidth=0.8, label="equal")
    r = float(np.corrcoef(p_len, p_ret)[0, 1])
    ax.set(xlabel="P(trajectory), by length (ODT)", ylabel="P(trajectory), by return",
           title=f"{title}: r = {r:.3f}, {len(rows)} trajectories")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return curves.save_figure(fig, path)


PLOTS = {"variants": plot_arms, "g_eval": plot_g_eval, "sampling": plot_sampling}  # by the experiment's kind

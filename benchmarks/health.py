"""Run health: pretraining curves of ODT variants, one change at a time from the cpu profile, over 3 seeds.

    python -m benchmarks.health --data data/hopper-medium-v2/hopper-medium-v2.hdf5 \
        --out reports/cpu-profile/sac-data-2026-12-02/health

Every variant pretrains with the `cpu` profile's settings but one (d64 L2 H2, K=10, batch 64,
LAMB lr 5e-4 wd 5e-4 decoupled, warmup 1000, dropout 0.1, log-std in [-5, 2], target entropy
-3), for `updates` updates, evaluated every `eval_every` on the same evaluation seeds (10
episodes, g_eval 3600, context 10). Writes `variants.csv` (per variant and seed: the
evaluation curve), `diagnostics.csv` (the baseline's training metrics every 100 updates),
`summary.md` (final and best score, mean over seeds, and the final/best fraction) and
`curves.png`. Seeds run in parallel through joblib, one torch thread each.
"""
from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from joblib import Parallel, delayed

from odt import MemoryLogger, ModelConfig, PretrainConfig, pretrain
from odt.datasets.hdf5 import load_d4rl_hdf5
from odt.envs import make_env

BASE_MODEL = dict(context_len=10, embed_dim=64, n_layer=2, n_head=2, dropout=0.1, max_ep_len=1000,
                  use_positional_embedding=False)
BASE_TRAIN = dict(
    pretrain_updates=5000,
    batch_size=64,
    learning_rate=5e-4,
    weight_decay=5e-4,
    warmup_steps=1000,
    g_eval=3600,
    eval_context_len=10,
    eval_episodes=10,
    log_every=100,
    checkpoint_every=1000,
    eval_every=500,
)
# name: (model changes, training changes); one lever at a time
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "baseline (cpu profile)": ({}, {}),
    "lr 2e-4": ({}, {"learning_rate": 2e-4}),
    "lr 1e-4 (the paper's hopper)": ({}, {"learning_rate": 1e-4}),
    "the paper's schedule: lr 1e-4 warmup 10k": ({}, {"learning_rate": 1e-4, "warmup_steps": 10000}),
    "weight decay 0": ({}, {"weight_decay": 0.0}),
    "weight decay 5e-3": ({}, {"weight_decay": 5e-3}),
    "LAMB decay before trust ratio": ({}, {"decoupled_weight_decay": False}),
    "dropout 0": ({"dropout": 0.0}, {}),
    "dropout 0.2": ({"dropout": 0.2}, {}),
    "log-std min -2": ({"log_std_min": -2.0}, {}),
    "target entropy -1.5": ({}, {"target_entropy": -1.5}),
    "width d128 (H4)": ({"embed_dim": 128, "n_head": 4}, {}),
    # not a training lever: the same training evaluated at the data's best return (2635) instead of 3600
    "g_eval 2600": ({}, {"g_eval": 2600}),
}


def one_run(name: str, seed: int, data_path: str, updates: int, eval_every: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    model_changes, train_changes = VARIANTS[name]
    data = load_d4rl_hdf5(data_path, task="hopper-medium-v2")
    model = ModelConfig(state_dim=11, act_dim=3, **{**BASE_MODEL, **model_changes})
    cfg = PretrainConfig(**{**BASE_TRAIN, "pretrain_updates": updates, "eval_every": eval_every,
                            "checkpoint_every": eval_every, **train_changes})
    logger = MemoryLogger()
    run = pretrain(
        data,
        model,
        cfg,
        functools.partial(make_env, "hopper-medium-v2"),
        task="hopper-medium-v2",
        seed=seed,
        device="cpu",
        logger=logger,
        progress=False,
    )
    return {"variant": name, "seed": seed, "evaluations": run.evaluations, "wall_time": run.wall_time,
            "rows": [{"updates": s, **r} for s, r in logger.rows]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--updates", type=int, default=5000)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--variants", default=None, help="comma-separated subset of the variant names")
    ap.add_argument("--n-jobs", type=int, default=2)
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [n.strip() for n in args.variants.split(",")] if args.variants else list(VARIANTS)
    done_path = out / "runs.jsonl"
    done = [json.loads(line) for line in done_path.read_text().splitlines()] if done_path.is_file() else []
    have = {(r["variant"], r["seed"]) for r in done}
    todo = [(n, s) for n in names for s in range(args.seeds) if (n, s) not in have]
    for result in Parallel(n_jobs=args.n_jobs, return_as="generator_unordered")(
            delayed(one_run)(n, s, args.data, args.updates, args.eval_every) for n, s in todo):
        with open(done_path, "a") as f:  # one line per finished run: a rerun continues where it stopped
            f.write(json.dumps(result) + "\n")
        done.append(result)
        print(
            f"{result['variant']} seed {result['seed']}: final {result['evaluations'][-1]['eval_normalized']:.1f} "
            f"best {max(e['eval_normalized'] for e in result['evaluations']):.1f} ({result['wall_time']:.0f} s)",
            flush=True,
        )
    write_summary(out, [r for r in done if r["variant"] in names], names)
    return 0


def write_summary(out: Path, runs: list[dict[str, Any]], names: list[str]) -> None:
    matplotlib.use("Agg")

    curves = pd.DataFrame([{"variant": r["variant"], "seed": r["seed"], **e} for r in runs for e in r["evaluations"]])
    curves.to_csv(out / "variants.csv", index=False, float_format="%.4f")
    base = [r for r in runs if r["variant"] == names[0]]
    pd.DataFrame([{"seed": r["seed"], **row} for r in base for row in r["rows"]]).to_csv(
        out / "diagnostics.csv", index=False, float_format="%.5g")
    lines = [
        "| variant | seeds | final (mean ± std) | best on the way | final / best | at 3000 | at 4000 "
        "| length std at the end |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    half = -(-len(names) // 2)  # the first half of the variants on the left, the rest on the right
    for i, name in enumerate(names):
        rs = [r for r in runs if r["variant"] == name]
        if not rs:
            continue
        final = np.array([r["evaluations"][-1]["eval_normalized"] for r in rs])
        best = np.array([max(e["eval_normalized"] for e in r["evaluations"]) for r in rs])
        at = {u: np.mean([e["eval_normalized"] for r in rs for e in r["evaluations"] if e["updates"] == u] or [np.nan])
              for u in (3000, 4000)}
        spread = np.mean([r["evaluations"][-1]["eval_length_std"] for r in rs])
        lines.append(f"| {name} | {len(rs)} | {final.mean():.1f} ± {final.std():.1f} | {best.mean():.1f} | "
                     f"{np.mean(final / best):.2f} | {at[3000]:.1f} | {at[4000]:.1f} | {spread:.0f} |")
        x = [e["updates"] for e in rs[0]["evaluations"]]
        y = np.mean([[e["eval_normalized"] for e in r["evaluations"]] for r in rs], axis=0)
        axes[i // half].plot(x, y, marker="o", ms=3, label=name, color=f"C{i % 10}")
    for ax in axes:
        ax.set_xlabel("pretraining updates")
        ax.set_ylabel("normalized return (mean over seeds)")
        ax.grid(alpha=0.3)
        if ax.lines:  # one variant leaves the right-hand axis empty
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())

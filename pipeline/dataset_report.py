"""`python -m pipeline.dataset_report`: what the generated datasets hold, beside D4RL's files of the same name.

    python -m pipeline.dataset_report                    # the eight locomotion tasks, as `fetch --source generate`
    python -m pipeline.dataset_report --replay-run .cache/behaviour/hopper    # and a run's real replay buffer

Each task is fetched as the fetch stage does with `--source generate` (the shipped behaviour policies, seed 0,
D4RL's sizes: 1M transitions for medium, the run's buffer for medium-replay; cached under .cache/generate),
and its returns are summarised beside D4RL's (D4RL below: published numbers, with their sources). Writes, each
file whole or not at all:
  reports/datasets.md                       the table, and where ours differ from D4RL's and why
  reports/datasets/summary.csv              the same numbers
  reports/datasets/returns.png              a histogram of normalized returns per task, D4RL's mean and range on it
  reports/datasets/replay-<env>.png, .csv   with --replay-run: the return of every episode of a behaviour run's
                                            buffer beside the medium-replay rebuilt from its snapshots
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from odt.atomic import atomic_dir, write_text
from odt.curves import save_figure
from odt.tasks import get_task, normalized_score
from pipeline.cli import Parser, run_guarded
from pipeline.paths import ROOT

TASKS = [
    f"{env}-{data}-v2" for env in ("hopper", "walker2d", "halfcheetah", "ant") for data in ("medium", "medium-replay")
]
# D4RL's v2 files: trajectories (terminal-or-timeout split), transitions, normalized per-trajectory returns
# (population std); the returns as printed by the Decision Transformer's download_d4rl_datasets.py, none published
# for ant (D4RL_SOURCE)
D4RL = {
    "hopper-medium-v2": dict(trajectories=2186, transitions=999_906, mean=44.3, std=11.6, min=10.3, max=99.6,
                             length_mean=457.4),
    "hopper-medium-replay-v2": dict(trajectories=2041, transitions=402_000, mean=15.0, std=15.7, min=0.6, max=98.7,
                                    length_mean=197.0),
    "walker2d-medium-v2": dict(trajectories=1190, transitions=999_995, mean=62.1, std=23.9, min=-0.2, max=92.0,
                               length_mean=840.3),
    "walker2d-medium-replay-v2": dict(trajectories=1093, transitions=302_000, mean=14.8, std=19.5, min=-1.1, max=90.0,
                                      length_mean=276.3),
    "halfcheetah-medium-v2": dict(trajectories=1000, transitions=1_000_000, mean=40.7, std=2.9, min=-0.2, max=45.0,
                                  length_mean=1000.0),
    "halfcheetah-medium-replay-v2": dict(trajectories=202, transitions=202_000, mean=27.2, std=13.5, min=-2.9,
                                         max=42.4, length_mean=1000.0),
    "ant-medium-v2": dict(trajectories=1203),
    "ant-medium-replay-v2": dict(trajectories=485),
}
D4RL_SOURCE = ("returns, lengths and transitions: the output of the Decision Transformer's "
               "`gym/data/download_d4rl_datasets.py` on the v2 files (kept in SiliHuang-ai/IDT, commit 96e81ac, and "
               "for the medium files YuweiYin/UBC_CPSC_533V), normalized here with D4RL's reference scores; "
               "trajectory counts: the TFDS catalog (d4rl_mujoco_*, v2), less the unmarked final stretch the script "
               "drops (hopper-medium, walker2d-medium). No published return statistics for the ant files were found.")


DIFFERENCES = """\
## Where ours differ from D4RL's, and why

- **The environments.** D4RL recorded its files in gym's mujoco-py `-v2` environments; ours come from
  gymnasium's `-v5` ones, where ODT finetunes, with other dynamics and contact models (Ant: `Ant-v4` with
  contact forces, D4RL's 111 observation dims). The same policy quality gives other returns there.
- **The medium level.** Our SAC runs stop when the stochastic policy scores a third of the way from D4RL's
  reference minimum to its maximum (10 episodes every 10k steps); D4RL's medium policies were trained by
  another SAC to "about a third of expert" in their own environments, and land elsewhere: walker2d's at 62
  normalized where ours is at 31, halfcheetah's at 41 where ours is at 33, hopper's at 44 where ours is at 48.
  Training stops at the first 10-episode evaluation over the target, a lucky one as often as not, so a
  million transitions of the same policy can come out below it (walker2d 31.0 and ant 32.7, target 33.3).
- **Medium-replay's size.** It holds the transitions our run collected until its medium snapshot, so it is as
  large as our run was long. Where stable-baselines3's SAC in v5 reached the medium level in fewer steps than
  D4RL's run did (hopper 90k against 402k, walker2d 220k against 302k, halfcheetah 160k against 202k), ours
  is smaller: fewer trajectories, and shorter on average where early policies fall at once.
- **Medium-replay is rebuilt**, not recorded: each 10k-step stretch of the run's buffer is rolled out again with
  the snapshot at its end (the README's "How medium-replay is rebuilt", and the hopper comparison below when
  the report was made with `--replay-run`).
- **The medium files' spread.** Ours come from one stochastic policy rolled out in 16 envs, trajectories
  cut only at termination or the 1000-step limit, as D4RL's; a policy that falls at various points (hopper)
  spreads more than one that never falls (halfcheetah: 1000-step episodes, std 2 normalized).
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = Parser(prog="python -m pipeline.dataset_report", description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS, metavar="TASK", help="default: all eight")
    ap.add_argument("--seed", type=int, default=0, help="seed of the rollouts (as fetch's --seed)")
    ap.add_argument("--replay-run", help="a behaviour run's directory (python -m odt.datasets.behaviour train --out)")
    ap.add_argument("--cache", default=str(ROOT / ".cache"), help="where the rolled-out datasets are cached")
    ap.add_argument("--out", default=str(ROOT / "reports"), help="reports directory")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def task_returns(task: str, *, seed: int, cache: Path, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Normalized return and length of every trajectory of `task`'s generated dataset (cached rollout)."""
    from odt.datasets.hdf5 import load_d4rl_hdf5
    from odt.datasets.rollout import policy_task, shipped

    spec = get_task(task)
    path, _ = policy_task(spec, shipped(spec.env), seed=seed, cache_dir=cache / "generate", progress=progress)
    trajectories = load_d4rl_hdf5(path, task)
    returns = np.asarray(normalized_score(task, np.array([t.episode_return for t in trajectories])), dtype=np.float64)
    return returns, np.array([len(t) for t in trajectories])


def summary(task: str, returns: np.ndarray, lengths: np.ndarray) -> dict:
    ref = D4RL.get(task, {})
    return {"task": task, "trajectories": len(returns), "transitions": int(lengths.sum()),
            "mean": returns.mean(), "std": returns.std(), "min": returns.min(), "max": returns.max(),
            "length_mean": lengths.mean(), **{f"d4rl_{k}": v for k, v in ref.items() if k != "source"}}


def histogram_figure(data: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    envs = sorted({t.split("-")[0] for t in data}, key=lambda e: [t.split("-")[0] for t in TASKS].index(e))
    fig, axes = plt.subplots(2, len(envs), figsize=(3.6 * len(envs), 5.6), squeeze=False)
    for col, env in enumerate(envs):
        for row, kind in enumerate(("medium", "medium-replay")):
            ax, task = axes[row][col], f"{env}-{kind}-v2"
            if task not in data:
                ax.set_axis_off()
                continue
            ax.hist(data[task], bins=40, color="tab:blue", alpha=0.75, label=f"ours ({len(data[task])} traj.)")
            ax.axvline(data[task].mean(), color="tab:blue", lw=1.5)
            ref = D4RL.get(task, {})
            if "min" in ref:
                ax.axvspan(ref["min"], ref["max"], color="tab:orange", alpha=0.12, label="D4RL's range")
            if "mean" in ref:
                ax.axvline(ref["mean"], color="tab:orange", ls="--", lw=1.5, label="D4RL's mean")
            ax.set_title(task, fontsize=9)
            ax.set_xlabel("normalized return", fontsize=8)
            ax.legend(fontsize=7)
    fig.suptitle("Generated datasets: trajectory returns (solid: our mean)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def replay_comparison(run_dir: Path, *, seed: int, cache: Path, progress: bool) -> tuple[pd.DataFrame, str]:
    """Every episode of the run's buffer up to its medium snapshot and of the medium-replay rebuilt from its
    snapshots: source, collection step (rebuilt: spread over its snapshot's stretch), length, normalized return."""
    from odt.datasets.behaviour import read_manifest, read_progress, replay_episodes
    from odt.datasets.generate import GenerateError
    from odt.datasets.hdf5 import load_d4rl_hdf5
    from odt.datasets.rollout import policy_task, shipped

    prog = read_progress(run_dir)
    if prog is None:
        raise GenerateError(f"{run_dir} holds no behaviour run (no checkpoint.pt); give the --out of a "
                            f"`python -m odt.datasets.behaviour train` run")
    env, task = prog["run"]["env"], f"{prog['run']['env']}-medium-replay-v2"
    spec, package = get_task(task), shipped(prog["run"]["env"])
    manifest = read_manifest(package)
    if (manifest["seed"], manifest["env_version"]) != (prog["run"]["seed"], prog["run"]["env_version"]):
        raise GenerateError(f"{run_dir} is not the run the shipped {env} policies came from (seed, env version "
                            f"{prog['run']['seed']}, {prog['run']['env_version']} vs {manifest['seed']}, "
                            f"{manifest['env_version']})")
    until = next(e["step"] for e in manifest["snapshots"] if e["file"] == manifest["medium"])
    real = replay_episodes(run_dir, until=until)
    path, info = policy_task(spec, package, seed=seed, cache_dir=cache / "generate", progress=progress)
    rebuilt = load_d4rl_hdf5(path, task)
    steps, prev = np.zeros(len(rebuilt)), 0
    for part in info["snapshots"]:
        a, n = part["first_trajectory"], part["n_trajectories"]
        steps[a:a + n] = prev + (np.arange(n) + 0.5) / max(n, 1) * (part["step"] - prev)
        prev = part["step"]
    frames = [
        pd.DataFrame(
            {
                "source": "real buffer",
                "step": real["start"],
                "length": real["lengths"],
                "normalized_return": normalized_score(task, real["returns"]),
            }
        ),
        pd.DataFrame(
            {
                "source": "rebuilt",
                "step": steps.round().astype(np.int64),
                "length": [len(t) for t in rebuilt],
                "normalized_return": normalized_score(task, np.array([t.episode_return for t in rebuilt])),
            }
        ),
    ]
    return pd.concat(frames, ignore_index=True), env


def replay_figure(df: pd.DataFrame, env: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    bins = np.linspace(df["normalized_return"].min(), df["normalized_return"].max(), 40)
    for (source, part), color in zip(df.groupby("source", sort=False), ("tab:gray", "tab:blue")):
        label = f"{source}: {len(part)} episodes, mean {part['normalized_return'].mean():.1f}"
        left.hist(part["normalized_return"], bins=bins, alpha=0.55, color=color, label=label)
        right.scatter(part["step"], part["normalized_return"], s=4, alpha=0.5, color=color, label=source)
    left.set_xlabel("normalized return")
    left.set_ylabel("episodes")
    left.legend(fontsize=8)
    right.set_xlabel("SAC environment step the episode was collected at")
    right.set_ylabel("normalized return")
    right.legend(fontsize=8, markerscale=3)
    fig.suptitle(f"{env}-medium-replay: the SAC run's replay buffer vs the one rebuilt from its snapshots", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _pair(ours: str, theirs: str | None) -> str:
    return f"{ours} / {theirs}" if theirs is not None else f"{ours} / -"


def markdown(table: pd.DataFrame, replay: pd.DataFrame | None, env: str | None) -> str:
    """One row per task, ours / D4RL's in each cell ('-': not published)."""
    rows = []
    for r in table.to_dict("records"):
        ref = D4RL.get(r["task"], {})
        fmt = "{mean:.1f} ± {std:.1f}".format
        rows.append(
            {
                "task": r["task"],
                "trajectories": _pair(f"{r['trajectories']}", ref.get("trajectories")),
                "transitions": _pair(
                    f"{r['transitions']:,}", f"{ref['transitions']:,}" if "transitions" in ref else None
                ),
                "return, mean ± std": _pair(fmt(**r), fmt(**ref) if "mean" in ref else None),
                "min .. max": _pair(
                    f"{r['min']:.1f} .. {r['max']:.1f}",
                    f"{ref['min']:.1f} .. {ref['max']:.1f}" if "min" in ref else None,
                ),
                "episode length": _pair(
                    f"{r['length_mean']:.0f}", f"{ref['length_mean']:.0f}" if "length_mean" in ref else None
                ),
            }
        )
    ours = pd.DataFrame(rows)
    lines = [
        "# Generated datasets beside D4RL's",
        "",
        "Made by `python -m pipeline.dataset_report` (the data `fetch --source generate` writes, seed 0).",
        "Each cell: ours / D4RL's file of the same name. Returns are D4RL-normalized, per trajectory (a trajectory "
        "ends at a terminal or a timeout); std over trajectories.",
        "",
        ours.to_markdown(index=False),
        "",
        "![returns](datasets/returns.png)",
        "",
    ]
    lines += [f"D4RL's numbers: {D4RL_SOURCE}", "", DIFFERENCES]
    if replay is not None:
        stats = replay.groupby("source", sort=False)["normalized_return"].describe().round(1)
        lines += [f"## {env}-medium-replay: the real buffer and the rebuilt one", "",
                  stats.to_markdown(), "", f"![replay](datasets/replay-{env}.png)", ""]
    return "\n".join(lines)


def write_report(args: argparse.Namespace) -> Path:
    cache, out, progress = Path(args.cache), Path(args.out), not args.no_progress
    replay = env = None
    if args.replay_run:  # first: a run that is not the policies' stops before the long rollouts
        replay, env = replay_comparison(Path(args.replay_run), seed=args.seed, cache=cache, progress=progress)
    data, rows = {}, []
    for task in args.tasks:
        returns, lengths = task_returns(task, seed=args.seed, cache=cache, progress=progress)
        data[task] = returns
        rows.append(summary(task, returns, lengths))
    table = pd.DataFrame(rows)
    with atomic_dir(out / "datasets") as tmp:
        table.to_csv(tmp / "summary.csv", index=False, float_format="%.4f")
        histogram_figure(data, tmp / "returns.png")
        if replay is not None:
            replay.to_csv(tmp / f"replay-{env}.csv", index=False, float_format="%.4f")
            replay_figure(replay, env, tmp / f"replay-{env}.png")
    return write_text(out / "datasets.md", markdown(table, replay, env))


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as done:
        return done.code
    from odt.datasets.generate import GenerateError
    from odt.datasets.hdf5 import DatasetError

    code, path = run_guarded("dataset_report", lambda: write_report(args), bad=(GenerateError, DatasetError))
    if not code:
        print(f"wrote {path} and {Path(args.out) / 'datasets'}/")
    return code


if __name__ == "__main__":
    sys.exit(main())

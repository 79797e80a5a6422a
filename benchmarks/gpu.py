"""GPU path: the paper config's updates/s eager vs captured, peak memory, and seeds sharing one GPU.

The update loop must not wait on the GPU: metrics stay on the device and
ODTTrainer.train_updates reads them once at the end. On CUDA a few updates run under
torch.cuda.set_sync_debug_mode("error") before the timed ones (the mode slows every
op, so it is not on while timing), and any synchronising call inside
ODTTrainer.update fails the benchmark. Without a GPU, tests/test_update_graph.py checks the
part of that contract visible on the CPU (tests/host_sync.py): odt's own code never calls
item(), float(), bool(), int(), tolist(), numpy() or cpu() on a tensor during an update.

Measured, side by side in one process with the order rotated: updates/s of the eager
update (pytorch-optimizer's Lamb, `cuda_graph=False`: the code before the capture) and of
the update replayed from its CUDA graph (the default on CUDA), for the paper and small
configs. Then S = 1, 2, 5, 10 seeds sharing the GPU, two ways: S processes through the
pipeline's joblib path (pipeline.parallel.run_parallel, loky; each process its own CUDA
context), and S trainers in one process on S CUDA streams (not a pipeline path yet: the
trainers share torch's RNG, so only the speed is meaningful). Each way runs every seed's
updates for the same wall time after all are warm (captured) and reports the aggregate
seed-updates/s. A finetuning round's parts (explore, add, 300 updates) as shares of the
round. From those rates, the update time of the `paper` profile (all tasks, pretraining
and 10 finetuning seeds, rollouts and evaluations left out).

    python -m benchmarks.gpu            # or: python -m benchmarks.run --gpu
"""
from __future__ import annotations

import gc
import math
import tempfile
import time
from pathlib import Path

import torch
import yaml

from benchmarks.common import Figure, Result, interleaved
from benchmarks.rollout import hopper_vector_env
from benchmarks.update import CONFIGS, make_trainer
from benchmarks.update import run as update_benchmark
from odt.config import FinetuneConfig
from odt.update_graph import GRAPH_WARMUP
from pipeline.parallel import run_parallel
from pipeline.profile import render


def check_no_sync(trainer) -> None:
    """A few updates under set_sync_debug_mode("error"): any host sync inside raises."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:  # checked on a few updates, not timed: the debug mode itself slows every op
        for _ in range(3):
            trainer.update()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def warm(config, *, cuda_graph: bool | None, warmup: int, batch_size: int, context_len: int, seed: int = 0):
    """A trainer on CUDA past its warm-up (and capture), checked for host syncs; (trainer, peak GiB it added)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    trainer = make_trainer(config, batch_size=batch_size, context_len=context_len, device="cuda", seed=seed,
                           cuda_graph=cuda_graph)
    trainer.train_updates(GRAPH_WARMUP + 1 + warmup)  # eager warm-ups, the capture, then warm replays
    check_no_sync(trainer)
    return trainer, (torch.cuda.max_memory_allocated() - base) / 2**30


def label(config) -> str:
    d, L, H = CONFIGS[config] if isinstance(config, str) else config
    return f"{config} (d{d} L{L} H{H})" if isinstance(config, str) else f"d{d} L{L} H{H}"


def eager_vs_captured(config, *, updates: int, warmup: int, repeats: int, batch_size: int, context_len: int):
    """Figures and rows: updates/s eager and captured, side by side, and what each adds to GPU memory."""
    eager, eager_gib = warm(config, cuda_graph=False, warmup=warmup, batch_size=batch_size, context_len=context_len)
    graphed, graphed_gib = warm(config, cuda_graph=None, warmup=warmup, batch_size=batch_size, context_len=context_len)

    def timed(trainer):
        return lambda: trainer.train_updates(updates)  # syncs once at the end, as the loops do

    t = interleaved({"eager": timed(eager), "captured": timed(graphed)}, repeats)
    rates = {k: [updates / s for s, _ in v] for k, v in t.items()}
    name = f"{label(config)}, B={batch_size}, K={context_len}"
    how = "captured" if graphed.graphed else "captured (capture FAILED: eager)"
    figures = [Figure(f"updates per second, {name}, eager", rates["eager"], "1/s"),
               Figure(f"updates per second, {name}, {how}", rates["captured"], "1/s",
                      ">= 300 1/s" if config == "paper" else "",
                      (sorted(rates["captured"])[len(rates["captured"]) // 2] >= 300) if config == "paper" else None),
               Figure(f"captured / eager updates per second, {name}",
                      [c / e for c, e in zip(rates["captured"], rates["eager"])], "x"),
               Figure(f"peak GPU memory a trainer adds, {label(config)}, eager", [eager_gib], "GiB"),
               Figure(f"peak GPU memory a trainer adds, {label(config)}, captured", [graphed_gib], "GiB")]
    del eager, graphed
    gc.collect()
    torch.cuda.empty_cache()
    return figures, rates


def _seed_process(config, seed: int, n: int, seconds: float, barrier: str, batch_size: int, context_len: int,
                  chunk: int) -> dict:
    """One seed in a worker process: warm up and capture, wait for the other n - 1, update for `seconds`."""
    torch.set_num_threads(1)
    trainer, _ = warm(config, cuda_graph=None, warmup=2, batch_size=batch_size, context_len=context_len, seed=seed)
    Path(barrier, f"ready_{seed}").touch()
    deadline = time.time() + 120
    while len(list(Path(barrier).glob("ready_*"))) < n and time.time() < deadline:
        time.sleep(0.005)
    start, count = time.time(), 0
    while time.time() - start < seconds:
        trainer.train_updates(chunk)
        count += chunk
    out = {"seed": seed, "start": start, "end": time.time(), "updates": count, "graphed": trainer.graphed}
    del trainer
    gc.collect()  # the worker stays for the next S: give its GPU memory back
    torch.cuda.empty_cache()
    return out


def seeds_in_processes(config, n: int, *, seconds: float, batch_size: int, context_len: int, chunk: int) -> dict:
    with tempfile.TemporaryDirectory() as barrier:
        jobs = [dict(config=config, seed=s, n=n, seconds=seconds, barrier=barrier, batch_size=batch_size,
                     context_len=context_len, chunk=chunk) for s in range(n)]
        out = run_parallel(_seed_process, jobs, backend="loky", n_jobs=n)
    wall = max(o["end"] for o in out) - min(o["start"] for o in out)
    return {"aggregate": sum(o["updates"] for o in out) / wall, "graphed": all(o["graphed"] for o in out),
            "start_spread_s": max(o["start"] for o in out) - min(o["start"] for o in out)}


def seeds_on_streams(config, n: int, *, seconds: float, batch_size: int, context_len: int, chunk: int) -> dict:
    """n trainers in this process, each on its own CUDA stream, updates issued round robin."""
    trainers, streams = [], [torch.cuda.Stream() for _ in range(n)]
    for s, stream in enumerate(streams):
        with torch.cuda.stream(stream):
            trainers.append(warm(config, cuda_graph=None, warmup=2, batch_size=batch_size, context_len=context_len,
                                 seed=s)[0])
    torch.cuda.synchronize()
    start, rounds = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        for _ in range(chunk):
            for trainer, stream in zip(trainers, streams):
                with torch.cuda.stream(stream):
                    trainer.update()
        torch.cuda.synchronize()  # bounds how far the host runs ahead (pinned batches in flight)
        rounds += chunk
    wall = time.perf_counter() - start
    out = {"aggregate": rounds * n / wall, "graphed": all(t.graphed for t in trainers), "start_spread_s": 0.0}
    del trainers
    gc.collect()
    torch.cuda.empty_cache()
    return out


def finetune_round(config, *, rounds: int, batch_size: int, context_len: int) -> tuple[list[Figure], list[dict]]:
    """Seconds of a finetuning round's parts (Algorithm 1: explore one episode, add it, 300 updates) on the GPU.

    Hopper-v5 without early termination: every exploration episode is 1000 steps, as a
    good policy's are. The first round (rollout graph capture) is left out.
    """
    trainer, _ = warm(config, cuda_graph=None, warmup=2, batch_size=batch_size, context_len=context_len)
    cfg = FinetuneConfig(batch_size=batch_size)
    envs = hopper_vector_env(cfg.rollouts_per_round)
    parts: dict[str, list[float]] = {"explore": [], "add": [], "updates": []}
    for r in range(rounds + 1):
        t0 = time.perf_counter()
        result = trainer.explore(envs, cfg)
        t1 = time.perf_counter()
        trainer.buffer.add(result.trajectories)
        t2 = time.perf_counter()
        trainer.train_updates(cfg.updates_per_round)
        t3 = time.perf_counter()
        if r:
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
                parts[k].append(v)
    envs.close()
    totals = [sum(p) for p in zip(*parts.values())]
    figures = [
        Figure(
            f"finetuning round, {label(config)}: {k} / whole round "
            f"({cfg.updates_per_round} updates, 1000-step episode)",
            [v / t for v, t in zip(parts[k], totals)],
            "x",
        )
        for k in parts
    ]
    rows = [
        {
            "config": label(config),
            "step": f"round: {k}",
            "median_s": float(sorted(v)[len(v) // 2]),
            "min_s": float(min(v)),
            "max_s": float(max(v)),
            "repeats": rounds,
            "updates_per_repeat": cfg.updates_per_round,
            "device": "cuda",
        }
        for k, v in parts.items()
    ]
    del trainer
    gc.collect()
    torch.cuda.empty_cache()
    return figures, rows


def paper_profile_hours(single: float, aggregate: float) -> tuple[float, float, float]:
    """(pretraining, finetuning, total) hours of the `paper` profile's updates at these rates.

    Pretraining: each task's updates at the one-seed rate. Finetuning: each task's 10 seeds
    at the aggregate rate, each seed at least updates_per_round x online_samples / (rollouts
    x max_ep_len) updates (every episode at full length; shorter episodes mean more rounds).
    """
    raw = yaml.safe_load(render("paper", root=Path(__file__).resolve().parent.parent))
    pre = fine = 0.0
    for block in raw["tasks"].values():
        f = block["finetune"]
        rounds = math.ceil(f["online_samples"] / (f["rollouts_per_round"] * block["model"]["max_ep_len"]))
        pre += block["pretrain"]["pretrain_updates"] / single
        fine += raw["seeds"] * f["updates_per_round"] * rounds / aggregate
    return pre / 3600, fine / 3600, (pre + fine) / 3600


def run(*, updates: int = 50, warmup: int = 5, configs: tuple[str | tuple[int, int, int], ...] = ("paper", "small"),
        batch_size: int = 256, context_len: int = 20, ratio_repeats: int = 3, seeds: tuple[int, ...] = (1, 2, 5, 10),
        seed_config: str | tuple[int, int, int] = "paper", seconds: float = 8.0, chunk: int = 50,
        rounds: int = 3) -> Result:
    if not torch.cuda.is_available():
        return Result("gpu", "GPU path", skipped="no GPU found: torch.cuda.is_available() is False, so the "
                      "GPU figures (updates/s eager and captured, peak GPU memory, seed-updates/s with seeds "
                      "sharing one GPU, the paper profile's update time) were not measured on this machine.")
    figures, rows = [], []
    single = None
    for config in configs:
        figs, rates = eager_vs_captured(config, updates=updates, warmup=warmup, repeats=ratio_repeats,
                                        batch_size=batch_size, context_len=context_len)
        figures += figs
        if config == seed_config:
            single = sorted(rates["captured"])[len(rates["captured"]) // 2]
    # the same side-by-side ratio as the CPU update benchmark: what the host side costs on a GPU
    ratio = update_benchmark(configs={c: updates for c in configs}, repeats=ratio_repeats, batch_size=batch_size,
                             context_len=context_len, device="cuda")
    for f in ratio.figures:  # informational: the 1.10x target is the CPU benchmark's (see the note)
        f.name = f.name.replace("ODTTrainer.update", "ODTTrainer.update (captured)") + " on the GPU (bare: eager)"
        f.target, f.met = "", None
    figures += ratio.figures
    rows += ratio.rows

    failures = []  # one failing part must not lose the others' figures
    if rounds:
        try:
            figs, round_rows = finetune_round(
                seed_config, rounds=rounds, batch_size=batch_size, context_len=context_len
            )
            figures += figs
            rows += round_rows
        except Exception as err:
            failures.append(f"finetuning round: {type(err).__name__}: {err}")

    best = {}
    for way, fn in (
        ("processes (joblib, loky)", seeds_in_processes),
        ("one process, a CUDA stream each", seeds_on_streams),
    ):
        for n in seeds:
            try:
                r = fn(seed_config, n, seconds=seconds, batch_size=batch_size, context_len=context_len, chunk=chunk)
            except Exception as err:
                failures.append(f"{n} seeds, {way}: {type(err).__name__}: {err}")
                gc.collect()
                torch.cuda.empty_cache()
                continue
            target = ">= 1000 1/s" if n == 10 and seed_config == "paper" else ""
            figures.append(Figure(f"seed-updates per second, {n} seeds sharing the GPU, {way}, {label(seed_config)}"
                                  + ("" if r["graphed"] else " (capture FAILED)"), [r["aggregate"]], "1/s", target,
                                  (r["aggregate"] >= 1000) if target else None))
            best[n] = max(best.get(n, 0.0), r["aggregate"])
            row = {"config": label(seed_config), "step": f"{n} seeds, {way}", "median_s": n / r["aggregate"],
                   "min_s": float("nan"), "max_s": float("nan"), "repeats": 1, "updates_per_repeat": chunk,
                   "device": f"cuda (start spread {r['start_spread_s']:.2f} s)"}
            rows.append(row)
    notes = [f"{torch.cuda.get_device_name(0)}; bf16 autocast, pinned host-to-device batches; {updates} updates per "
             f"timing (train_updates, one sync at the end); eager = cuda_graph=False (pytorch-optimizer's Lamb, "
             f"kernels launched one by one), captured = the default on CUDA (odt.optim's LAMB, the whole update "
             f"replayed from one CUDA graph after {GRAPH_WARMUP} eager warm-ups); before each timing, 3 updates run "
             "under torch.cuda.set_sync_debug_mode('error'), which raises on any host sync inside the update; "
             f"{ratio_repeats} repeats, order rotated.",
             f"Seeds sharing the GPU: each of S seeds ({label(seed_config)}, B={batch_size}, K={context_len}) warms "
             f"up and captures, then all update for {seconds:g} s of wall time (train_updates of {chunk}); "
             "aggregate = all seeds' updates / (last end - first start). In one process the S trainers draw from "
             "one torch RNG, so only their speed means anything there.",
             "The update/bare ratio on the GPU: the bare step (forward, loss, backward, LAMB on one fixed batch) "
             "runs eagerly, the update replays its graph, so below 1x is expected."]
    notes += [f"FAILED (not measured): {f}" for f in failures]
    if single and best:
        n = max(best)
        pre, fine, total = paper_profile_hours(single, best[n])
        notes.append(f"paper profile, updates only (rollouts and evaluations left out), at {single:.0f} updates/s "
                     f"for pretraining and {best[n]:.0f} seed-updates/s ({n} seeds sharing the GPU, the faster way) "
                     f"for finetuning, every episode at full length: pretraining {pre:.2f} h + finetuning "
                     f"{fine:.2f} h = {total:.2f} h on this GPU.")
    return Result("gpu", "GPU path", figures, rows, notes=notes)


if __name__ == "__main__":
    result = run()
    print(result.skipped or "\n".join(f"{f.name}: {f.median:.3g} {f.unit}" for f in result.figures))

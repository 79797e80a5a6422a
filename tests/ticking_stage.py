"""A stand-in stage for the heartbeat tests: pipeline.seeds.run over a job that ticks into files, no training.

    PYTHONPATH=tests python -m ticking_stage ROOT BACKEND [ADDRESS]

Seeds 0 and 1 each append `<time> <pid>` to ROOT/ticks-<seed>.txt every 0.1 s, $TICKS
times (default 600), so a test sees when, and from which process, a seed job last wrote.
With $GO set, it waits for that file to exist before it starts (after its imports).
The command ends like a stage: one `error:` line and its exit code (pipeline.cli.run_guarded).
"""
from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from pipeline import cli, seeds


def tick(out: str, ticks: int, seed: int, seed_dir: Path, logger) -> dict:
    seed_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for _ in range(ticks):
        with open(Path(out) / f"ticks-{seed}.txt", "a") as f:
            f.write(f"{time.time()} {os.getpid()}\n")
        time.sleep(0.1)
    return {"task": "tick", "seed": seed, "wall_time": time.perf_counter() - start}  # a result as a stage's has


def main(argv: list[str]) -> int:
    go = os.environ.get("GO")  # imported, then wait for this file: a test starts the stage at a moment of its choosing
    while go and not Path(go).exists():
        time.sleep(0.01)
    root, backend = Path(argv[0]), argv[1]
    params = SimpleNamespace(seeds=2, profile="test", parallel=SimpleNamespace(
        backend=backend, n_jobs=2, address=argv[2] if len(argv) > 2 else None, threads_per_worker=None))
    job = functools.partial(tick, str(root), int(os.environ.get("TICKS", "600")))
    stage = seeds.Stage("tick", "tick", params, root, key={"stage": "tick"}, job=job, files=("result.json",))
    code, _ = cli.run_guarded("tick", lambda: seeds.run(stage, track=False))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

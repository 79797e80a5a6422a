"""End to end: wall time of `make repro` from a fresh clone on 2 cores, split by stage.

    python -m benchmarks.e2e                    # clone HEAD, full install, make repro
    python -m benchmarks.e2e --source worktree  # the working tree as it is (uncommitted edits included)
    python -m benchmarks.e2e --reuse-venv       # skip the install: borrow this checkout's .venv

The clone lives in a temporary directory that is removed afterwards (--keep keeps it).
`make install` and `make repro` are timed separately (`make repro` would install first
anyway); per-stage times come from the "Running stage '<name>'" lines of `dvc repro`,
timestamped as they arrive. Slow (the install alone downloads the pinned dependencies),
so `make bench` runs it only with `python -m benchmarks.run --e2e`.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import Figure, Result, at_most

ROOT = Path(__file__).resolve().parent.parent
TARGET_MIN = 20.0
STAGE_LINE = re.compile(r"Running stage '([^']+)'")


def _two_cores() -> list[int]:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return cpus[:2]


def timed_command(
    cmd: list[str], cwd: Path, log: Path, timeout_s: float, env: dict[str, str]
) -> tuple[float, list[tuple[float, str]], int]:
    """Run `cmd` pinned to two cores; return (seconds, [(t, line)], exit code). Output is also written to `log`."""
    cores = _two_cores()
    start = time.perf_counter()
    lines: list[tuple[float, str]] = []
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)
        watchdog = threading.Timer(timeout_s, proc.kill)  # a silent hang must not outlive the budget
        watchdog.start()
        try:
            for line in proc.stdout:
                t = time.perf_counter() - start
                lines.append((t, line.rstrip("\n")))
                f.write(f"[{t:8.1f}s] {line}")
            rc = proc.wait()
        finally:
            watchdog.cancel()
    return time.perf_counter() - start, lines, rc


def stage_times(lines: list[tuple[float, str]], total: float) -> list[tuple[str, float]]:
    """Seconds per DVC stage: from its "Running stage" line to the next one (or the end)."""
    marks = [(t, m.group(1)) for t, line in lines if (m := STAGE_LINE.search(line))]
    return [(name, (marks[i + 1][0] if i + 1 < len(marks) else total) - t) for i, (t, name) in enumerate(marks)]


def prepare_clone(dest: Path, source: str) -> None:
    if source == "head":
        subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(dest)], check=True)
        return
    # the working tree: tracked and untracked-but-not-ignored files, as `git status` sees them
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)


def run(*, source: str = "head", reuse_venv: bool = False, timeout_min: float = 90.0, keep: bool = False) -> Result:
    if not (ROOT / "dvc.yaml").is_file():
        return Result("e2e", "End to end (make repro)", skipped="dvc.yaml does not exist yet: no pipeline to time.")
    tmp = Path(tempfile.mkdtemp(prefix="odt-bench-e2e-"))
    clone = tmp / "odt"
    log = tmp / "make.log"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1",
           "PYTHONUNBUFFERED": "1"}
    env.pop("VIRTUAL_ENV", None)
    try:
        clone.mkdir()
        prepare_clone(clone, source)
        make = ["make"]
        if reuse_venv:
            # borrow the installed venv; -o: never rebuild its stamp (that would re-point the
            # shared editable install at the temporary clone)
            (clone / ".venv").symlink_to(ROOT / ".venv")
            make += ["-o", ".venv/.installed"]
        budget = timeout_min * 60
        install_s, _, rc = (0.0, [], 0) if reuse_venv else timed_command(make + ["install"], clone, log, budget, env)
        if rc != 0:
            raise RuntimeError(f"`make install` failed (exit {rc}); log: {log}")
        repro_s, lines, rc = timed_command(make + ["repro"], clone, log, budget - install_s, env)
        if rc != 0:
            tail = "\n".join(line for _, line in lines[-15:])
            raise RuntimeError(f"`make repro` failed (exit {rc}) after {repro_s:.0f} s; last lines:\n{tail}")
        stages = stage_times(lines, repro_s)
    finally:
        if keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    total_min = (install_s + repro_s) / 60
    rows = ([] if reuse_venv else [{"stage": "make install (venv + pinned deps)", "seconds": round(install_s, 1)}])
    rows += [{"stage": name, "seconds": round(s, 1)} for name, s in stages]
    rows.append({"stage": "dvc repro outside stages (init, hashing, checkout)",
                 "seconds": round(repro_s - sum(s for _, s in stages), 1)})
    label = "make repro wall time" + (
        " (install skipped: --reuse-venv)" if reuse_venv else ", fresh clone incl. install"
    )
    figures = [Figure(label, [total_min], "min", f"<= {TARGET_MIN:g} min", at_most(total_min, TARGET_MIN))]
    notes = [f"source: {'git clone of HEAD' if source == 'head' else 'copy of the working tree'}; pinned to cores "
             f"{_two_cores()}; one run (it takes minutes, so no repeats)."]
    return Result("e2e", "End to end (make repro)", figures, rows, notes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", choices=["head", "worktree"], default="head")
    p.add_argument("--reuse-venv", action="store_true", help="skip the install by borrowing this checkout's .venv")
    p.add_argument("--timeout-min", type=float, default=90.0)
    p.add_argument("--keep", action="store_true", help="keep the temporary clone and make.log")
    args = p.parse_args(argv)
    r = run(source=args.source, reuse_venv=args.reuse_venv, timeout_min=args.timeout_min, keep=args.keep)
    print(r.skipped or "\n".join([f"{f.name}: {f.median:.1f} {f.unit}" for f in r.figures]
                                 + [f"  {row['stage']}: {row['seconds']} s" for row in r.rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""An unwritable or full output directory: one line naming the path and the cause, exit 1, outputs unchanged.

Permissions are tested as an unprivileged user (root ignores them), in a directory that
user can read, on the report (a training stage would import MuJoCo's GL probe, which runs
the interpreter, and this machine's interpreter lives where that user cannot run it); the
file-size limit (`ulimit -f`: Python ignores SIGXFSZ, so writes fail
with EFBIG) applies to root too. The old outputs differ from what the run would write, so
"unchanged" means no file was replaced, not that the same bytes came back.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from helpers import FT_TASK as TASK

ROOT = Path(__file__).resolve().parents[1]
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


@pytest.fixture
def world_readable():
    """A directory the unprivileged user can reach (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="odt-faults-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def copy_root(src: Path, dst: Path, *extra: str) -> Path:
    """params.yaml and runs/ of `src` (and `extra` paths), readable by everyone."""
    for rel in ("params.yaml", "runs", *extra):
        (shutil.copytree if (src / rel).is_dir() else shutil.copy2)(src / rel, dst / rel)
    subprocess.run(["chmod", "-R", "a+rX", str(dst)], check=True)
    return dst


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def old_report(reports: Path) -> dict[str, bytes]:
    """What an earlier report left: every output there, each different from what the report writes now."""
    for name in ("results.csv", "results.md", "metrics.json"):
        (reports / name).parent.mkdir(parents=True, exist_ok=True)
        (reports / name).write_text(f"old {name}\n")
    for name in ("curves", "pretrain_curves", "plots"):
        (reports / name).mkdir()
        (reports / name / "old.txt").write_text(f"old {name}\n")
    (reports / "benchmarks.md").write_text("not the report's\n")
    return tree(reports)


def run(cmd: list[str], *, env: dict | None = None, prefix: list[str] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, *cmd], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def report_cmd(root: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline.report", "--root", str(root), "--params", str(root / "params.yaml"), "--no-track"]


def test_a_read_only_reports_dir_is_one_line_naming_it_and_the_old_report_stays(baseline, world_readable):
    root = copy_root(baseline["root"], world_readable)
    before = old_report(root / "reports")
    subprocess.run(["chmod", "-R", "a+rX", str(root / "reports")], check=True)  # readable, writable by root only
    mpl = world_readable / "mpl"
    mpl.mkdir(mode=0o777)
    mpl.chmod(0o777)
    proc = run(report_cmd(root), env={"MPLCONFIGDIR": str(mpl), "HOME": str(mpl)}, prefix=AS_NOBODY)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"error: cannot write {root / 'reports' / 'results.csv'}: Permission denied"]
    assert tree(root / "reports") == before
    ok = run(report_cmd(root))  # as root it can: the same report is fine, the directory was the problem
    assert ok.returncode == 0, ok.stderr
    assert (root / "reports" / "results.md").read_bytes() != before["results.md"]


def test_a_file_size_limit_is_one_line_and_the_old_report_stays(baseline, tmp_path):
    root = copy_root(baseline["root"], tmp_path)
    before = old_report(root / "reports")
    # 8 KiB: the tables fit, a plot does not; it is written last, after everything else was staged
    proc = run(["bash", "-c", 'ulimit -f 8 && exec "$@"', "bash", *report_cmd(root)])
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"error: cannot write {root / 'reports' / 'plots' / f'{TASK}.png'}: File too large"]
    assert tree(root / "reports") == before  # not the new tables beside the old plots: nothing replaced
    assert not [p for p in (root / "reports").iterdir() if p.name.startswith(".")]  # no temporaries left


@pytest.mark.slow
def test_a_full_stage_output_dir_is_one_line_and_the_published_seeds_stay(baseline, tmp_path):
    root = copy_root(baseline["root"], tmp_path, ".cache", "data")  # every seed done in the work dir: publish only
    task_runs = root / "runs" / TASK
    (task_runs / "finetune.json").write_text("old summary\n")
    (task_runs / "finetune" / "seed_0" / "result.json").write_text("old result\n")
    before = tree(task_runs)
    # 16 KiB: the summary fits, a seed's policy.pt does not
    proc = run(["bash", "-c", 'ulimit -f 16 && exec "$@"', "bash", sys.executable, "-m", "pipeline.finetune", "--task", TASK,
                "--root", str(root), "--params", str(root / "params.yaml"), "--no-track"])
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"error: cannot write {task_runs / 'finetune' / 'seed_0' / 'policy.pt'}: File too large"]
    assert "0 of 4 seeds to run" in proc.stdout  # nothing to train: the publish itself failed
    assert tree(task_runs) == before  # neither the seeds nor the summary replaced
    assert not [p for p in task_runs.iterdir() if p.name.startswith(".")]

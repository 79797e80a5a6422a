"""An unwritable or full output directory: one line naming the path and the cause, exit 1, outputs unchanged.

Checkpoints too: torch's writer reports a refused write as its own RuntimeError (`[enforce fail at
inline_container.cc] ... unexpected pos`), which save_checkpoint turns into the same one line.

Permissions are tested as an unprivileged user (root ignores them), in a directory that
user can read, on the report (a training stage would import MuJoCo's GL probe, which runs
the interpreter, and this machine's interpreter lives where that user cannot run it); the
file-size limit (`ulimit -f`: Python ignores SIGXFSZ, so writes fail
with EFBIG) applies to root too. The old outputs differ from what the run would write, so
"unchanged" means no file was replaced, not that the same bytes came back.
"""
from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from finetune_stage import FT_TASK as TASK
from finetune_stage import stage_cmd

from odt import atomic
from odt.atomic import WriteError
from odt.checkpoint import load_checkpoint, save_checkpoint
from pipeline import paths

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
    return [
        sys.executable,
        "-m",
        "pipeline.report",
        "--root",
        str(root),
        "--params",
        str(root / "params.yaml"),
        "--no-track",
    ]


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
    proc = run(
        ["bash", "-c", 'ulimit -f 16 && exec "$@"', "bash", *stage_cmd("finetune", root, "--no-track")]
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"error: cannot write {task_runs / 'finetune' / 'seed_0' / 'policy.pt'}: File too large"]
    assert "0 of 4 seeds to run" in proc.stdout  # nothing to train: the publish itself failed
    assert tree(task_runs) == before  # neither the seeds nor the summary replaced
    assert not [p for p in task_runs.iterdir() if p.name.startswith(".")]


def file_size_limit(n: int):
    """A preexec_fn: RLIMIT_FSIZE of `n` bytes (`ulimit -f`; Python ignores SIGXFSZ, so writes fail with EFBIG)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))


SAVE = """
import sys, torch
from odt.atomic import WriteError
from odt.checkpoint import save_checkpoint
try:
    save_checkpoint(sys.argv[1], {"weights": torch.ones(100_000)})  # 400 kB
except WriteError as err:
    print(err)
    sys.exit(1)
"""


@pytest.mark.parametrize("target", ["file object", "path"])
def test_a_checkpoint_over_the_file_size_limit_is_one_line_and_the_previous_one_stays(tmp_path, target):
    path = tmp_path / "seed_0" / "checkpoint.pt"
    save_checkpoint(path, {"weights": torch.zeros(10)})
    code = SAVE
    if target == "path":  # torch's C++ writer itself: no OSError behind its RuntimeError, the limit says what happened
        code = code.replace("import sys, torch", "import sys, torch\nsave = torch.save\n"
                            "torch.save = lambda obj, f: save(obj, f.name)")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, preexec_fn=file_size_limit(64 << 10))
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines() == [f"cannot write {path}: File too large"] and proc.stderr == ""
    assert torch.equal(load_checkpoint(path)["weights"], torch.zeros(10))  # the previous checkpoint, whole
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no temporaries left


def test_a_writer_error_with_no_os_error_behind_it_is_put_down_to_the_limit_the_disk_or_neither(tmp_path, monkeypatch):
    tmp = tmp_path / ".checkpoint.pt.tmp"
    tmp.write_bytes(b"x" * 4096)
    failed = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    target = tmp_path / "checkpoint.pt"
    assert str(atomic.writer_error(failed, target, tmp)) == (
        f"cannot write {target}: the writer failed (disk full or file-size limit?)")
    with monkeypatch.context() as m:
        m.setattr(atomic.resource, "getrlimit", lambda kind: (4096, 4096))
        assert str(atomic.writer_error(failed, target, tmp)) == f"cannot write {target}: File too large"
    with monkeypatch.context() as m:
        real = os.statvfs
        m.setattr(atomic.os, "statvfs", lambda p: os.statvfs_result((*real(p)[:3], 0, 0, *real(p)[5:])))
        assert str(atomic.writer_error(failed, target, tmp)) == f"cannot write {target}: No space left on device"
    behind = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")
    behind.__context__ = OSError(28, "No space left on device")
    err = atomic.writer_error(behind, target, tmp)
    assert isinstance(err, WriteError) and str(err) == f"cannot write {target}: No space left on device"

    def refuses(obj, f):
        raise RuntimeError("not a writing problem")

    save_checkpoint(target, {"v": 1})
    monkeypatch.setattr(torch, "save", refuses)
    with pytest.raises(RuntimeError, match="not a writing problem"):  # torch's other errors stay what they are
        save_checkpoint(target, {"v": 2})
    assert load_checkpoint(target) == {"v": 1} and sorted(p.name for p in tmp_path.iterdir()) == [tmp.name, target.name]


def test_a_stage_whose_checkpoint_is_over_the_file_size_limit_is_one_line(fetched, tmp_path):
    params = yaml.safe_load((fetched / "params.yaml").read_text())
    params["seeds"] = 2
    (fetched / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, "-m", "pipeline.pretrain", "--task", TASK, "--root", str(fetched),
                           "--params", str(fetched / "params.yaml"), "--no-track"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, preexec_fn=file_size_limit(64 << 10))  # a checkpoint is ~150 kB
    assert proc.returncode == 1
    work = next(paths.work_root(fetched, TASK).glob("pretrain-*"))
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr  # no traceback: one line for the stage, each seed named in it
    line = lines[0]
    assert line.startswith("error: ") and line.endswith(" (0 other seeds finished and are kept for the rerun)"), line
    for s in range(2):
        assert f"pretrain {TASK} seed {s} failed: " in line
        assert f"cannot write {work / f'seed_{s}' / 'checkpoint.pt'}: File too large" in line
        assert list((work / f"seed_{s}").iterdir()) == []  # no checkpoint, no temporary
    assert not paths.run_dir(fetched, TASK, "pretrain").exists()

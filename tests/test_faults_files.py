"""Writes that a kill cannot half-do: odt.atomic's swap, temporaries, the lock file, one MLflow run per key.

Kills are real (a child process SIGKILLs itself at the chosen moment), so no cleanup
handler can run: what the next call finds is what a power cut would leave.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from killed_writer import killed_writers_temp
from mlflow.tracking import MlflowClient

from odt import atomic
from odt.atomic import atomic_dir, atomic_path, recover_dir, write_text
from odt.lock import LockBusy, file_lock
from pipeline.tracking import Tracker

ROOT = Path(__file__).resolve().parents[1]


def python(code: str, *args: str, wait: bool = True):
    cmd = [sys.executable, "-c", textwrap.dedent(code), *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


KILLED_SWAP = """
    import os, signal, sys
    from pathlib import Path
    from odt.atomic import atomic_dir
    target, after = Path(sys.argv[1]), int(sys.argv[2])  # SIGKILL itself after that many of atomic_dir's renames
    real, done = os.replace, []
    def replace(src, dst):
        real(src, dst)
        done.append(dst)
        if len(done) == after:
            os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace
    with atomic_dir(target) as tmp:
        (tmp / "v.txt").write_text("new")
"""


def versioned(target: Path, version: str) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    (target / "v.txt").write_text(version)
    return target


def test_a_kill_between_the_two_renames_of_a_directory_swap_loses_nothing(tmp_path):
    target = versioned(tmp_path / "curves", "old")
    proc = python(KILLED_SWAP, str(target), "1")  # the old version renamed aside, the new one not yet in
    assert proc.returncode == -9
    assert not target.exists()  # what the kill leaves: the target missing, its old copy and the new one beside it
    assert {p.name.split("-")[0] for p in tmp_path.iterdir()} == {".curves.old", ".curves.tmp"}
    recover_dir(target)  # what every atomic_dir call does first
    assert (target / "v.txt").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["curves"]

    proc = python(KILLED_SWAP, str(target), "1")
    assert proc.returncode == -9 and not target.exists()
    with atomic_dir(target) as tmp:  # the next write restores the old version before it starts
        assert (target / "v.txt").read_text() == "old"
        (tmp / "v.txt").write_text("newer")
    assert (target / "v.txt").read_text() == "newer" and [p.name for p in tmp_path.iterdir()] == ["curves"]

    proc = python(KILLED_SWAP, str(target), "2")  # both renames done, killed before the old copy was removed
    assert proc.returncode == -9 and (target / "v.txt").read_text() == "new"
    recover_dir(target)
    assert (target / "v.txt").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["curves"]


def test_temporaries_of_dead_writers_are_removed_and_a_live_writers_are_kept(tmp_path):
    target = tmp_path / "result.json"
    dead_file, dead_dir = killed_writers_temp(target), killed_writers_temp(tmp_path / "seeds")
    dead_file.write_text("half a file")
    dead_dir.mkdir()
    (dead_dir / "x").write_text("half a dir")
    sleeper = subprocess.Popen(["sleep", "60"])  # a live concurrent writer, mid-write
    try:
        live = target.with_name(f".{target.name}.tmp-{atomic.HOST}-{sleeper.pid}-l1ve.tmp")
        live.write_text("being written")
        write_text(target, "done\n")
        with atomic_dir(tmp_path / "seeds") as tmp:
            (tmp / "x").write_text("whole")
        assert not dead_file.exists() and not dead_dir.exists()
        assert live.read_text() == "being written"  # not ours to remove
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "result.json", "seeds"])
    finally:
        sleeper.kill()
        sleeper.wait()
    write_text(target, "again\n")
    assert not live.exists()  # its writer is gone now: removed by the next write


def test_the_directory_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    events = []
    real_replace, real_fsync = os.replace, os.fsync
    monkeypatch.setattr(
        os, "replace", lambda src, dst: (real_replace(src, dst), events.append(("replace", str(dst))))[0]
    )
    monkeypatch.setattr(os, "fsync", lambda fd: (real_fsync(fd), events.append(
        ("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file", ""))))
    write_text(tmp_path / "a.txt", "x")
    assert events == [("fsync file", ""), ("replace", str(tmp_path / "a.txt")), ("fsync dir", "")]
    events.clear()
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "f").write_text("y")
    assert events[-2:] == [("replace", str(tmp_path / "d")), ("fsync dir", "")]


def test_a_failed_write_names_the_target_and_leaves_it(tmp_path):
    target = tmp_path / "plots" / "a.png"
    write_text(target, "old")
    with pytest.raises(atomic.WriteError) as err, atomic_path(target, suffix=".png") as tmp:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")
    assert str(err.value) == f"cannot write {target}: No space left on device" and target.read_text() == "old"
    with pytest.raises(atomic.WriteError) as err, atomic_dir(tmp_path / "plots") as tmp:
        write_text(tmp / "b.png", "x")
        raise OSError(27, "File too large", str(tmp / "b.png"))
    assert str(err.value) == f"cannot write {tmp_path / 'plots' / 'b.png'}: File too large"  # where it was going
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["a.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["plots"]


def test_dvc_ignores_what_odt_atomic_leaves_beside_a_target(tmp_path):
    shutil.copy(ROOT / ".dvcignore", tmp_path / ".dvcignore")
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True, capture_output=True)
    names = [
        f"runs/t/finetune/seed_0/.result.json.tmp-{atomic.HOST}-123-abc.tmp",
        f"runs/t/.finetune.old-{atomic.HOST}-1-0",
        f"reports/.plots.tmp-{atomic.HOST}-9-x/a.png",
        "runs/t/finetune/seed_0/result.json",
    ]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    out = subprocess.run([dvc, "check-ignore", *names], cwd=tmp_path, capture_output=True, text=True)
    assert out.stdout.split() == names[:3]  # the temporaries, not the output


LOCKED_INCREMENT = """
    import sys, time
    from pathlib import Path
    from odt.lock import file_lock
    counter, lock = Path(sys.argv[1]), Path(sys.argv[2])
    for _ in range(40):
        with file_lock(lock):
            n = int(counter.read_text())
            time.sleep(0.001)
            counter.write_text(str(n + 1))
"""


def test_file_lock_leaves_no_file_and_still_excludes(tmp_path):
    counter, lock = tmp_path / "counter", tmp_path / "x.lock"
    counter.write_text("0")
    procs = [python(LOCKED_INCREMENT, str(counter), str(lock), wait=False) for _ in range(5)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert counter.read_text() == "200"  # no increment lost: one holder at a time, although the file comes and goes
    assert not lock.exists()

    with file_lock(lock):
        assert lock.exists()
        holder = python(
            "import sys\nfrom odt.lock import file_lock, LockBusy\ntry:\n    with file_lock(sys.argv[1], wait=False): "
            "print('got it')\nexcept LockBusy as e:\n    print('busy')",
            str(lock),
        )
        assert holder.stdout.strip() == "busy"
    assert not lock.exists()
    assert LockBusy.__mro__[1] is RuntimeError


RACING_RUN = """
    import sys, time
    from pathlib import Path
    from pipeline.tracking import Tracker
    root, uri, go, ready = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    tracker = Tracker(root, uri)
    exp = tracker.experiment("odt/race")
    real_find = Tracker.find
    def slow_find(self, *args, **kwargs):  # widen the window between finding nothing and creating the run
        found = real_find(self, *args, **kwargs)
        time.sleep(0.5)
        return found
    Tracker.find = slow_find
    ready.touch()
    while not go.exists():
        time.sleep(0.01)
    print(tracker.run(exp, "finetune:abc:seed0", "seed 0", {"seed": 0}))
"""


@pytest.mark.slow
def test_two_processes_with_one_run_key_make_one_mlflow_run(tmp_path):
    uri, go = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "go"
    Tracker(tmp_path, uri).experiment("odt/race")
    procs = [
        python(RACING_RUN, str(tmp_path), uri, str(go), str(tmp_path / f"ready-{i}"), wait=False) for i in range(3)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < 3 and time.monotonic() < deadline:  # all three at the line
        time.sleep(0.05)
    go.touch()
    ids = set()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        ids.add(out.strip().splitlines()[-1])
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("odt/race").experiment_id])
    assert len(runs) == 1 and ids == {runs[0].info.run_id}
    assert sorted(p.name for p in tmp_path.iterdir() if "lock" in p.name) == []  # the lock left no file

"""Real servers for the tests, on 127.0.0.1: started as processes, stopped by pid with bounded waits.

`Service` runs one command in its own process group (a dask worker's nannies, ray's
daemons and a PostgreSQL postmaster's backends are its children) and stops that group:
SIGTERM, a bounded wait, then SIGKILL. `recipe(name)` reads a command block of the README
(marked `<!-- recipe: NAME -->`), so that a test runs what the README tells users to paste.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent  # the venv's dask, ray, mlflow, optuna-dashboard


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env(**extra: str) -> dict[str, str]:
    """The environment of every process a test starts: the venv first on PATH, this checkout's packages importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHONPATH"))}
    # PYTHONPATH: a dask or ray worker unpickles pipeline.* by name; an editable install may point to another checkout
    return env | {"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "PYTHONPATH": str(ROOT),
                  "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"} | extra


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process (an unprivileged postgres)
        return True
    try:  # a zombie no one reaps is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def group_members(pgid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def stop_group(pgid: int, timeout: float = 20.0, sig: int = signal.SIGTERM) -> list[int]:
    """`sig` to process group `pgid`, wait at most `timeout` s, SIGKILL what is left; returns the pids still there
    (none)."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return []
    deadline = time.monotonic() + timeout
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if group_members(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
    return group_members(pgid)


class Service:
    """One long-running command in its own process group, its output in `log`."""

    def __init__(self, cmd: list[str], *, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
                 stop_signal: int = signal.SIGTERM):
        self.cmd, self.log, self.stop_signal = cmd, Path(log), stop_signal
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env or service_env(),
                                         cwd=cwd or ROOT, start_new_session=True)
        self.pid = self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_port(self, port: int, timeout: float = 60.0) -> None:
        """Until something accepts connections on 127.0.0.1:`port` (bounded); fails with the service's log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.cmd[0]} exited {self.proc.returncode}:\n{self.output()[-3000:]}")
            with socket.socket() as s:
                s.settimeout(1)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"{' '.join(self.cmd)} not listening on 127.0.0.1:{port} after {timeout:.0f} s:\n"
                           f"{self.output()[-3000:]}")

    def wait_http(self, url: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.cmd[0]} exited {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{url} did not answer 200 after {timeout:.0f} s:\n{self.output()[-3000:]}")

    def stop(self, timeout: float = 20.0) -> None:
        left = stop_group(self.pid, timeout, self.stop_signal)
        self.proc.wait(timeout=10)
        assert not left, f"{self.cmd[0]}: processes {left} survived SIGKILL"

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# the README's command blocks ---------------------------------------------------------------
def recipe(name: str) -> str:
    """The fenced block right after `<!-- recipe: NAME -->` in the README."""
    m = re.search(rf"<!-- recipe: {re.escape(name)} -->\s*```(\w*)\n(.*?)```", README.read_text(), re.S)
    assert m, f"README has no block marked <!-- recipe: {name} -->"
    return m.group(2)


def commands(block: str, replace: dict[str, str]) -> list[tuple[str, list[str] | tuple[str, str], bool]]:
    """A bash recipe as (kind, what, background) steps: ("run", argv, bg), ("export", (name, value)), ("wait", ...).

    `replace` maps a literal of the README (its port 8786, its data directory) to the
    test's own value; each literal must be in the block, so the README cannot drift away.
    """
    for old in replace:
        assert old in block, f"{old!r} is not in the README recipe:\n{block}"
    steps = []
    for raw in block.splitlines():
        line = raw.split("  #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        for old, new in replace.items():
            line = line.replace(old, new)
        if line == "wait":
            steps.append(("wait", [], False))
        elif line.startswith("export "):
            name, value = line[len("export "):].split("=", 1)
            steps.append(("export", (name, value), False))
        else:
            bg = line.endswith("&")
            steps.append(("run", shlex.split(line.rstrip("&").strip()), bg))
    return steps


def expand(argv: list[str], env: dict[str, str]) -> list[str]:
    """$NAME and ${NAME} from `env` (the recipe's exports), as the shell would."""
    return [re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), a) for a in argv]

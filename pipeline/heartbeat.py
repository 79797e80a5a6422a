"""No worker outlives its stage: the stage's heartbeat in its work directory, and each seed job's watchdog.

While a stage runs its seeds it holds `<work>/stage.lock` and a thread rewrites
`<work>/heartbeat.json` (host, pid, a token fresh for this run, a beat counter) every
BEAT_S seconds. Every seed job, wherever it runs (a loky worker here, a dask or ray worker
on a machine that shares the directory), starts a watchdog thread that ends its process
with os._exit when the heartbeat

- stops changing for STALE_S seconds (the stage was killed: SIGKILL, a power cut of its host),
- disappears (the stage ended, or was interrupted and cleaned up), or
- carries another token (a new run of the stage took over the directory),

so a killed stage's workers cannot go on writing result files and MLflow runs into the
state its rerun uses. Staleness is judged by the counter, on the watchdog's own clock, so
the machines' clocks need not agree. A rerun after an unclean end writes its token first
and waits longer than a watchdog's poll before it dispatches a seed; a live run elsewhere
(its heartbeat still changing) makes it refuse with one line.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from odt.lock import LockBusy, file_lock

BEAT_S = 0.5  # the stage rewrites its heartbeat this often
POLL_S = 0.5  # a watchdog reads it this often
STALE_S = 5.0  # unchanged for this long: the stage is gone
ORPHANED = 75  # exit status of a worker its watchdog ended
HOST = socket.gethostname()


class StageBusy(RuntimeError):
    """Another live run of the stage holds its work directory; one line."""


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or caught between truncate and write
        return None
    return data if isinstance(data, dict) else None


class _Beat(threading.Thread):
    def __init__(self, path: Path, token: str):
        super().__init__(name="odt-heartbeat", daemon=True)
        self.path, self.token, self.count = path, token, 0
        self.done = threading.Event()
        self.write()  # the first beat before the thread starts: it names this run at once

    def write(self) -> None:
        self.count += 1
        text = json.dumps({"host": HOST, "pid": os.getpid(), "token": self.token, "beat": self.count})
        # in place, not renamed: a network filesystem shows a reader the new content at open
        with open(self.path, "w") as f:
            f.write(text)

    def run(self) -> None:
        while not self.done.wait(BEAT_S):
            try:
                self.write()
            except OSError:  # a full disk for a moment; the watchdogs tolerate STALE_S
                pass


@contextlib.contextmanager
def heartbeat(work: Path, what: str) -> Iterator[dict[str, Any]]:
    """Hold `work` for one run of a stage (`what`, e.g. "finetune hopper-medium-v2"); yields what a watchdog needs."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    path = work / "heartbeat.json"
    try:
        lock = file_lock(work / "stage.lock", wait=False)
        lock.__enter__()
    except LockBusy:
        other = _read(path) or {}
        raise StageBusy(f"{what}: another run of this stage (pid {other.get('pid', '?')} on {other.get('host', '?')}) "
                        f"is working in {work}; wait for it to end, or stop it") from None
    beat = None
    try:
        previous = _read(path)
        unclean = path.exists()  # a clean end removes it: its workers may still run
        if previous is not None and previous.get("host") != HOST:  # a lock does not reach other machines
            time.sleep(2 * BEAT_S + 0.2)
            now = _read(path)
            if now is not None and now.get("beat") != previous.get("beat"):
                raise StageBusy(f"{what}: another run of this stage (pid {now.get('pid')} on {now.get('host')}) "
                                f"is working in {work}; wait for it to end, or stop it")
        beat = _Beat(path, uuid.uuid4().hex)
        beat.start()
        if unclean:
            time.sleep(2 * POLL_S + 0.2)  # the old run's watchdogs see the new token and end their workers
        yield {"path": str(path), "token": beat.token, "host": HOST, "pid": os.getpid()}
    finally:
        if beat is not None:
            beat.done.set()
            beat.join()
            if (_read(path) or {}).get("token") == beat.token:
                path.unlink(missing_ok=True)
        lock.__exit__(None, None, None)


def watch(hb: dict[str, Any] | None) -> threading.Event | None:
    """Start a seed job's watchdog (none in the stage's own process); set the returned event when the job ends."""
    if hb is None or (hb["host"], hb["pid"]) == (HOST, os.getpid()):
        return None
    stop = threading.Event()

    def loop() -> None:
        path, last, seen = Path(hb["path"]), None, time.monotonic()
        while not stop.wait(POLL_S):
            if not path.exists():
                os._exit(ORPHANED)  # the stage ended
            data = _read(path)
            if data is None:
                continue
            if data.get("token") != hb["token"]:
                os._exit(ORPHANED)  # a new run of the stage took over
            if data.get("beat") != last:
                last, seen = data.get("beat"), time.monotonic()
            elif time.monotonic() - seen > STALE_S:
                os._exit(ORPHANED)  # the stage stopped beating: killed

    threading.Thread(target=loop, name="odt-watchdog", daemon=True).start()
    return stop

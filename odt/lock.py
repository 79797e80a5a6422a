"""An exclusive lock on a file, held while a block runs, that leaves no file behind.

    with file_lock(cache / "hopper.lock"):        # a second process waits here
        ...
    with file_lock(work / "stage.lock", wait=False):   # or is refused at once (LockBusy)
        ...

flock(2) on `path`, which is created if needed and unlinked by the holder before it lets
go, so no `.lock` files accumulate. A waiter that then gets the lock holds it on a file
that is no longer at `path`: it checks that the inode it locked is the one `path` names and
otherwise opens `path` again, so at any time at most one process holds the lock on the file
that `path` names. The lock dies with its process (even killed with SIGKILL).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


class LockBusy(RuntimeError):
    """`file_lock(..., wait=False)` found the lock held by another process."""


def _acquire(path: Path, wait: bool) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockBusy(f"{path} is locked by another process") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            named = os.stat(path)
        except FileNotFoundError:  # the holder before us unlinked it: lock the new one
            os.close(fd)
            continue
        held = os.fstat(fd)
        if (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino):
            return fd
        os.close(fd)  # another process created and locked a new file at `path` meanwhile


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, wait: bool = True) -> Iterator[None]:
    """An exclusive lock held while the body runs: a second process waits (or, with `wait=False`, gets LockBusy)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, wait)
    try:
        yield
    finally:
        try:
            os.unlink(path)  # while holding it: waiters see the inode is gone and start again
        except OSError:  # gone already, or a directory we may lock in but not write: the file stays
            pass
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

"""Ctrl-C and SIGTERM end a command cleanly, whenever they come.

A terminal's Ctrl-C reaches every process of the job at once, and a scheduler (SLURM,
Kubernetes, `timeout`) sends SIGTERM the same way. Python's own handling loses such a signal
in three places: a worker process still importing when it arrives dies with a traceback; a
signal after the command's work is done interrupts the interpreter's exit (a traceback from
loky's exit hook, exit 0 or -2); and SIGTERM kills without a word. So `python -m
pipeline.<command>` (only then: pipeline/__init__.py calls `install` while the command's
module is being located, before any thread exists):

- blocks SIGINT and SIGTERM in its threads, so every process it starts inherits them blocked
  (a loky worker then ignores both, pipeline.parallel.init_worker, and the stage stops it);
- waits for them in one thread and raises `Interrupted` in the main thread for the first one
  (later ones are dropped: a second Ctrl-C must not cut the cleanup short), which
  pipeline.cli.run_guarded turns into one line and exit 130 (SIGINT) or 143 (SIGTERM); one
  that comes while the command is still importing is raised when run_guarded starts (`arm`);
- holds a signal that comes while the main thread is `deferred` (in a call to the MLflow
  store) and raises it when the call returns: a sqlite transaction cut short holds the
  database's lock, and the stage's own cleanup (marking its runs KILLED) then waits on it,
  20 s per try;
- drops every signal once the command has `settle`d (its outputs are written or its error
  reported): it then ends as it would have.
"""
from __future__ import annotations

import _thread
import contextlib
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_settled = threading.Event()  # the command's end is decided
_armed = threading.Event()  # run_guarded has started
_pending: list[int] = []  # a signal that came before it did
_held: list[int] = []  # a signal that came inside a `deferred` block
_depth = 0  # how many `deferred` blocks the main thread is in
_installed = threading.Event()


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM in the main thread; a KeyboardInterrupt, so cleanup written for Ctrl-C runs for both."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def code(self) -> int:
        return 128 + self.signum  # as a shell reports a process ended by the signal

    @property
    def how(self) -> str:
        return "interrupted" if self.signum == signal.SIGINT else f"stopped by {signal.Signals(self.signum).name}"


def _raise(signum: int, frame) -> None:
    # runs in the main thread, as arm() and settle() do: no race with the command's start or end
    if _settled.is_set() or _pending or _held:
        return
    if not _armed.is_set():
        _pending.append(signum)
        return
    if _depth:
        _held.append(signum)
        return
    _settled.set()  # the first signal only: the cleanup it starts runs to its end
    raise Interrupted(signum)


def _wait() -> None:
    while True:
        _thread.interrupt_main(signal.sigwait(SIGNALS))  # runs _raise in the main thread


def command() -> bool:
    """This process is `python -m pipeline.<command>`."""
    argv = sys.orig_argv
    return "-m" in argv[:-1] and argv[argv.index("-m") + 1].startswith("pipeline.")


def install() -> None:
    for signum in SIGNALS:
        signal.signal(signum, _raise)  # what interrupt_main runs
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    _installed.set()
    threading.Thread(target=_wait, name="odt-signals", daemon=True).start()


def arm() -> None:
    """The command's guard is in place (call it in the main thread): a signal now raises, and one that came before
    is raised here."""
    _armed.set()
    if _pending:
        _settled.set()
        raise Interrupted(_pending[0])


def settle() -> None:
    """The command's end is decided (call it in the main thread): a signal from now on changes nothing."""
    _settled.set()
    if _installed.is_set():  # ignored, not only blocked: the interpreter's exit restores the default handlers
        for signum in SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


@contextlib.contextmanager
def deferred():
    """A signal that comes inside this block (in the main thread) is raised when the block ends, so what the block
    does is never cut short half-way; in other threads and outside a command, a plain block."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _held and not _settled.is_set():
            _settled.set()
            raise Interrupted(_held[0])

"""Seeds in parallel: joblib over loky on this machine, dask or ray on a cluster."""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from tqdm import std


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def plan_workers(n_jobs: int, n_tasks: int, backend: str, threads_per_worker: int | None) -> tuple[int, int]:
    """(workers, torch threads per seed), with workers x threads <= cores for loky on this machine.

    Threads default to 1 on every backend, whatever the number of workers or of seeds
    left: torch's CPU results depend on the thread count, so a seed gives the same
    numbers on loky, dask and ray, and when it resumes alone after a kill. A cluster
    (dask, ray) places work itself.
    """
    threads = threads_per_worker or 1
    if backend != "loky":
        return n_jobs, threads
    cores = available_cores()
    workers = max(1, min(n_jobs, n_tasks, cores))
    return workers, max(1, min(threads, cores // workers))


def init_worker() -> None:
    """A loky worker's initializer.

    Ctrl-C in the terminal (and a scheduler's SIGTERM) reaches the whole process group: the worker
    ignores both, and the stage stops its workers itself (pipeline/interrupts.py: a worker started
    by `python -m pipeline.<stage>` has them blocked from its first instruction). A thread ends the
    worker within a second of the stage's death (its parent: a killed stage's workers, busy or idle,
    would otherwise live on; pipeline/heartbeat.py covers the workers of a cluster). tqdm's lock is
    a thread lock, not its default multiprocessing one, whose named semaphore a killed worker would
    leak.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    std.tqdm.set_lock(threading.RLock())
    parent = os.getppid()

    def orphaned() -> None:
        while os.getppid() == parent:
            time.sleep(0.25)
        os._exit(75)  # the stage is gone: reparented

    threading.Thread(target=orphaned, name="odt-orphan-watch", daemon=True).start()


def stop_workers(backend: str) -> None:
    """Kill this machine's loky workers and release their semaphores (after Ctrl-C); dask and ray
    workers end their seed jobs themselves once the stage's heartbeat is gone (pipeline/heartbeat.py)."""
    if backend != "loky":
        return
    from joblib.externals.loky import reusable_executor

    executor = reusable_executor._executor  # the one joblib made; get_reusable_executor() could make another
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)


@contextlib.contextmanager
def joblib_backend(backend: str, n_jobs: int, address: str | None):
    """joblib.parallel_config for loky, dask (a distributed.Client) or ray."""
    import joblib

    if backend == "loky":
        # workers ignore Ctrl-C (the terminal sends it to them too): the stage stops them itself
        with joblib.parallel_config(backend="loky", n_jobs=n_jobs, initializer=init_worker):
            yield
    elif backend == "dask":
        import distributed

        if address:
            with distributed.Client(address) as client, joblib.parallel_config(backend="dask", n_jobs=n_jobs):
                yield client
        else:
            try:
                client = distributed.get_client()
            except ValueError:
                raise RuntimeError(
                    "parallel.backend is dask but parallel.address is empty and no dask Client is running; "
                    "set parallel.address to the scheduler (tcp://host:8786)"
                ) from None
            with joblib.parallel_config(backend="dask", n_jobs=n_jobs):
                yield client
    elif backend == "ray":
        try:
            import ray
            from ray.util.joblib import register_ray
        except ImportError:
            raise RuntimeError("parallel.backend is ray but ray is not installed: pip install ray==2.60.0") from None
        register_ray()
        connected = ray.is_initialized()
        ray.init(address=address, ignore_reinit_error=True)  # None: a local ray instance
        try:
            with joblib.parallel_config(backend="ray", n_jobs=n_jobs):
                yield
        finally:
            if not connected:  # leave the cluster as it was found: disconnect this driver
                ray.shutdown()
    else:
        raise ValueError(f"unknown joblib backend {backend!r}")


def run_parallel(fn: Callable[..., dict], jobs: Iterable[dict[str, Any]], *, backend: str, n_jobs: int,
                 address: str | None = None) -> list[dict]:
    from joblib import Parallel, delayed

    jobs = list(jobs)
    if not jobs:
        return []
    with joblib_backend(backend, n_jobs, address):
        return Parallel()(delayed(fn)(**job) for job in jobs)

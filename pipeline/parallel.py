"""Seeds in parallel: joblib over loky on this machine, dask or ray on a cluster."""
from __future__ import annotations

import contextlib
import os
import signal
from typing import Any, Callable, Iterable


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


def ignore_sigint() -> None:
    """A loky worker's initializer: Ctrl-C in the terminal reaches the whole process group."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def stop_workers(backend: str) -> None:
    """Kill this machine's loky workers and release their semaphores (after Ctrl-C); dask and ray
    workers end their seed jobs themselves once the stage's heartbeat is gone (pipeline/heartbeat.py)."""
    if backend != "loky":
        return
    from joblib.externals.loky import reusable_executor  # noqa: PLC0415

    executor = reusable_executor._executor  # the one joblib made; get_reusable_executor() could make another
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)


@contextlib.contextmanager
def joblib_backend(backend: str, n_jobs: int, address: str | None):
    """joblib.parallel_config for loky, dask (a distributed.Client) or ray."""
    import joblib  # noqa: PLC0415

    if backend == "loky":
        # workers ignore Ctrl-C (the terminal sends it to them too): the stage stops them itself
        with joblib.parallel_config(backend="loky", n_jobs=n_jobs, initializer=ignore_sigint):
            yield
    elif backend == "dask":
        import distributed  # noqa: PLC0415

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
            import ray  # noqa: PLC0415
            from ray.util.joblib import register_ray  # noqa: PLC0415
        except ImportError:
            raise RuntimeError("parallel.backend is ray but ray is not installed: pip install 'ray[default]'") from None
        register_ray()
        ray.init(address=address, ignore_reinit_error=True)  # None: a local ray instance
        with joblib.parallel_config(backend="ray", n_jobs=n_jobs):
            yield
    else:
        raise ValueError(f"unknown joblib backend {backend!r}")


def run_parallel(fn: Callable[..., dict], jobs: Iterable[dict[str, Any]], *, backend: str, n_jobs: int,
                 address: str | None = None) -> list[dict]:
    from joblib import Parallel, delayed  # noqa: PLC0415

    jobs = list(jobs)
    if not jobs:
        return []
    with joblib_backend(backend, n_jobs, address):
        return Parallel()(delayed(fn)(**job) for job in jobs)

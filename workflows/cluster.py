"""Getting a Dask client: a LocalCluster sized for the machine, or an existing scheduler."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from storage import ConfigError

__all__ = ["ClusterSettings", "dask_client"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterSettings:
    """Where tasks run.

    ``scheduler`` set: connect to that Dask scheduler (``tcp://host:8786``). Otherwise start a
    ``LocalCluster`` of ``workers`` processes (default: one per core) with
    ``threads_per_worker`` threads each; ``processes=False`` keeps everything in this process
    (needed for ``memory://`` URLs, which are private to a process).
    """

    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int = 1
    memory_limit: str | None = "auto"
    processes: bool = True

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.threads_per_worker < 1:
            raise ConfigError(f"--threads-per-worker must be >= 1, got {self.threads_per_worker}")


@contextmanager
def dask_client(settings: ClusterSettings) -> Iterator["distributed.Client"]:  # noqa: F821
    """Yield a connected ``distributed.Client``; closes what it started."""
    from distributed import Client, LocalCluster

    # distributed configures its loggers at import; keep its INFO chatter out of job output
    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.core", "distributed.worker", "distributed.http"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if settings.scheduler:
        with Client(settings.scheduler) as client:
            log.info("connected to Dask scheduler %s (dashboard: %s)", settings.scheduler, client.dashboard_link)
            yield client
        return
    workers = settings.workers or max(1, os.cpu_count() or 1)
    threads = settings.threads_per_worker
    # TensorFlow sizes its pools from the core count at import; pin it to the worker's threads
    env = {"TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
           "OMP_NUM_THREADS": str(threads)}
    kwargs = dict(n_workers=workers, threads_per_worker=threads, processes=settings.processes,
                  dashboard_address=":0", silence_logs=logging.WARNING)
    if settings.processes:
        kwargs.update(memory_limit=settings.memory_limit, env=env)
    with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
        log.info(
            "LocalCluster: %d worker %s x %d thread(s); dashboard: %s",
            workers, "processes" if settings.processes else "threads", threads, client.dashboard_link,
        )
        yield client

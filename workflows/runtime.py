"""Process set-up shared by every command: quiet TensorFlow, logging, thread counts."""

from __future__ import annotations

import logging
import os
import signal

__all__ = ["quiet_tensorflow", "setup_logging", "failpoint", "FAILPOINTS"]

# Where `PATCHHASH_FAILPOINTS` can kill a job (tests/test_faults.py, docs/RELIABILITY.md).
FAILPOINTS = ("index-encoded", "index-partition-built", "index-before-commit")


def quiet_tensorflow(threads: int | None = None) -> None:
    """Silence TensorFlow's C++ banner and, optionally, pin its thread pools.

    Must run before TensorFlow is first imported in the process to take effect.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # 3: also the bogus "NodeDef mentions attribute" errors
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if threads:
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
        os.environ["TF_NUM_INTEROP_THREADS"] = "1"


def setup_logging(verbose: bool = False, monitor=None, command: str = "") -> None:
    """Start this process's run: a new run id, and one log line per record on stderr in the
    format of ``monitor`` (a :class:`workflows.logformat.MonitorSettings`; text by default),
    at debug level with ``verbose`` (:mod:`workflows.logformat`)."""
    from workflows.logformat import start_run

    start_run(command, monitor, verbose)
    for noisy in ("distributed", "tensorflow", "absl", "numba", "fsspec", "asyncio", "botocore", "s3fs", "aiobotocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def failpoint(name: str) -> None:
    """Kill this process with SIGKILL here if ``name`` is listed in ``PATCHHASH_FAILPOINTS``.

    For fault tests only: it lets a test stop a job at an exact point (a SIGKILL, like the
    OOM killer or a lost node, so no cleanup runs) and check that a rerun resumes.
    """
    if name in os.environ.get("PATCHHASH_FAILPOINTS", "").split(","):
        logging.getLogger(__name__).warning("failpoint %s: killing this process (PATCHHASH_FAILPOINTS)", name)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)

"""A real Dask cluster started with the ``dask`` CLI (scheduler + one ``dask worker`` command)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DASK = str(Path(sys.executable).with_name("dask"))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
       "OMP_NUM_THREADS": "1"}


def stop(proc: subprocess.Popen) -> None:
    """End a process started in its own session, and everything it started (nannies' workers)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def dask_cli_cluster(work: Path, n_workers: int = 2, protocol: str = "tcp", extra: tuple[str, ...] = (),
                     memory_limit: str = "0", worker_env: dict[str, str] | None = None) -> Iterator[str]:
    """``dask scheduler`` on 127.0.0.1 and ``dask worker --nworkers n_workers``; yields the address.

    ``extra`` is passed to both commands (e.g. TLS files). The processes run in ``work`` (not
    the repository), so workers import the installed project; ``work`` is also the workers'
    ``--local-directory``. ``memory_limit`` per worker: ``"0"``, none (and no spilling to
    disk). ``worker_env`` is added to the workers' environment. Logs go to ``work/*.log``.
    """
    scheduler_file = work / "scheduler.json"
    procs: list[subprocess.Popen] = []
    logs = []

    def start(name: str, args: list[str], env: dict[str, str]) -> None:
        log = open(work / f"{name}.log", "w")  # noqa: SIM115 - closed below
        logs.append(log)
        procs.append(subprocess.Popen([DASK, *args], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))

    try:
        start("scheduler", ["scheduler", "--protocol", protocol, "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                            "--scheduler-file", str(scheduler_file), *extra], ENV)
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert procs[0].poll() is None, (work / "scheduler.log").read_text()
            assert time.monotonic() < deadline, "the scheduler did not start in 60 s"
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith(f"{protocol}://127.0.0.1:")
        start("workers", ["worker", address, "--nworkers", str(n_workers), "--nthreads", "1", "--host", "127.0.0.1",
                          "--no-dashboard", "--memory-limit", memory_limit, "--local-directory", str(work), *extra],
              {**ENV, **(worker_env or {})})
        yield address
    finally:
        for proc in reversed(procs):
            stop(proc)
        for log in logs:
            log.close()


def shadowing_site(work: Path) -> Path:
    """A folder for a worker's ``PYTHONPATH`` that makes ``storage`` what a Dask worker's
    ``storage/`` spill folder is to an install that comes after it on ``sys.path``: a namespace
    package (``<work>/site/storage``), not patchhash's."""
    site = work / "site"
    (site / "storage").mkdir(parents=True)
    (site / "sitecustomize.py").write_text(textwrap.dedent(f"""\
        import importlib.machinery
        import importlib.util
        import sys

        spec = importlib.machinery.ModuleSpec("storage", None, is_package=True)
        spec.submodule_search_locations = [{str(site / "storage")!r}]
        sys.modules["storage"] = importlib.util.module_from_spec(spec)
        """))
    return site

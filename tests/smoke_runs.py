"""Benchmark smoke runs for ``tests/test_benchmarks.py``.

A test marked ``@smoke_run(script, *args)`` reads the run of ``benchmarks/<script> --smoke
--out-json ... <args>``. The runs of a module's marked tests all start when the first of them
needs its run, ``AT_ONCE`` at a time, in the tests' order: most of a run is one
process importing TensorFlow, or a Dask cluster starting and stopping, so two overlap well on 2
cores (a fifth to a third less time than one after the other, measured on pairs of these scripts).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MARK = "benchmark_smoke"
RUN_DIR = "{run_dir}"  # in a script's arguments: a folder of its own run
AT_ONCE = 2


def smoke_run(script: str, *args: str) -> pytest.MarkDecorator:
    """Marks a test that reads ``benchmarks/<script> --smoke --out-json ... <args>`` (the ``smoke`` fixture)."""
    return getattr(pytest.mark, MARK)(script, *args)


# One spawn at a time: once, with two runs starting together, a smoke test failed here with
# "OSError: [Errno 14] Bad address" (subprocess spawns with vfork from several threads); the
# runs themselves still overlap.
_SPAWN = threading.Lock()


def _run(script: str, args: tuple[str, ...], run_dir: Path) -> subprocess.CompletedProcess:
    out = run_dir / f"{script}.json"
    args = [sys.executable, str(ROOT / "benchmarks" / script), "--smoke", "--out-json", str(out),
            *(arg.format(run_dir=run_dir) for arg in args)]
    with _SPAWN:
        process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        stderr += "\n(killed after 900 s)"
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


class SmokeRuns:
    """The runs of marked tests, started a module at a time (in the tests' order, ``AT_ONCE`` at a
    time): when a module's first marked test needs its run, the runs of all of that module's
    marked ``items`` start. A module only (not the session's every marked test) because under
    ``pytest -n`` another worker process may be the one that runs the other modules."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="patchhash-smoke-"))
        self.pool = ThreadPoolExecutor(AT_ONCE, thread_name_prefix="smoke-run")
        self.runs: dict[str, tuple[Future, Path]] = {}

    def _start(self, items: list[pytest.Item]) -> None:
        for item in items:
            mark = item.get_closest_marker(MARK)
            if mark and item.nodeid not in self.runs:
                script, *args = mark.args
                run_dir = self.root / f"{len(self.runs):02d}-{Path(script).stem}"
                run_dir.mkdir()
                self.runs[item.nodeid] = self.pool.submit(_run, script, tuple(args), run_dir), run_dir

    def result(self, item: pytest.Item) -> tuple[subprocess.CompletedProcess, Path]:
        """``item``'s run, once it has ended (starting its module's runs if they have not started)."""
        if item.nodeid not in self.runs:
            self._start([other for other in item.session.items if other.path == item.path])
        future, run_dir = self.runs[item.nodeid]
        return future.result(), run_dir

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)  # after a failure with -x: no more starts
        shutil.rmtree(self.root, ignore_errors=True)

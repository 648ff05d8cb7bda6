"""Benchmark smoke runs, started in the background when the test session starts.

A test of ``tests/test_benchmarks.py`` marked ``@smoke_run(script, *args)`` reads the run of
``benchmarks/<script> --smoke --out-json ... <args>``. The runs of the tests selected start one
after the other as soon as collection ends, and those tests are moved to the end of the
session: the rest of the suite leaves about one of CI's two cores idle (a test mostly waits on
a subprocess, a Dask cluster or a file), and the runs fill it instead of being waited for.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MARK = "benchmark_smoke"
RUN_DIR = "{run_dir}"  # in a script's arguments: a folder of its own run
AT_ONCE = 1


def smoke_run(script: str, *args: str) -> pytest.MarkDecorator:
    """Marks a test that reads ``benchmarks/<script> --smoke --out-json ... <args>`` (the ``smoke`` fixture)."""
    return getattr(pytest.mark, MARK)(script, *args)


def _run(script: str, args: tuple[str, ...], run_dir: Path) -> subprocess.CompletedProcess:
    out = run_dir / f"{script}.json"
    args = tuple(arg.format(run_dir=run_dir) for arg in args)
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke", "--out-json", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)


class SmokeRuns:
    """The runs of the marked ``items``, started in their order, ``AT_ONCE`` at a time."""

    def __init__(self, items: list[pytest.Item]):
        self.root = Path(tempfile.mkdtemp(prefix="patchhash-smoke-"))
        self.pool = ThreadPoolExecutor(AT_ONCE, thread_name_prefix="smoke-run")
        self.runs: dict[str, tuple[Future, Path]] = {}
        for item in items:
            mark = item.get_closest_marker(MARK)
            if mark and item.nodeid not in self.runs:
                script, *args = mark.args
                run_dir = self.root / f"{len(self.runs):02d}-{Path(script).stem}"
                run_dir.mkdir()
                self.runs[item.nodeid] = self.pool.submit(_run, script, tuple(args), run_dir), run_dir

    def result(self, item: pytest.Item) -> tuple[subprocess.CompletedProcess, Path]:
        future, run_dir = self.runs[item.nodeid]
        return future.result(), run_dir

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)  # after a failure with -x: no more starts
        shutil.rmtree(self.root, ignore_errors=True)


def last(items: list[pytest.Item]) -> None:
    """Move the marked tests to the end (in place, otherwise in their order)."""
    items.sort(key=lambda item: item.get_closest_marker(MARK) is not None)

"""The preflight and the no-workers watchdog on real ``dask scheduler`` / ``dask worker`` processes.

A job on a ``--scheduler`` cluster must fail in one line, exit 1, within seconds or within
``--no-workers-timeout``, instead of waiting for ever: when no worker ever joins, when its
workers die mid-job, when a worker runs another patchhash version (``PATCHHASH_REPORTED_VERSION``,
the preflight's test hook) or cannot import patchhash's packages (an editable install shadowed
by the worker's ``storage/`` spill folder). Nothing is committed, and a rerun resumes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from dask_cli import DASK, ENV, shadowing_site, stop
from snapshots import index_snapshot

from workflows.preflight import REPORTED_VERSION_ENV, reported_version

pytestmark = pytest.mark.slow

ERROR = "patchhash: error: "


@contextmanager
def dask_scheduler(work: Path) -> Iterator[str]:
    """``dask scheduler`` on 127.0.0.1 with no worker; yields its address."""
    scheduler_file = work / "scheduler.json"
    with open(work / "scheduler.log", "w") as log:
        proc = subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                 "--scheduler-file", str(scheduler_file)], cwd=work, env=ENV, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while not scheduler_file.exists():
                assert proc.poll() is None and time.monotonic() < deadline, (work / "scheduler.log").read_text()
                time.sleep(0.1)
            yield json.loads(scheduler_file.read_text())["address"]
        finally:
            stop(proc)


class Worker:
    """``dask worker --nworkers 1`` (with a nanny) in ``work``; its log in ``work/<name>.log``."""

    def __init__(self, work: Path, address: str, name: str, env: dict[str, str] | None = None):
        self.log_path = work / f"{name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        local = work / name
        local.mkdir(exist_ok=True)
        self.proc = subprocess.Popen([DASK, "worker", address, "--nworkers", "1", "--nthreads", "1", "--host", "127.0.0.1",
                                      "--no-dashboard", "--memory-limit", "0", "--local-directory", str(local)],
                                     cwd=local, env={**ENV, **(env or {})}, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def text(self) -> str:
        return self.log_path.read_text()

    def wait_registered(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while "Registered to" not in self.text():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.text()
            time.sleep(0.1)

    def stop(self) -> None:
        stop(self.proc)
        self._log.close()


def _cli(*args: str, cwd: Path, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "workflows.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env=ENV, cwd=cwd)
    return done, time.monotonic() - started


def _error_line(stderr: str) -> str:
    """The one error line, the last of stderr, with no traceback before it."""
    lines = stderr.strip().splitlines()
    assert lines and lines[-1].startswith(ERROR), stderr
    assert [line for line in lines if line.startswith(ERROR)] == [lines[-1]], stderr
    assert "Traceback" not in stderr, stderr
    return lines[-1][len(ERROR):]


def _markers(index: Path) -> list[Path]:
    return sorted(p for p in (index / "_staging").glob("*/done/*") if p.is_file())


def _corpus(tmp_path: Path, images: np.ndarray) -> Path:
    corpus = tmp_path / "corpus.npy"
    np.save(corpus, images[..., 0] if images.ndim == 4 else images)
    return corpus


def test_no_worker_at_all_fails_within_the_timeout(tmp_path, tiny_model):
    corpus = _corpus(tmp_path, np.zeros((8, 28, 28), np.uint8))
    with dask_scheduler(tmp_path) as address:
        done, seconds = _cli("index", "--corpus", str(corpus), "--index", str(tmp_path / "index"), "--model", tiny_model,
                             "--scheduler", address, "--no-workers-timeout", "5", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    line = _error_line(done.stderr)
    assert f"no Dask worker connected to scheduler {address} in 5 s" in line and "--no-workers-timeout" in line, line
    assert "rerun" in line
    assert seconds < 5 + 25, f"{seconds:.1f} s"
    assert not (tmp_path / "index" / "manifest.json").exists()


_SLOW_TASKS = '''\
import time

import workflows.index_tasks as tasks

_encode = tasks.encode_shard_task


def _slow(*args, **kwargs):
    time.sleep(1.5)
    return _encode(*args, **kwargs)


tasks.encode_shard_task = _slow
'''


def test_workers_killed_mid_job_fail_within_the_timeout_and_a_rerun_resumes(tmp_path, tiny_model, make_index,
                                                                             fmnist_train):
    corpus, reference = make_index(fmnist_train[:600], shard_size=100, partitions=2)  # read only
    index = tmp_path / "index"
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(_SLOW_TASKS)
    args = ("index", "--corpus", corpus, "--index", str(index), "--model", tiny_model, "--shard-size", "100",
            "--partitions", "2", "--no-workers-timeout", "5")
    with dask_scheduler(tmp_path) as address:
        worker = Worker(tmp_path, address, "slow-worker", env={"PYTHONPATH": str(slow)})
        try:
            worker.wait_registered()
            job = subprocess.Popen([sys.executable, "-m", "workflows.cli", *args, "--scheduler", address], cwd=tmp_path,
                                   env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 120
            while not _markers(index):  # a shard done: the job is mid-way
                assert job.poll() is None and time.monotonic() < deadline, job.communicate()[1]
                time.sleep(0.05)
            worker_address = next(line.split()[-1] for line in worker.text().splitlines() if "Start worker at" in line)
            worker.stop()
            killed = time.monotonic()
            _, stderr = job.communicate(timeout=60)
            seconds = time.monotonic() - killed
        finally:
            worker.stop()
        assert job.returncode == 1, stderr
        line = _error_line(stderr)
        assert worker_address in line and "are gone" in line and "5 s" in line, line
        assert seconds < 5 + 15, f"{seconds:.1f} s"
        assert not (index / "manifest.json").exists(), "nothing committed"
        assert 1 <= len(_markers(index)) < 6

        worker = Worker(tmp_path, address, "worker")
        try:
            worker.wait_registered()
            rerun, _ = _cli(*args, "--scheduler", address, cwd=tmp_path)
        finally:
            worker.stop()
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming:" in rerun.stderr
    assert index_snapshot(str(index)) == index_snapshot(reference)


def _index_with_one_worker(tmp_path: Path, model: str, name: str, env: dict) -> tuple[subprocess.CompletedProcess, float]:
    """``patchhash index`` of 8 blank images on a fresh scheduler with one registered worker
    started with ``env``: the finished command and its seconds."""
    corpus = _corpus(tmp_path, np.zeros((8, 28, 28), np.uint8))
    with dask_scheduler(tmp_path) as address:
        worker = Worker(tmp_path, address, name, env=env)
        try:
            worker.wait_registered()
            return _cli("index", "--corpus", str(corpus), "--index", str(tmp_path / "index"), "--model", model,
                        "--scheduler", address, cwd=tmp_path)
        finally:
            worker.stop()


def test_a_worker_of_another_version_is_refused_in_seconds(tmp_path, tiny_model):
    done, seconds = _index_with_one_worker(tmp_path, tiny_model, "old", {REPORTED_VERSION_ENV: "0.0.1-old"})
    assert done.returncode == 1, done.stderr
    line = _error_line(done.stderr)
    assert line.startswith("Dask worker tcp://127.0.0.1:"), line
    assert "0.0.1-old" in line and reported_version() in line and "pip install" in line, line
    assert seconds < 30, f"{seconds:.1f} s"
    assert not (tmp_path / "index" / "manifest.json").exists()
    from storage.runlog import read_runs

    (run,) = read_runs(str(tmp_path / "index"))  # the refusal is on record
    assert run["status"] == "refused-preflight" and "0.0.1-old" in run["error"], run


def test_a_worker_joining_later_with_another_version_never_runs_a_task(tmp_path, tiny_model):
    corpus = _corpus(tmp_path, np.zeros((8, 28, 28), np.uint8))
    index = tmp_path / "index"
    with dask_scheduler(tmp_path) as address:
        job = subprocess.Popen([sys.executable, "-m", "workflows.cli", "index", "--corpus", str(corpus), "--index", str(index),
                                "--model", tiny_model, "--scheduler", address, "--no-workers-timeout", "15"],
                               cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not (index / "_staging").exists():  # planned: the job waits for a worker
            assert job.poll() is None and time.monotonic() < deadline, job.communicate()[1]
            time.sleep(0.05)
        worker = Worker(tmp_path, address, "late", env={REPORTED_VERSION_ENV: "0.0.1-old"})
        try:
            _, stderr = job.communicate(timeout=90)
            assert worker.proc.wait(timeout=30) is not None, "the refused worker closes itself and its nanny"
            worker_log = worker.text()
        finally:
            worker.stop()
    assert job.returncode == 1, stderr
    line = _error_line(stderr)
    assert "refused by the preflight: tcp://127.0.0.1:" in line and "0.0.1-old" in line, line
    assert "patchhash preflight: refusing worker" in worker_log and "0.0.1-old" in worker_log, worker_log
    assert not _markers(index), "no task ran on the refused worker"
    assert not (index / "manifest.json").exists()


def test_a_worker_whose_storage_is_shadowed_by_a_spill_folder_gets_the_fix(tmp_path, tiny_model):
    """The editable-install case: on the worker, ``storage`` is a namespace folder, not ours."""
    site = shadowing_site(tmp_path)
    done, seconds = _index_with_one_worker(tmp_path, tiny_model, "shadowed", {"PYTHONPATH": str(site)})
    assert done.returncode == 1, done.stderr
    line = _error_line(done.stderr)
    assert line.startswith("Dask worker tcp://127.0.0.1:") and "cannot import patchhash" in line, line
    assert f"'storage' is the folder {site / 'storage'}" in line, line
    assert "pip install -e ." in line and "pip install ." in line, line
    assert seconds < 30, f"{seconds:.1f} s"

"""``patchhash info`` while a run holds the index's lock: during the first build (no committed
version yet) it describes the running job and exits 0; after an interrupted first build it says
to rerun (exit 1); on a committed index it shows the running job on one line; refused runs are
in its runs list."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from storage.layout import LOCK_FILE, STAGING
from storage.lock import IndexLock, LockHeldError, LockInfo, lock_status, read_lock

CLI = [sys.executable, "-m", "workflows.cli"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def info(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "info", *args], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT})


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _first_build_in_progress(url: str) -> None:
    """What a first build leaves before its commit: its staging area (the lock is the test's)."""
    os.makedirs(os.path.join(url, STAGING, "v1"), exist_ok=True)


def test_info_during_a_first_build_describes_the_running_job_and_exits_0(tmp_path):
    url = str(tmp_path / "idx")
    with IndexLock(url, command="index", corpus="s3://bucket/photos/") as build:
        _first_build_in_progress(url)
        with pytest.raises(LockHeldError):  # a second run meanwhile: refused and recorded
            IndexLock(url, corpus="s3://bucket/photos/").acquire()
        text = info("--index", url)
        as_json = info("--index", url, "--json")
        token = build.token
    assert text.returncode == 0, text.stderr
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["version"] is None and data["state"].startswith("first build running")
    running = data["running"]
    assert (running["run_id"], running["command"], running["corpus"]) == (token, "index", "s3://bucket/photos/")
    assert (running["host"], running["pid"], running["live"], running["stale_reason"]) == (socket.gethostname(), os.getpid(), True, None)
    assert running["since"] <= running["last_heartbeat"] and 0 <= running["heartbeat_age_s"] < 60
    assert [(r["status"], r["holder"]) for r in data["runs"]] == [("refused-locked", token)]
    lines = text.stdout.splitlines()
    assert "state: first build running: no committed version yet; index run " + token + " holds the lock" in lines
    for expected in (f"run_id: {token}", "command: index", f"host: {socket.gethostname()}", f"pid: {os.getpid()}",
                     "live: True", "since: ", "last_heartbeat: ", "status: refused-locked", f"holder: {token}"):
        assert any(line.strip().startswith(expected) for line in lines), (expected, text.stdout)


@pytest.mark.parametrize("lock", ["none", "dead-process", "old-heartbeat"])
def test_info_after_an_interrupted_first_build_says_rerun_and_exits_1(tmp_path, lock):
    url = str(tmp_path / "idx")
    _first_build_in_progress(url)
    if lock != "none":  # a lock left behind: stale by storage.lock's own rule
        mine = LockInfo.mine(10.0, "index")  # this host, this pid namespace
        if lock == "dead-process":
            stale = replace(mine, pid=_dead_pid())
        else:
            stale = replace(mine, host="other-host", pid=4242, started=time.time() - 3605, heartbeat=time.time() - 3600)
        with open(os.path.join(url, LOCK_FILE), "wb") as f:
            f.write(stale.to_bytes())
        assert lock_status(read_lock(url))["live"] is False
    result = info("--index", url)
    assert result.returncode == 1 and result.stdout == ""
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("patchhash: error:")]
    assert "no committed version yet" in line and "an indexing job was interrupted" in line and "Rerun the same" in line
    if lock != "none":
        assert f"index run {stale.token} that holds its lock is gone" in line and "the rerun takes the lock over" in line


def test_info_without_an_index_is_unchanged(tmp_path):
    result = info("--index", str(tmp_path / "nothing"))
    assert result.returncode == 1 and "no committed patchhash index here" in result.stderr


def test_info_on_a_committed_index_shows_the_running_job_on_one_line(tmp_path, make_index, fmnist_train):
    from workflows.info import describe_index

    _, built = make_index(fmnist_train[:200], shard_size=100, partitions=2)
    url = str(tmp_path / "idx")
    shutil.copytree(built, url)
    with IndexLock(url, command="compact") as job:
        token = job.token
        text = info("--index", url, "--runs", "3")
        data = describe_index(url)
    assert text.returncode == 0, text.stderr
    (line,) = [x for x in text.stdout.splitlines() if x.startswith("lock:")]
    assert line.startswith(f"lock: compact run {token} (host {socket.gethostname()}, pid {os.getpid()}, since ")
    assert line.endswith(", live)") and "last heartbeat" in line
    assert "run_id:" not in text.stdout, "the one line says it; the details are in --json"
    assert data["version"] == 1 and data["running"]["run_id"] == token and data["running"]["live"]
    after = describe_index(url)
    assert after["lock"] is None and after["running"] is None

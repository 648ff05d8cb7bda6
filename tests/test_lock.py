"""The index lock (one writer at a time, stale locks taken over) and the run log of an index."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import numpy as np
import pytest

from storage.lock import LOCK_FILE, IndexLock, LockHeldError, LockInfo, read_lock

CLI = [sys.executable, "-m", "workflows.cli"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_lock(index_dir, host: str, pid: int, heartbeat_age: float = 0.0) -> LockInfo:
    """Write a lock record as another run would have left it."""
    now = time.time()
    info = LockInfo(host, pid, uuid.uuid4().hex, now - heartbeat_age - 5, now - heartbeat_age, 10.0,
                    _ns() if host == socket.gethostname() else "", "index")
    os.makedirs(index_dir, exist_ok=True)
    with open(os.path.join(index_dir, LOCK_FILE), "wb") as f:
        f.write(info.to_bytes())
    return info


def _ns() -> str:
    from storage.lock import _pid_namespace

    return _pid_namespace()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_holder_is_refused_with_the_holder_named_then_gets_it_after_release(tmp_path):
    url = str(tmp_path / "idx")
    with IndexLock(url) as first:
        assert read_lock(url).token == first.token
        with pytest.raises(LockHeldError) as refused:
            IndexLock(url).acquire()
        message = str(refused.value)
        assert f"host {socket.gethostname()}, pid {os.getpid()}, since" in message
        assert "--wait-for-lock" in message and "\n" not in message
    assert read_lock(url) is None and not (tmp_path / "idx" / LOCK_FILE).exists()
    with IndexLock(url) as second:
        assert second.token != first.token


def test_refused_run_is_recorded_with_the_holder_and_a_waiting_run_that_gets_the_lock_is_not(tmp_path):
    from storage.runlog import read_runs, record_refused

    url = str(tmp_path / "idx")
    with IndexLock(url) as first:
        holder = first.token
        with pytest.raises(LockHeldError) as refused:
            IndexLock(url, command="gc").acquire()
        assert refused.value.holder.token == holder
        with pytest.raises(LockHeldError):
            IndexLock(url, log_refusal=False).acquire()  # not recorded
    (record,) = read_runs(url)
    assert (record["status"], record["command"], record["holder"], record["holder_pid"]) == ("refused-locked", "gc", holder, os.getpid())
    assert record["error"] == str(refused.value) and record["version"] is None and record["start"] <= record["end"]
    # the preflight's refusal, and a log that cannot be written: a warning, never an exception
    assert record_refused(url, "index", "workers cannot import patchhash", "refused-preflight", corpus="c/").startswith("runs/")
    assert [r["status"] for r in read_runs(url)] == ["refused-locked", "refused-preflight"]
    (tmp_path / "blocker").write_text("a file where the index folder should be")
    assert record_refused(str(tmp_path / "blocker"), "index", "x") is None
    with pytest.raises(ValueError, match="refused-locked"):
        record_refused(url, "index", "x", "ok")


def test_waiting_run_gets_the_lock_when_the_holder_releases(tmp_path):
    url = str(tmp_path / "idx")
    holder = IndexLock(url)
    holder.acquire()
    threading.Timer(0.5, holder.release).start()
    started = time.monotonic()
    with IndexLock(url, wait_s=10, poll_s=0.1) as waiter:
        assert read_lock(url).token == waiter.token
    assert 0.4 < time.monotonic() - started < 5


def test_stale_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    url = str(tmp_path / "idx")
    stale = _fake_lock(url, socket.gethostname(), _dead_pid())
    with IndexLock(url) as lock:
        assert lock.token != stale.token and read_lock(url).pid == os.getpid()


def test_stale_lock_with_an_old_heartbeat_is_taken_over_a_fresh_one_is_not(tmp_path):
    url = str(tmp_path / "idx")
    _fake_lock(url, "some-other-host", 4242, heartbeat_age=3600)
    with IndexLock(url) as lock:
        assert read_lock(url).token == lock.token
    live = _fake_lock(url, "some-other-host", 4242, heartbeat_age=1)
    with pytest.raises(LockHeldError, match="host some-other-host, pid 4242"):
        IndexLock(url).acquire()
    assert read_lock(url).token == live.token, "a live holder's lock must not be touched"


def test_heartbeat_refreshes_the_lock_and_a_lost_lock_fails_verify(tmp_path):
    url = str(tmp_path / "idx")
    with IndexLock(url, heartbeat_s=0.1) as lock:
        first = read_lock(url).heartbeat
        time.sleep(0.5)
        assert read_lock(url).heartbeat > first
        lock.verify()
        intruder = _fake_lock(url, "some-other-host", 1)
        with pytest.raises(LockHeldError, match="lost the lock.*nothing was committed"):
            lock.verify()
    assert read_lock(url).token == intruder.token, "release must leave another run's lock alone"


def test_object_store_lock_is_create_exclusive_across_threads():
    """memory:// goes through fsspec's pipe_file(mode="create") path (as s3:// would)."""
    url = f"memory://locks-{uuid.uuid4().hex}/idx"
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def contender() -> None:
        lock = IndexLock(url)
        barrier.wait()
        try:
            lock.acquire()
        except LockHeldError:
            outcomes.append("refused")
            return
        outcomes.append("won")
        time.sleep(0.3)
        lock.release()

    threads = [threading.Thread(target=contender) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["refused"] * 7 + ["won"]
    assert read_lock(url) is None


_CONTENDER = textwrap.dedent("""
    import sys, time
    from storage.lock import IndexLock, LockHeldError
    url, start = sys.argv[1], float(sys.argv[2])
    lock = IndexLock(url)
    while time.time() < start:
        time.sleep(0.001)
    try:
        lock.acquire()
    except LockHeldError:
        print("refused")
    else:
        print("won", lock.token)
        time.sleep(1.5)
        lock.release()
""")


@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale-lock"])
def test_concurrent_processes_exactly_one_wins(tmp_path, stale):
    """Six processes race for a free lock, or to take over a dead run's lock: one gets it."""
    url = str(tmp_path / "idx")
    if stale:
        _fake_lock(url, socket.gethostname(), _dead_pid())
    start = time.time() + 2.0  # after every interpreter has started
    procs = [subprocess.Popen([sys.executable, "-c", _CONTENDER, url, str(start)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
             for _ in range(6)]
    outputs = [p.communicate(timeout=60)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    winners = [out for out in outputs if out[0] == "won"]
    assert len(winners) == 1 and sum(out == ["refused"] for out in outputs) == 5, outputs
    assert read_lock(url) is None


# --------------------------------------------------------------------------- through the CLI


def run(*args: str, env: dict | None = None, cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600, cwd=cwd or ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT, **(env or {})})


def _errors(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("patchhash: error:")]


def test_index_runs_are_locked_logged_and_a_nightly_rerun_is_a_quick_no_op(tmp_path, tiny_model, fmnist_train):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    np.save(jobs / "corpus.npy", fmnist_train[:300, :, :, 0])
    spec = jobs / "nightly.yaml"
    # relative paths: taken from the job file's folder, whatever the working directory
    spec.write_text(f"command: index\ncorpus: corpus.npy\nindex: idx\nmodel: {tiny_model}\nshard-size: 100\nworkers: 1\n")
    url = str(jobs / "idx")

    first = run("index", "--config", str(spec), cwd=str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert "indexed 300 new images" in first.stdout and read_lock(url) is None

    with IndexLock(url) as holding:  # another run holds the index
        holder = holding.token
        refused = run("index", "--config", str(spec), cwd=str(tmp_path))
    assert refused.returncode == 1
    (line,) = _errors(refused)
    assert f"is locked by another index run (host {socket.gethostname()}, pid {os.getpid()}, since" in line
    assert "--wait-for-lock" in line

    mismatch = run("index", "--config", str(spec), "--model", "fashion-mnist")  # the flag overrides the spec
    assert mismatch.returncode == 1 and "was built with model 'tiny'" in _errors(mismatch)[0]

    _fake_lock(url, socket.gethostname(), _dead_pid())  # a nightly run killed mid-way
    started = time.monotonic()
    nightly = run("index", "--config", str(spec))
    seconds = time.monotonic() - started
    assert nightly.returncode == 0, nightly.stderr
    assert "nothing new" in nightly.stdout and "taking over the stale lock" in nightly.stderr
    assert seconds < 30, f"a no-op run took {seconds:.1f} s"
    assert read_lock(url) is None

    info = json.loads(run("info", "--index", url, "--json", "--runs", "10").stdout)
    assert info["lock"] is None
    runs = info["runs"]
    assert [r["status"] for r in runs] == ["ok", "refused-locked", "failed", "no-op"], runs
    assert (runs[0]["images_added"], runs[0]["errors"], runs[0]["version"]) == (300, 0, 1)
    assert runs[0]["corpus"] == str(jobs / "corpus.npy") and runs[0]["host"] == socket.gethostname()
    # the refused run: the holder's run id, host and pid, and the message the user got
    assert (runs[1]["holder"], runs[1]["holder_host"], runs[1]["holder_pid"]) == (holder, socket.gethostname(), os.getpid())
    assert (runs[1]["command"], runs[1]["corpus"], runs[1]["version"]) == ("index", str(jobs / "corpus.npy"), None)
    assert runs[1]["error"] == line.removeprefix("patchhash: error: ") and runs[1]["token"] != holder
    assert "ModelMismatchError" in runs[2]["error"] and runs[2]["version"] is None
    assert (runs[3]["images_added"], runs[3]["version"]) == (0, None)
    assert all(r["start"] <= r["end"] for r in runs)
    assert len(os.listdir(jobs / "idx" / "runs")) == 4
    text = run("info", "--index", url, "--runs", "1")
    assert "status: no-op" in text.stdout and "status: ok" not in text.stdout


def test_two_overlapping_index_jobs_one_waits_and_the_index_ends_as_after_one_run(tmp_path, make_index, tiny_model, fmnist_train):
    """Two real ``patchhash index`` runs started together on one new index: one builds it while
    the other waits for the lock, then finds nothing new; the result equals a single run's."""
    from snapshots import index_snapshot

    corpus, single = make_index(fmnist_train[:300], shard_size=100, partitions=2)  # the single run
    args = [*CLI, "index", "--corpus", corpus, "--model", tiny_model,
            "--shard-size", "100", "--partitions", "2"]
    url = str(tmp_path / "idx")
    procs = [subprocess.Popen([*args, "--index", url, "--wait-for-lock", "240"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err[-1500:] for _, err in outputs]
    stdout = sorted(out for out, _ in outputs)
    assert stdout[0].startswith("indexed 300 new images") and stdout[1].startswith("nothing new"), stdout
    assert any("waiting up to 240 s" in err for _, err in outputs)
    assert index_snapshot(url) == index_snapshot(single)
    assert sorted(r["status"] for r in json.loads(run("info", "--index", url, "--json").stdout)["runs"]) == ["no-op", "ok"]

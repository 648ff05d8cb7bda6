"""Faults on real components: killed workers and jobs, flaky and failing storage, S3, readers
during writes, concurrent jobs. docs/RELIABILITY.md lists what each test proves."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta

import fsspec
import numpy as np
import pytest
from corpus_helpers import moto_s3, png_bytes
from snapshots import index_snapshot, results_rows

from storage import StorageUnavailableError
from storage.manifest import read_manifest
from workflows.cluster import ClusterSettings, dask_client
from workflows.index import IndexSettings, index
from workflows.query import QuerySettings, query

pytestmark = pytest.mark.slow

SETTINGS = IndexSettings(shard_size=20, partitions=3)
QUERY = QuerySettings(k=5, block_size=25)
RESULT_COLUMNS = ("query_id", "rank", "image_id", "score")


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of 2 worker processes (real processes, so they can be killed)."""
    with dask_client(ClusterSettings(workers=2, threads_per_worker=1)) as client:
        yield client


@pytest.fixture(scope="module")
def data(tmp_path_factory, make_index, fmnist_train) -> dict[str, str]:
    """Corpus ``a`` (600 images, the one of ``base_index``), ``b`` (300 more) and 300 queries."""
    root = tmp_path_factory.mktemp("fault-data")
    files = {"b": fmnist_train[600:900], "queries": fmnist_train[5000:5300]}
    for name, images in files.items():
        np.save(root / f"{name}.npy", images[:, :, :, 0])
    corpus_a, _ = make_index(fmnist_train[:600], shard_size=SETTINGS.shard_size, partitions=SETTINGS.partitions)
    return {"a": corpus_a} | {name: str(root / f"{name}.npy") for name in files}


@pytest.fixture(scope="module")
def base_index(cluster, make_index, fmnist_train, data, tmp_path_factory) -> tuple[str, list[dict]]:
    """Version 1 over corpus ``a`` (read only: the tests copy it to change it), and its results
    for the ``queries`` file on the worker processes."""
    root = tmp_path_factory.mktemp("base")
    _, url = make_index(fmnist_train[:600], shard_size=SETTINGS.shard_size, partitions=SETTINGS.partitions)
    out = str(root / "results.parquet")
    query(url, data["queries"], out, QUERY, client=cluster)
    return url, _rows(out)


def _rows(url: str, storage_options=None) -> list[tuple]:
    return [tuple(row[c] for c in RESULT_COLUMNS) for row in results_rows(url, storage_options)]


def _kill_one_worker(client) -> int:
    pid = next(iter(client.run(os.getpid).values()))
    os.kill(pid, signal.SIGKILL)
    return pid


# --------------------------------------------------------------------------- killed processes


def test_worker_sigkilled_mid_index_completes_identical(cluster, tiny_model, data, base_index, tmp_path):
    url = str(tmp_path / "idx")
    done = tmp_path / "idx" / "_staging" / "v000001" / "done"
    n_shards = 600 // SETTINGS.shard_size
    seen_at_kill: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if done.exists() and len(os.listdir(done)) >= 3:
                seen_at_kill.append(len(os.listdir(done)))
                _kill_one_worker(cluster)
                return
            time.sleep(0.005)

    thread = threading.Thread(target=killer)
    thread.start()
    report = index(data["a"], url, tiny_model, SETTINGS, client=cluster)
    thread.join()
    assert seen_at_kill and seen_at_kill[0] < n_shards, "the worker should have died with shards still to encode"
    assert report.shards_done == n_shards
    assert index_snapshot(url) == index_snapshot(base_index[0])


def test_worker_lost_during_query_batch_gives_identical_results(cluster, data, base_index, tmp_path):
    url, expected = base_index
    killed: list[int] = []

    def on_block(block, topk) -> None:
        if not killed:
            killed.append(_kill_one_worker(cluster))

    out = str(tmp_path / "r.parquet")
    report = query(url, data["queries"], out, QUERY, client=cluster, on_block=on_block)
    assert killed and report.n_queries == 300
    assert _rows(out) == expected


def _worker_log_records() -> list[str]:
    """Run in a worker: the records of a failed task and of a heartbeat to a scheduler that is
    gone, and of a plain error, that reach the log's handlers."""
    import logging

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    log, keep = logging.getLogger("distributed.worker"), Keep()
    log.addHandler(keep)
    try:
        try:
            raise OSError("Stream is closed")
        except OSError:
            log.exception("Failed to communicate with scheduler during heartbeat.")
        log.error("Compute Failed\nKey: x\nException: ValueError('bad')")
        log.error("some other worker error")
    finally:
        log.removeHandler(keep)
    return seen


def test_worker_tracebacks_the_job_reports_itself_stay_off_stderr_also_after_a_restart(cluster):
    """A LocalCluster worker drops "Compute Failed" (the client reports the task's error in one
    line) and heartbeat failures (its scheduler, in the job's process, is gone only while a job
    closes the cluster: seen as a traceback after a failed job's error line on CI), also in a
    worker the nanny restarted after a kill; other records pass."""
    killed = _kill_one_worker(cluster)
    deadline = time.monotonic() + 120
    while True:
        pids = cluster.run(os.getpid, on_error="ignore")  # the killed one may still be listed
        if len(pids) == 2 and killed not in pids.values():
            break
        assert time.monotonic() < deadline, "the killed worker was not restarted"
        time.sleep(0.5)
    assert list(cluster.run(_worker_log_records).values()) == [["some other worker error"]] * 2


def _cli_index(corpus: str, url: str, model: str | None, failpoint: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATCHHASH_FAILPOINTS": failpoint or ""}
    args = [sys.executable, "-m", "workflows.cli", "index", "--corpus", corpus, "--index", url]
    args += ["--model", model] if model else []
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


def test_index_job_sigkilled_at_each_point_resumes_and_old_version_stays_readable(cluster, tiny_model, data, base_index, tmp_path):
    """Append ``b`` to a copy of version 1, killing the job (SIGKILL) after encoding, after one
    bucket partition, and just before the commit; a final run resumes and ends identical."""
    url = str(tmp_path / "idx")
    shutil.copytree(base_index[0], url)
    reference = str(tmp_path / "reference")
    shutil.copytree(base_index[0], reference)
    index(data["b"], reference, None, client=cluster)
    v1 = index_snapshot(url)
    for point in ("index-encoded", "index-partition-built", "index-before-commit"):
        run = _cli_index(data["b"], url, None, point)
        assert run.returncode == -signal.SIGKILL, (point, run.returncode, run.stderr[-2000:])
        assert read_manifest(url).version == 1, point
        assert index_snapshot(url) == v1, point  # the committed version is untouched...
        out = str(tmp_path / f"during-{point}.parquet")
        query(url, data["queries"], out, QUERY, client=cluster)
        assert _rows(out) == base_index[1], point  # ...and answers queries as before
    final = _cli_index(data["b"], url, None)
    assert final.returncode == 0, final.stderr
    assert "resumed an interrupted run: 15 shard(s) and 4 bucket partition(s) were already done" in final.stdout
    assert "resuming" in final.stderr
    assert read_manifest(url).version == 2
    assert index_snapshot(url) == index_snapshot(reference)
    assert not os.path.exists(os.path.join(url, "_staging", "v000002")), "the staging area is removed after the commit"


# --------------------------------------------------------------------------- flaky and failing storage


@pytest.fixture()
def flaky(monkeypatch):
    from faulty_fs import install

    monkeypatch.setenv("PATCHHASH_STORAGE_BACKOFF", "0.001")
    fs_class = install()
    fs_class.reset()
    yield fs_class
    fs_class.reset()
    fsspec.filesystem("flaky").rm("/", recursive=True)


def _write_png_folder(url: str, images: np.ndarray) -> None:
    """Write the images, dated a minute ago: a file written within 2 s of an index run is
    fingerprinted by content, one written earlier by size and time (storage/fingerprint.py), so
    two runs on either side of that moment would record different fingerprints."""
    fs, path = fsspec.url_to_fs(url)
    for i, image in enumerate(images):
        fs.pipe_file(f"{path}/{i:04d}.png", png_bytes(image[:, :, 0]))
        fs.store[f"{path}/{i:04d}.png"].created -= timedelta(minutes=1)


def test_transient_storage_errors_are_retried_and_change_nothing(client, flaky, tiny_model, fmnist_train, data, tmp_path):
    """Every storage read and write (image files, codes, tables, bucket maps, manifests) fails
    at random 5% of the time; the index and the results equal those of a clean run."""
    _write_png_folder("flaky://corpus", fmnist_train[:200])
    index("flaky://corpus", "flaky://clean", tiny_model, SETTINGS, client=client)
    query("flaky://clean", data["queries"], "flaky://clean.parquet", QUERY, client=client)

    flaky.reset(rate=0.05, seed=3)
    index("flaky://corpus", "flaky://idx", tiny_model, SETTINGS, client=client)
    query("flaky://idx", data["queries"], "flaky://idx.parquet", QUERY, client=client)
    injected = flaky.injected
    flaky.reset()
    assert injected >= 10, "the test should have injected faults"
    assert index_snapshot("flaky://idx") == index_snapshot("flaky://clean")
    assert read_manifest("flaky://idx").n_errors == 0, "a transient read error must not mark an image unreadable"
    assert _rows("flaky://idx.parquet") == _rows("flaky://clean.parquet")


def test_lasting_storage_failure_fails_the_job_clearly_and_commits_nothing(client, flaky, tiny_model, fmnist_train, data):
    index(data["a"], "flaky://idx", tiny_model, SETTINGS, client=client)
    before = index_snapshot("flaky://idx")
    flaky.reset(broken=("/buckets/",))
    with pytest.raises(StorageUnavailableError, match=r"flaky://+idx/buckets/.*storage still failing after 6 attempts.*rerun the same command to resume"):
        index(data["b"], "flaky://idx", None, client=client)
    flaky.reset()
    assert read_manifest("flaky://idx").version == 1
    assert index_snapshot("flaky://idx") == before
    report = index(data["b"], "flaky://idx", None, client=client)
    assert report.version == 2 and report.shards_skipped == 300 // SETTINGS.shard_size and report.shards_done == 0


def test_s3_round_trip_through_worker_processes(cluster, tiny_model, data, base_index):
    """index -> query on an ``s3://`` index served by moto on 127.0.0.1, through s3fs, with the
    corpus, the index and the results all on S3 and 2 worker processes doing the work."""
    with moto_s3() as options:
        fs = fsspec.filesystem("s3", **options)
        bucket = f"faults-{uuid.uuid4().hex[:12]}"  # moto's state is per process, shared by every server
        fs.mkdir(bucket)
        fs.put_file(data["a"], f"{bucket}/corpus/a.npy")
        fs.put_file(data["queries"], f"{bucket}/queries/q.npy")
        root = f"s3://{bucket}"
        report = index(f"{root}/corpus/a.npy", f"{root}/idx", tiny_model, SETTINGS, client=cluster, storage_options=options)
        assert report.version == 1 and report.n_new == 600
        query(f"{root}/idx", f"{root}/queries/q.npy", f"{root}/results.parquet", QUERY, client=cluster, storage_options=options)
        local = index_snapshot(base_index[0])
        remote = index_snapshot(f"{root}/idx", options)
        assert remote["codes"] == local["codes"] and remote["buckets"] == local["buckets"]
        assert _rows(f"{root}/results.parquet", options) == base_index[1]
        rows = results_rows(f"{root}/results.parquet", options)
        assert rows[0]["image_uri"].startswith(f"{root}/corpus/a.npy#")


# --------------------------------------------------------------------------- readers during writes, load


def test_queries_during_an_append_see_one_whole_version(cluster, data, base_index, tmp_path):
    url = str(tmp_path / "idx")
    shutil.copytree(base_index[0], url)
    appended = str(tmp_path / "v2")
    shutil.copytree(base_index[0], appended)
    index(data["b"], appended, None, client=cluster)
    expected = {1: base_index[1]}
    query(appended, data["queries"], str(tmp_path / "v2.parquet"), QUERY, client=cluster)
    expected[2] = _rows(str(tmp_path / "v2.parquet"))
    assert expected[1] != expected[2], "the append should change some results"

    finished = threading.Event()
    seen: list[int] = []
    spans: list[tuple[float, float]] = []
    failures: list[BaseException] = []

    def reader() -> None:
        n = 0
        while True:
            last = finished.is_set()
            out = str(tmp_path / f"loop-{n}.parquet")
            try:
                began = time.monotonic()
                report = query(url, data["queries"], out, QuerySettings(k=5, block_size=100), client=cluster)
                spans.append((began, time.monotonic()))
                assert _rows(out) == expected[report.version], f"query {n} mixed versions"
                seen.append(report.version)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                failures.append(exc)
                return
            n += 1
            if last:
                return

    thread = threading.Thread(target=reader)
    thread.start()
    while not seen and not failures:
        time.sleep(0.05)
    append_began = time.monotonic()
    index(data["b"], url, None, client=cluster)
    append_ended = time.monotonic()
    finished.set()
    thread.join()
    assert not failures, failures
    assert seen[0] == 1 and seen[-1] == 2 and sorted(seen) == seen
    assert any(began < append_ended and ended > append_began for began, ended in spans), "no query ran during the append"


def test_twenty_query_jobs_at_once_equal_a_serial_run(cluster, data, base_index, tmp_path):
    """20 ``patchhash query`` processes started together against one index, on one shared cluster."""
    url, expected = base_index
    scheduler = cluster.scheduler.address
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "workflows.cli", "query", "--index", url, "--queries", data["queries"],
             "--out", str(tmp_path / f"r{i}.parquet"), "--k", "5", "--block-size", "25", "--scheduler", scheduler],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for i in range(20)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    for i in range(20):
        assert _rows(str(tmp_path / f"r{i}.parquet")) == expected, i

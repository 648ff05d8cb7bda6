"""Start-up of small jobs (issue 18): they run on threads of the client's process, with the same
results; explicit cluster options (``--workers``, ``--scheduler``, TLS) are obeyed as they are."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
from snapshots import index_snapshot, results_rows
from typer.testing import CliRunner

from storage import ConfigError
from workflows.cluster import IN_PROCESS_MAX, ClusterSettings, runs_in_process

SMALL = "running on threads of this process"


def test_only_small_jobs_with_no_cluster_options_run_in_process():
    import dask.config

    default = ClusterSettings()
    assert runs_in_process(default, 10) and runs_in_process(default, 0) and runs_in_process(default, IN_PROCESS_MAX)
    assert not runs_in_process(default, IN_PROCESS_MAX + 1)
    assert not runs_in_process(default, None)  # a job that does not tell its size: as before
    assert runs_in_process(ClusterSettings(in_process_max=50), 50) and not runs_in_process(ClusterSettings(in_process_max=50), 51)
    assert not runs_in_process(ClusterSettings(in_process_max=0), 0)  # 0: never
    # explicit options give exactly what they say
    assert not runs_in_process(ClusterSettings(workers=2), 10)
    assert not runs_in_process(ClusterSettings(workers=1), 10)
    assert not runs_in_process(ClusterSettings(scheduler="tcp://127.0.0.1:8786"), 10)
    assert not runs_in_process(ClusterSettings(processes=False), 10)  # in-process already, as configured
    with dask.config.set({"distributed.comm.tls.ca-file": "ca.pem", "distributed.comm.tls.client.cert": "c.pem"}):
        assert not runs_in_process(default, 10)  # a TLS LocalCluster from Dask's own config
    with pytest.raises(ConfigError, match="--in-process-max must be >= 0"):
        ClusterSettings(in_process_max=-1)


class _Stop(Exception):
    pass


@pytest.fixture
def query_cluster(monkeypatch):
    """The ``ClusterSettings`` each ``patchhash query`` run through :class:`CliRunner` would run with."""
    import workflows.query

    seen: list[ClusterSettings] = []

    def fake_query(index, queries, out, settings, cluster, *args, **kwargs):
        seen.append(cluster)
        raise _Stop

    monkeypatch.setattr(workflows.query, "query", fake_query)
    monkeypatch.delenv("PATCHHASH_IN_PROCESS_MAX", raising=False)
    monkeypatch.delenv("PATCHHASH_WORKERS", raising=False)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))  # the command's setup_logging stays in this test
    monkeypatch.setattr(root, "level", root.level)

    def run(*args: str, env: dict | None = None) -> ClusterSettings:
        from workflows.cli import app

        result = CliRunner().invoke(app, ["query", *args], env=env)
        assert isinstance(result.exception, _Stop), result.output
        return seen[-1]

    return run


def test_threshold_comes_from_flag_environment_and_job_spec(query_cluster, tmp_path):
    base = ("--index", "i", "--queries", "q.npy", "--out", "o.parquet")
    assert query_cluster(*base).in_process_max == IN_PROCESS_MAX
    assert query_cluster(*base, "--in-process-max", "5").in_process_max == 5
    assert query_cluster(*base, env={"PATCHHASH_IN_PROCESS_MAX": "0"}).in_process_max == 0
    spec = tmp_path / "job.yaml"
    spec.write_text("command: query\nindex: i\nqueries: q.npy\nout: o.parquet\nin-process-max: 7\n")
    assert query_cluster("--config", str(spec)).in_process_max == 7
    assert query_cluster("--config", str(spec), "--in-process-max", "3").in_process_max == 3
    given = query_cluster("--config", str(spec), "--workers", "2")
    assert given.workers == 2 and not runs_in_process(given, 1)


def test_only_jobs_that_tell_their_size_take_the_option():
    from workflows.jobspec import COMMANDS

    assert all("in_process_max" in COMMANDS[c] for c in ("index", "query"))
    assert not any("in_process_max" in COMMANDS[c] for c in ("evaluate", "bench"))  # they measure their cluster


def test_small_index_job_runs_in_process_and_builds_the_same_index(make_index, tiny_model, fmnist_train, tmp_path, caplog):
    from workflows.index import IndexSettings, index

    images = fmnist_train[:300]
    corpus, built = make_index(images, shard_size=100, partitions=2)
    url = str(tmp_path / "index")
    with caplog.at_level(logging.INFO, logger="workflows.cluster"):
        index(corpus, url, tiny_model, IndexSettings(shard_size=100, partitions=2))  # ClusterSettings(): 300 images
    assert SMALL in caplog.text and "1 in-process worker(s)" in caplog.text and "dashboard" in caplog.text
    assert index_snapshot(url) == index_snapshot(built)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workflows.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_small_query_in_process_equals_two_worker_processes(make_index, fmnist_train, tmp_path):
    """The same query command, once a small job (in-process) and once with ``--workers 2``,
    which still starts a LocalCluster of 2 worker processes: the same results."""
    _, url = make_index(fmnist_train[:300], shard_size=100, partitions=2)
    queries = tmp_path / "queries.npy"
    np.save(queries, np.concatenate([fmnist_train[3000:3010, :, :, 0], fmnist_train[7:9, :, :, 0]]))
    base = ("query", "--index", url, "--queries", str(queries), "--k", "5")
    small = _cli(*base, "--out", str(tmp_path / "small.parquet"))
    assert small.returncode == 0, small.stderr
    assert SMALL in small.stderr and "LocalCluster: 1 in-process worker(s)" in small.stderr and "dashboard: " in small.stderr
    procs = _cli(*base, "--out", str(tmp_path / "procs.parquet"), "--workers", "2")
    assert procs.returncode == 0, procs.stderr
    assert SMALL not in procs.stderr and "LocalCluster: 2 worker processes x 1 thread(s); dashboard: " in procs.stderr
    rows = results_rows(str(tmp_path / "small.parquet"))
    assert len(rows) == 12 * 5 and rows == results_rows(str(tmp_path / "procs.parquet"))


_NO_TENSORFLOW = """
import sys
from typer.testing import CliRunner
from workflows.cli import app

index, uris = sys.argv[1:]
for args in (["info", "--index", index], ["gc", "--index", index, "--dry-run"], ["delete", "--index", index, "--uris", uris],
             ["info", "--model", "fashion-mnist"]):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (args, result.output, result.exception)
print(sorted(name for name in ("tensorflow", "keras", "distributed") if name in sys.modules))
"""


def test_info_gc_and_delete_import_neither_tensorflow_nor_distributed(make_index, fmnist_train, tmp_path):
    import shutil

    corpus, built = make_index(fmnist_train[:300], shard_size=100, partitions=2)
    url = str(tmp_path / "index")
    shutil.copytree(built, url)
    uris = tmp_path / "takedown.txt"
    uris.write_text(f"{corpus}#3\n")
    done = subprocess.run([sys.executable, "-c", _NO_TENSORFLOW, url, str(uris)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"

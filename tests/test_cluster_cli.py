"""patchhash on a real Dask cluster started with the ``dask`` CLI (scheduler + 2 worker processes)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from dask_cli import ENV, dask_cli_cluster
from snapshots import index_snapshot, results_rows

from workflows.cluster import ClusterSettings, dask_client
from workflows.query import QuerySettings, query

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory) -> str:
    with dask_cli_cluster(tmp_path_factory.mktemp("dask-cluster"), 2) as address:
        with dask_client(ClusterSettings(scheduler=address)) as client:
            client.wait_for_workers(2, timeout=90)
        yield address


def _cli(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workflows.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**ENV, **(env or {})}, cwd=cwd)


def test_index_and_query_on_a_dask_cli_cluster_equal_a_local_cluster_run(scheduler, client, make_index, tiny_model, fmnist_train,
                                                                          tmp_path):
    """The scheduler comes from ``PATCHHASH_SCHEDULER`` for the index job and from a job spec for
    the query job; codes, bucket maps, image tables and results equal a LocalCluster run."""
    corpus, local = make_index(fmnist_train[:400], shard_size=100, partitions=2)  # the LocalCluster run's index
    queries = tmp_path / "queries.npy"
    np.save(queries, fmnist_train[2000:2060, :, :, 0])
    url = tmp_path / "index"
    indexed = _cli("index", "--corpus", str(corpus), "--index", str(url), "--model", tiny_model,
                   "--shard-size", "100", "--partitions", "2", env={"PATCHHASH_SCHEDULER": scheduler})
    assert indexed.returncode == 0, indexed.stderr
    assert f"connected to Dask scheduler {scheduler}" in indexed.stderr

    spec = tmp_path / "jobs" / "query.yaml"
    spec.parent.mkdir()
    spec.write_text(f"command: query\nindex: ../index\nqueries: ../queries.npy\nout: ../results.parquet\nk: 5\nscheduler: {scheduler}\n")
    answered = _cli("query", "--config", str(spec))
    assert answered.returncode == 0, answered.stderr
    assert f"connected to Dask scheduler {scheduler}" in answered.stderr

    query(local, str(queries), str(tmp_path / "local.parquet"), QuerySettings(k=5), client=client)
    assert index_snapshot(str(url)) == index_snapshot(local)
    assert results_rows(str(tmp_path / "results.parquet")) == results_rows(str(tmp_path / "local.parquet"))

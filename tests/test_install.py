"""patchhash as ``dask worker`` processes import it (issue 17).

Dask puts each worker's local directory first on ``sys.path``, and spilling makes a
``storage/`` folder there: a namespace package to Python, which an import hook (setuptools'
finder-based editable install) loses to, while our regular package on ``sys.path`` (a plain or
an editable install, see pyproject.toml) wins.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dask_cli import dask_cli_cluster
from distributed import Client

import storage
from workflows.cluster import ClusterSettings, dask_client

pytestmark = pytest.mark.slow


def _wait_for_a_worker(address: str) -> None:
    """Until a worker has joined."""
    with Client(address, timeout=30) as client:
        client.wait_for_workers(1, timeout=90)


def test_a_dask_worker_imports_our_storage_package_not_its_spill_folder(tmp_path):
    # spilling (a memory limit) gives the worker's own directory, first on its sys.path, a storage/
    # folder; two more in --local-directory and dask-scratch-space/ (the nanny's, on that path too)
    (tmp_path / "storage").mkdir()
    (tmp_path / "dask-scratch-space" / "storage").mkdir(parents=True)

    def look():
        import os
        import sys

        import storage

        folders = [p for p in sys.path if os.path.isdir(os.path.join(p, "storage"))
                   and not os.path.isfile(os.path.join(p, "storage", "__init__.py"))]
        return storage.__file__, folders

    with dask_cli_cluster(tmp_path, 1, memory_limit="2GB") as address:
        _wait_for_a_worker(address)
        with dask_client(ClusterSettings(scheduler=address)) as client:
            where, folders = client.submit(look, pure=False).result(timeout=60)
    assert any(Path(folder).name.startswith("worker-") for folder in folders), \
        f"the worker's own directory, with its spill folder, is on its sys.path: {folders}"
    assert where is not None and Path(where) == Path(storage.__file__), "the worker imports the package the client does"

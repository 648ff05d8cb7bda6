"""patchhash as ``dask worker`` processes import it (issue 17).

Dask puts each worker's local directory first on ``sys.path``, and spilling makes a
``storage/`` folder there: a namespace package to Python, which an import hook (setuptools'
finder-based editable install) loses to, while our regular package on ``sys.path`` (a plain or
an editable install, see pyproject.toml) wins. And a worker that cannot import patchhash is
reported when a job connects, instead of the job waiting for it forever.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dask_cli import ENV, dask_cli_cluster, shadowing_site
from distributed import Client

import storage
from storage import ConfigError
from workflows.cluster import ClusterSettings, dask_client

pytestmark = pytest.mark.slow


def _wait_for_a_worker(address: str) -> None:
    """Until a worker has joined (the job's check covers the workers there when it connects)."""
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
        with dask_client(ClusterSettings(scheduler=address)) as client:  # checks the worker
            where, folders = client.submit(look, pure=False).result(timeout=60)
    assert any(Path(folder).name.startswith("worker-") for folder in folders), \
        f"the worker's own directory, with its spill folder, is on its sys.path: {folders}"
    assert where is not None and Path(where) == Path(storage.__file__), "the worker imports the package the client does"


_NOT_INSTALLED = '''\
import sys


class NotInstalled:
    """patchhash is not installed here."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] in {"pipeline", "workflows", "storage"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled)
'''


def test_a_worker_that_cannot_import_patchhash_is_reported_not_waited_on(tmp_path):
    hidden = tmp_path / "site"
    hidden.mkdir()
    (hidden / "sitecustomize.py").write_text(_NOT_INSTALLED)
    np.save(tmp_path / "corpus.npy", np.zeros((4, 28, 28), np.uint8))
    with dask_cli_cluster(tmp_path, 1, worker_env={"PYTHONPATH": str(hidden)}) as address:
        _wait_for_a_worker(address)
        with pytest.raises(ConfigError, match=r"cannot import patchhash \(ModuleNotFoundError: No module named 'storage'\)"):
            with dask_client(ClusterSettings(scheduler=address)):
                pass
        # the job says so in one line and ends (a task sent to that worker would never come back)
        done = subprocess.run([sys.executable, "-m", "workflows.cli", "index", "--corpus", str(tmp_path / "corpus.npy"),
                               "--index", str(tmp_path / "index"), "--scheduler", address],
                              capture_output=True, text=True, timeout=180, env=ENV, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("patchhash: error: Dask worker tcp://127.0.0.1:") and "cannot import patchhash" in last, \
        done.stderr
    assert "Traceback" not in done.stderr


def test_a_worker_whose_storage_is_a_spill_folder_is_reported(tmp_path):
    """What a worker sees where an install comes after its spill folder: ``storage`` is that
    folder, a namespace package."""
    site = shadowing_site(tmp_path)
    with dask_cli_cluster(tmp_path, 1, worker_env={"PYTHONPATH": str(site)}) as address:
        _wait_for_a_worker(address)
        with pytest.raises(ConfigError, match=r"'storage' is the folder .*/site/storage, not patchhash's package"):
            with dask_client(ClusterSettings(scheduler=address)):
                pass

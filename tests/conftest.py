"""Shared fixtures: real Fashion-MNIST files, a tiny trained model, one Dask cluster, indexes
built once, quiet TensorFlow."""

from __future__ import annotations

import atexit
import gzip
import hashlib
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Worker-local copies of partitions (workflows/partition_files.py) go to a directory of this
# run, inherited by every worker process and command the tests start.
if "PATCHHASH_LOCAL_DIR" not in os.environ:
    os.environ["PATCHHASH_LOCAL_DIR"] = tempfile.mkdtemp(prefix="patchhash-test-partitions-")
    atexit.register(shutil.rmtree, os.environ["PATCHHASH_LOCAL_DIR"], True)

import numpy as np
import pytest
from corpus_helpers import FASHION_TRAIN
from smoke_runs import SmokeRuns

SMOKE_RUNS = pytest.StashKey[SmokeRuns]()


# `make test` runs the modules on 2 worker processes (pytest -n 2 --dist loadfile
# --no-loadscope-reorder), each module whole on one of them, handed out in the order below: the
# longest first, so that the two finish together rather than one waiting for a long module
# started last. Seconds from `pytest --durations=0` on 2 cores, 2026-12-06; the order only
# changes how long the suite takes, never what it checks. Other modules follow in file order.
LONGEST_MODULES = (
    "test_benchmarks.py",  # 85 s: the benchmark smoke runs
    "test_seed_protocols.py",  # 35-45: the seeds table's smoke run, numba's first compile of the radius kernel;
    # early, so that the short modules fill the end of both workers
    "test_mirror_s3.py",  # 83
    "test_faults.py",  # 71
    "test_bad_input.py",  # 68
    "test_jobs_shipped.py",  # 59
    "test_preflight.py",  # 50
    "test_demo.py",  # 46
    "test_security.py",  # 42
    "test_maintenance.py",  # 35
    "test_cli.py",  # 31
    "test_bench_photos.py",  # 29
    "test_sync.py",  # 28
    "test_model.py",  # 28
    "test_index.py",  # 25
    "test_query.py",  # 23
    "test_lock.py",  # 23
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order otherwise


def pytest_sessionfinish(session):
    runs = session.config.stash.get(SMOKE_RUNS, None)
    if runs is not None:
        runs.close()


@pytest.fixture
def smoke(request) -> tuple[dict, str]:
    """This test's benchmark smoke run (``smoke_runs.smoke_run``), once it has succeeded: the
    figures it wrote (``--out-json``) and its stdout."""
    import json

    if SMOKE_RUNS not in request.config.stash:
        request.config.stash[SMOKE_RUNS] = SmokeRuns()
    result, run_dir = request.config.stash[SMOKE_RUNS].result(request.node)
    assert result.returncode == 0, result.stderr
    script = request.node.get_closest_marker("benchmark_smoke").args[0]
    return json.loads((run_dir / f"{script}.json").read_text()), result.stdout


def _require_fmnist() -> None:
    if not FASHION_TRAIN.exists():
        pytest.fail(
            f"{FASHION_TRAIN} is missing: install Debian's dataset-fashion-mnist "
            "(apt-get install dataset-fashion-mnist); .ci/run does this."
        )


@pytest.fixture(scope="session")
def fmnist_train() -> np.ndarray:
    """The 60k real Fashion-MNIST training images, uint8 [60000, 28, 28, 1]."""
    _require_fmnist()
    with gzip.open(FASHION_TRAIN) as f:
        return np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, fmnist_train) -> str:
    """A small model trained for one epoch on 512 real images (seconds on 2 cores)."""
    from pipeline.model import ModelConfig
    from pipeline.train import TrainSettings, save_model, train_autoencoder

    config = ModelConfig((28, 28, 1), bits=16, patch=8, stride=4, filters=16, widths=(16,))
    result = train_autoencoder(fmnist_train[:512], config, TrainSettings(epochs=1, batch_size=64, seed=1))
    out = str(tmp_path_factory.mktemp("models") / "tiny")
    save_model(out, "tiny", config, result, {"corpus": "fashion-mnist[:512]"})
    return out


@pytest.fixture(scope="session")
def client():
    """One in-process cluster (2 workers x 1 thread) shared by every test that only needs one.

    Tests that kill, restart or reconfigure workers start their own cluster instead."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as c:
        yield c


@pytest.fixture(scope="session")
def tcp_scheduler() -> str:
    """The address of a scheduler that CLI subprocesses join (``--scheduler``), with one
    in-process worker (1 thread): their tasks run in this process, where the model is loaded
    once, instead of in worker processes each command would start (and import TensorFlow in)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address=None) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="session")
def make_index(request, tmp_path_factory, client):
    """Save images as a corpus and index them: ``make_index(images, *, shard_size=100,
    partitions=2, model=None) -> (corpus_url, index_url)``.

    ``images``: uint8 [n, h, w] (or [n, h, w, 1]), saved as ``corpus.npy``; ``model``: the tiny
    model (trained only if needed) unless given. The index is built with :func:`workflows.index.index` on the shared
    in-process cluster (its content does not depend on the cluster: tests/test_index.py checks).

    Builds are cached for the session by their arguments (the images by content), so tests
    that ask for the same index share one build: treat it as read-only, and ``shutil.copytree``
    it first to append to it, break it or otherwise write to it.
    """
    from workflows.index import IndexSettings, index

    built: dict[tuple, tuple[str, str]] = {}

    def make(images: np.ndarray, *, shard_size: int = 100, partitions: int = 2, model: str | None = None) -> tuple[str, str]:
        images = np.ascontiguousarray(images[..., 0] if images.ndim == 4 and images.shape[-1] == 1 else images)
        key = (hashlib.sha256(images.data).hexdigest(), images.shape, images.dtype.str, shard_size, partitions, model)
        if key not in built:
            root = tmp_path_factory.mktemp(f"index-{len(images)}")
            corpus, url = root / "corpus.npy", str(root / "index")
            np.save(corpus, images)
            model_url = model or request.getfixturevalue("tiny_model")
            index(str(corpus), url, model_url, IndexSettings(shard_size=shard_size, partitions=partitions), client=client)
            built[key] = (str(corpus), url)
        return built[key]

    return make

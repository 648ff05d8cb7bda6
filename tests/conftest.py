"""Shared fixtures: real Fashion-MNIST files, a tiny trained model, quiet TensorFlow."""

from __future__ import annotations

import gzip
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from corpus_helpers import FASHION_TRAIN


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


@pytest.fixture(scope="module")
def client():
    """One in-process cluster (2 workers x 1 thread) shared by the tests of a module."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as c:
        yield c

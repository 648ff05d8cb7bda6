"""``patchhash demo``: the embedded default end to end on the real Fashion-MNIST data.

Indexes the 60k training images with the shipped ``fashion-mnist`` model, answers the 10k
test images as one batch query file, writes the results and an HTML report, and prints
precision@10 by label with the timings. Rerunning reuses the index (a no-op append).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from storage import CorpusError, read_labels
from workflows.cluster import ClusterSettings, dask_client
from workflows.index import index
from workflows.query import QuerySettings, query

__all__ = ["FASHION_MNIST_DIR", "CLASS_NAMES", "DemoReport", "demo"]

log = logging.getLogger(__name__)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@dataclass
class DemoReport:
    out: str
    index_seconds: float
    query_seconds: float
    n_index: int
    n_queries: int
    precision_at_10: float
    ms_per_query: float
    results: str
    report: str


def _fmnist(name: str) -> str:
    path = os.path.join(FASHION_MNIST_DIR, name)
    if not os.path.exists(path):
        raise CorpusError(
            f"{path} is missing: the demo uses Debian's Fashion-MNIST package. "
            "Install it with `sudo apt-get install dataset-fashion-mnist` and rerun."
        )
    return path


def demo(out: str = "patchhash-demo", cluster: ClusterSettings = ClusterSettings(), mode: str = "default", k: int = 10) -> DemoReport:
    """Run the demo into folder ``out``; returns its figures."""
    from pipeline.metrics import precision_at_k

    train, test = _fmnist("train-images-idx3-ubyte.gz"), _fmnist("t10k-images-idx3-ubyte.gz")
    train_labels = read_labels(_fmnist("train-labels-idx1-ubyte.gz"))
    test_labels = read_labels(_fmnist("t10k-labels-idx1-ubyte.gz"))
    os.makedirs(out, exist_ok=True)
    index_url = os.path.join(out, "fashion-mnist.index")
    results, report = os.path.join(out, "results.parquet"), os.path.join(out, "report.html")
    ids = np.full((len(test_labels), k), -1, np.int64)

    def keep(block, topk) -> None:  # the answers as they are written, for precision@10
        ids[block.rows] = topk.ids

    with dask_client(cluster) as client:
        started = time.perf_counter()
        built = index(train, index_url, "fashion-mnist", client=client)
        index_seconds = time.perf_counter() - started
        answered = query(
            index_url, test, results, QuerySettings(k=k, mode=mode), client=client, on_block=keep, report=report,
            report_labels=(np.array(CLASS_NAMES)[train_labels], np.array(CLASS_NAMES)[test_labels]),
        )
    p10 = precision_at_k(ids, train_labels, test_labels, min(10, k))
    return DemoReport(out, index_seconds, answered.seconds, built.n_images, answered.n_queries, p10, answered.ms_per_query, results, report)

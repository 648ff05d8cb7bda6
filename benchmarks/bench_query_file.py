"""Memory of a batch query job does not grow with the query file: peak RSS at two file sizes.

Builds (or reuses) an index, writes query files of each size (Fashion-MNIST test images
repeated, as ``.npy``), and answers each in its own process on a fresh 2-worker
LocalCluster into a partitioned Parquet dataset. Prints, per size, queries/s and the peak
RSS (``VmHWM``, see :func:`workflows.bench.peak_rss_mb`) of the client process and of the
largest worker, then the ratios of the largest size to the smallest (1.0 = memory bounded,
whatever the length of the file)::

    python benchmarks/bench_query_file.py [--index DIR] [--rows 20000,200000] [--mode default]
    python benchmarks/bench_query_file.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import TEST_IMAGES, TRAIN_IMAGES, add_smoke_and_out_json, parser, write_json


def write_queries(path: str, rows: int, source: str) -> str:
    """``rows`` query images (``source``'s images repeated) as ``.npy``, written in slices.

    Written through a plain file, not a memory map: the pages of a memory map would count in
    this process's resident memory, and the ``--one`` child forked from it would report them.
    """
    from storage import open_corpus

    corpus = open_corpus(source)
    images = corpus.read(corpus.native_spec(), 0, min(len(corpus), 10000)).pixels[..., 0]
    with open(path, "wb") as file:
        np.lib.format.write_array_header_1_0(file, {"descr": "|u1", "fortran_order": False, "shape": (rows, *images.shape[1:])})
        for start in range(0, rows, len(images)):
            file.write(images[: min(rows, start + len(images)) - start].tobytes())
    return path


def answer(index_url: str, queries: str, out: str, mode: str, block_size: int, workers: int = 2) -> dict:
    """One query job into a dataset (run in a fresh process by :func:`main`)."""
    from workflows.bench import peak_rss_mb
    from workflows.cluster import ClusterSettings, dask_client
    from workflows.query import QuerySettings, query

    with dask_client(ClusterSettings(workers=workers)) as client:
        started = time.perf_counter()
        report = query(index_url, queries, out, QuerySettings(mode=mode, block_size=block_size), client=client)
        seconds = time.perf_counter() - started
        workers = client.run(peak_rss_mb)
    return {"rows": report.n_queries, "seconds": seconds, "queries_per_s": report.n_queries / seconds,
            "client_peak_rss_mb": peak_rss_mb(), "worker_peak_rss_mb": max(workers.values())}


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--index", help="index directory: reused if it exists, built there otherwise (default: temporary)")
    ap.add_argument("--corpus", default=TRAIN_IMAGES)
    ap.add_argument("--query-images", default=TEST_IMAGES)
    ap.add_argument("--images", type=int, default=10000, help="corpus images to index")
    ap.add_argument("--rows", default="20000,200000", help="query file sizes, comma-separated")
    ap.add_argument("--mode", default="default")
    ap.add_argument("--block-size", type=int, default=1000)
    ap.add_argument("--model", default="fashion-mnist")
    ap.add_argument("--workers", type=int, default=2, help="worker processes of each job")
    add_smoke_and_out_json(ap, "tiny sizes and 1 worker, to keep the script working (CI)", "write the figures as JSON here")
    ap.add_argument("--one", nargs=3, metavar=("INDEX", "QUERIES", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(answer(*args.one, args.mode, args.block_size, args.workers)))
        return {}
    if args.smoke:
        args.images, args.rows, args.block_size, args.workers = 300, "200,600", 100, 1

    from bench_query import subset

    from workflows.cluster import ClusterSettings
    from workflows.index import IndexSettings, index

    work = tempfile.mkdtemp(prefix="bench-query-file-")
    index_url = args.index or f"{work}/index"
    if not Path(index_url, "manifest.json").exists():
        index(subset(args.corpus, args.images, f"{work}/corpus.npy"), index_url, args.model, IndexSettings(),
              ClusterSettings(workers=args.workers))
    results = []
    for rows in sorted(int(r) for r in args.rows.split(",")):
        queries = write_queries(f"{work}/queries-{rows}.npy", rows, args.query_images)
        run = subprocess.run([sys.executable, __file__, "--one", index_url, queries, f"{work}/results-{rows}/",
                              "--mode", args.mode, "--block-size", str(args.block_size), "--workers", str(args.workers)],
                             capture_output=True, text=True, check=True)
        figures = json.loads(run.stdout.strip().splitlines()[-1])
        results.append(figures)
        os.unlink(queries)
        print(f"{rows:>9,} queries: {figures['queries_per_s']:7.0f} q/s, client peak RSS {figures['client_peak_rss_mb']:6.0f} MB, "
              f"largest worker peak RSS {figures['worker_peak_rss_mb']:6.0f} MB", flush=True)
    small, large = results[0], results[-1]
    summary = {
        "mode": args.mode, "images": args.images, "block_size": args.block_size, "runs": results,
        "rows_ratio": large["rows"] / small["rows"],
        "client_rss_ratio": large["client_peak_rss_mb"] / small["client_peak_rss_mb"],
        "worker_rss_ratio": large["worker_peak_rss_mb"] / small["worker_peak_rss_mb"],
    }
    print(f"{summary['rows_ratio']:.0f}x the queries: client peak RSS x{summary['client_rss_ratio']:.2f}, "
          f"worker peak RSS x{summary['worker_rss_ratio']:.2f}")
    write_json(args.out_json, summary)
    return summary


if __name__ == "__main__":
    main()

"""Query throughput of each mode, and its parallel efficiency from 1 to 2 worker processes.

Builds (or reuses) an index of the Fashion-MNIST train images, then, for each cluster size,
runs :func:`workflows.bench.bench` (what ``patchhash bench`` runs) on a fresh LocalCluster:
every worker loads and runs the model, a warm-up block (workers load the bucket maps and the
codes), then whole ``query()`` jobs on the test images: reading, encoding, searching every
partition, merging, and writing the results. Process and cluster start-up are excluded
(``bench_query_vs_seed.py`` times the whole command). Prints queries/s (median
of repeats) per mode and cluster size, and the 2-worker / 1-worker ratio::

    python benchmarks/bench_query.py [--index DIR] [--queries 10000] [--repeats 3]
    python benchmarks/bench_query.py --smoke
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import numpy as np
from _common import TEST_IMAGES, TRAIN_IMAGES, add_smoke_and_out_json, parser, write_json


def subset(url: str, n: int, path: str) -> str:
    """The first ``n`` images of ``url`` saved as ``.npy`` at ``path`` (``url`` itself when it has no more)."""
    from storage import open_corpus

    corpus = open_corpus(url)
    if n >= len(corpus):
        return url
    np.save(path, corpus.read(corpus.native_spec(), 0, n).pixels[..., 0])
    return path


def throughput(index_url: str, queries: str, workers: int, modes: list[str], repeats: int) -> dict[str, list[float]]:
    """Queries/s of each mode on a fresh ``workers``-process cluster, one value per repeat."""
    from workflows.bench import BenchSettings, bench
    from workflows.cluster import ClusterSettings

    result = bench(index_url, queries, BenchSettings(modes=tuple(modes), repeats=repeats), ClusterSettings(workers=workers))
    print(result.render(), flush=True)
    return {m: [result.n_queries / s for s in runs] for m, runs in result.runs.items()}


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--index", help="index directory: reused if it exists, built there otherwise (default: temporary)")
    ap.add_argument("--corpus", default=TRAIN_IMAGES)
    ap.add_argument("--query-images", default=TEST_IMAGES)
    ap.add_argument("--images", type=int, default=60000, help="corpus images to index")
    ap.add_argument("--queries", type=int, default=10000)
    ap.add_argument("--modes", default="default,seed")
    ap.add_argument("--workers", default="1,2", help="cluster sizes to compare")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="fashion-mnist")
    add_smoke_and_out_json(ap, "2k images, 300 queries, 1 repeat")
    args = ap.parse_args(argv)
    if args.smoke:
        args.images, args.queries, args.repeats = 2000, 300, 1
    modes = args.modes.split(",")
    sizes = [int(w) for w in args.workers.split(",")]
    from workflows.cluster import ClusterSettings
    from workflows.index import IndexSettings, index

    with tempfile.TemporaryDirectory() as tmp:
        index_url = args.index or f"{tmp}/index"
        if not Path(index_url, "manifest.json").exists():
            corpus = subset(args.corpus, args.images, f"{tmp}/corpus.npy")
            # the index is only the benchmark's input: the smoke run builds it on threads of this
            # process instead of starting (and importing TensorFlow in) two more
            index(corpus, index_url, args.model, IndexSettings(),
                  ClusterSettings(workers=1, processes=False) if args.smoke else ClusterSettings(workers=2))
        queries = subset(args.query_images, args.queries, f"{tmp}/queries.npy")
        rates = {w: throughput(index_url, queries, w, modes, args.repeats) for w in sizes}
    print(f"\nqueries/s, whole query job on a running cluster (median of {args.repeats}), {args.queries} queries:")
    print(f"  {'mode':8s}" + "".join(f"{f'{w} worker(s)':>14s}" for w in sizes) + (f"{'ratio':>8s}" if len(sizes) > 1 else ""))
    result = {"model": args.model, "images": args.images, "queries": args.queries, "repeats": args.repeats, "modes": {}}
    for mode in modes:
        med = {w: statistics.median(rates[w][mode]) for w in sizes}
        line = f"  {mode:8s}" + "".join(f"{med[w]:14.0f}" for w in sizes)
        if len(sizes) > 1:
            line += f"{med[sizes[-1]] / med[sizes[0]]:7.2f}x"
        print(line)
        result["modes"][mode] = {"queries_per_s": {str(w): med[w] for w in sizes}, "runs": {str(w): rates[w][mode] for w in sizes}}
    write_json(args.out_json, result)
    return result


if __name__ == "__main__":
    main()

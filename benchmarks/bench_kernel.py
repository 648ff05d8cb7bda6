"""The Hamming candidate kernel against FAISS, and both against memory bandwidth.

Takes the distinct patch codes of the Fashion-MNIST train images (encoded with a model, as
an index holds them) and the codes of some test images as queries, then finds, for every
query code, every distinct code within Hamming distance ``t``:

* ours: :func:`pipeline.hamming.scan_within` on each query code, in one thread;
* reference: ``faiss.IndexBinaryFlat.range_search`` on the same codes and radius, with
  FAISS limited to one thread (``faiss.omp_set_num_threads(1)``).

Both must find the same (query code, key) pairs. Prints comparisons/s (query codes x keys /
seconds, median of repeats), the ratio, and the bandwidth each rate would need if every key
came from memory, against a single-thread streaming read measured in the same run::

    python benchmarks/bench_kernel.py [--model fashion-mnist] [--queries 200] [--threshold 3]
    python benchmarks/bench_kernel.py --smoke
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
from _common import TEST_IMAGES, TRAIN_IMAGES, add_smoke_and_out_json, parser, write_json
from numba import njit

from pipeline.hamming import scan_within


@njit(nogil=True, cache=True)
def scan_all(queries, keys, t, out_idx, out_dist, hits_per_query):
    """``scan_within`` for every query code; fills ``hits_per_query``; total hits."""
    total = 0
    for i in range(queries.size):
        n = scan_within(queries[i], keys, t, out_idx, out_dist)
        hits_per_query[i] = n
        total += n
    return total


@njit(nogil=True, cache=True)
def _stream_sum(a):
    s = np.uint64(0)
    for i in range(a.size):
        s += a[i]
    return s


def read_bandwidth(n_bytes: int, repeats: int) -> float:
    """Single-thread streaming read rate (bytes/s) of an array far larger than the caches."""
    a = np.ones(n_bytes // 8, np.uint64)
    _stream_sum(a[:16])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _stream_sum(a)
        times.append(time.perf_counter() - start)
    return a.nbytes / statistics.median(times)


def as_faiss_bytes(codes: np.ndarray) -> np.ndarray:
    """``uint32``/``uint64`` codes as the ``uint8 [n, bytes]`` rows FAISS binary indexes take."""
    codes = np.ascontiguousarray(codes)
    return codes.view(np.uint8).reshape(len(codes), codes.itemsize)


def codes_of(url: str, n: int, model: str) -> np.ndarray:
    from pipeline.encode import load_encoder
    from storage import open_corpus

    encoder = load_encoder(model)
    pixels = open_corpus(url).read(encoder.card.image_spec, 0, n).pixels
    return encoder.encode(pixels), encoder.card.bits


def time_ours(queries, keys, t, repeats):
    out_idx = np.empty(keys.size, np.int64)
    out_dist = np.empty(keys.size, np.int64)
    hits = np.empty(queries.size, np.int64)
    scan_all(queries[:1], keys, t, out_idx, out_dist, hits)  # compile / load from cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        total = scan_all(queries, keys, t, out_idx, out_dist, hits)
        times.append(time.perf_counter() - start)
    return statistics.median(times), int(total), hits


def time_faiss(queries, keys, bits, t, repeats):
    import faiss

    faiss.omp_set_num_threads(1)
    index = faiss.IndexBinaryFlat(bits)
    index.add(as_faiss_bytes(keys))
    q = as_faiss_bytes(queries)
    # IndexBinaryFlat.range_search keeps distances strictly below the radius
    index.range_search(q[:1], t + 1)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        lims, dist, _ = index.range_search(q, t + 1)
        times.append(time.perf_counter() - start)
    return statistics.median(times), int(lims[-1]), np.diff(lims), dist


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--model", default="fashion-mnist")
    ap.add_argument("--corpus", default=TRAIN_IMAGES)
    ap.add_argument("--query-images", default=TEST_IMAGES)
    ap.add_argument("--images", type=int, default=60000, help="corpus images whose distinct codes are the keys")
    ap.add_argument("--queries", type=int, default=200, help="query images (each gives grid-size query codes)")
    ap.add_argument("--threshold", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bandwidth-mb", type=int, default=1024)
    add_smoke_and_out_json(ap, "2k images, 10 queries, 1 repeat")
    args = ap.parse_args(argv)
    if args.smoke:
        args.images, args.queries, args.repeats, args.bandwidth_mb = 2000, 10, 1, 16

    corpus_codes, bits = codes_of(args.corpus, args.images, args.model)
    keys = np.unique(corpus_codes)
    query_codes, _ = codes_of(args.query_images, args.queries, args.model)
    queries = query_codes.ravel().astype(keys.dtype)
    comparisons = queries.size * keys.size
    print(f"{keys.size:,} distinct {bits}-bit codes of {args.images:,} images; {queries.size:,} query codes "
          f"of {args.queries} images; t={args.threshold}; one thread each")

    ours_s, ours_hits, ours_per_query = time_ours(queries, keys, args.threshold, args.repeats)
    faiss_s, faiss_hits, faiss_per_query, faiss_dist = time_faiss(queries, keys, bits, args.threshold, args.repeats)
    if ours_hits != faiss_hits or not np.array_equal(ours_per_query, faiss_per_query) or faiss_dist.max(initial=0) > args.threshold:
        sys.exit(f"results differ: ours {ours_hits} hits, FAISS {faiss_hits}")
    bandwidth = read_bandwidth(args.bandwidth_mb << 20, max(args.repeats, 3))
    key_bytes = keys.itemsize
    rows = {
        "ours": comparisons / ours_s,
        "faiss": comparisons / faiss_s,
    }
    limit = bandwidth / key_bytes
    print(f"  {'kernel':8s} {'comparisons/s':>15s} {'as GB/s of keys':>16s} {'of bandwidth':>13s}")
    for name, rate in rows.items():
        print(f"  {name:8s} {rate:15.3e} {rate * key_bytes / 1e9:16.2f} {rate / limit:13.2f}")
    print(f"  memory bandwidth (one thread, streaming read): {bandwidth / 1e9:.2f} GB/s = {limit:.3e} keys/s")
    ratio = rows["ours"] / rows["faiss"]
    print(f"  ours / FAISS: {ratio:.2f}x  ({ours_hits:,} matches each, identical per query code)")
    result = {
        "model": args.model, "images": args.images, "distinct_keys": int(keys.size), "bits": bits,
        "query_codes": int(queries.size), "threshold": args.threshold, "repeats": args.repeats,
        "matches": ours_hits, "ours_comparisons_per_s": rows["ours"], "faiss_comparisons_per_s": rows["faiss"],
        "ratio": ratio, "read_bandwidth_bytes_per_s": bandwidth, "key_bytes": key_bytes,
        "ours_s": ours_s, "faiss_s": faiss_s,
    }
    write_json(args.out_json, result)
    return result


if __name__ == "__main__":
    main()

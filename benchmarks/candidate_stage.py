"""Why the default mode's cost grows with the index: its candidate stage on a 1M partition.

Builds (or reuses) a synthetic index with ``bench_scale.build`` (real codes repeated, bits
flipped), loads its first positional partition and its codes in this process, and runs the
default mode's search (:func:`pipeline.rerank.rerank_search`, one thread) on Fashion-MNIST
test queries for several per-position radii ``t``, shortlist sizes, bucket-size caps and vote
budgets (the budget shrinks a query's radius where its buckets hold more images).
Prints ms/query for the partition, the images with at least one vote (candidates), and
recall@10 against the exact top-10 by the Hamming distance of the whole code grid (a
brute-force scan of the partition, the reference the re-rank approximates; ties broken by
id)::

    python benchmarks/candidate_stage.py [--images 1000000] [--queries 100] [--workdir DIR]
    python benchmarks/candidate_stage.py --smoke

``--substrings 2,3,4`` then times the default settings with multi-index tables of each number
of substrings, alternating, and prints the medians beside the cost model's choice
(:func:`pipeline.mih.mih_substrings`); the results are the same for each.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from _common import TEST_IMAGES, TRAIN_IMAGES, add_smoke_and_out_json, parser, write_json


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--images", type=int, default=1_000_000, help="synthetic index size (one partition)")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--thresholds", default="3,2,1,0")
    ap.add_argument("--shortlists", default="400,2000")
    ap.add_argument("--caps", default="0.1,3000,300", help="bucket-size caps: a fraction of the partition, or images")
    ap.add_argument("--budgets", default="none,100000", help="vote budgets per query ('none': the radius is always t)")
    ap.add_argument("--substrings", default="", help="multi-index substrings to time with the default settings, e.g. 2,3,4")
    ap.add_argument("--repeats", type=int, default=5,
                    help="timed runs of each row of the table, and alternating runs per substring count (medians)")
    ap.add_argument("--workdir", help="keep the synthetic index here and reuse it (default: temporary)")
    add_smoke_and_out_json(ap, "20k images, 10 queries")
    args = ap.parse_args(argv)
    if args.smoke:
        args.images, args.queries, args.thresholds, args.shortlists, args.caps, args.budgets = 20_000, 10, "3,1", "400", "0.1,300", "none,5000"
        args.substrings, args.repeats = args.substrings or "2,4", 1

    from bench_scale import build

    from pipeline.baselines import hamming_knn
    from pipeline.encode import load_encoder
    from pipeline.rerank import rerank_search
    from storage import open_corpus
    from storage.manifest import read_manifest
    from workflows.cluster import ClusterSettings, dask_client
    from workflows.worker_cache import load_codes, load_partition

    work = args.workdir or tempfile.mkdtemp(prefix="candidate-stage-")
    index_url = f"{work}/index-{args.images}"
    encoder = load_encoder("fashion-mnist")
    if not Path(index_url, "manifest.json").exists():
        base = f"{work}/base_codes.npy"
        pixels = open_corpus(TRAIN_IMAGES).read(encoder.card.image_spec, 0, min(60000, args.images)).pixels
        np.save(base, encoder.encode(pixels))
        with dask_client(ClusterSettings(workers=2)) as client:
            build(index_url, base, "fashion-mnist", args.images, min(100_000, args.images), args.images, 0.02, client)
    manifest = read_manifest(index_url)
    part = manifest.search_partitions("pos")[0]
    bmap = load_partition(index_url, part)
    codes = load_codes(index_url, part)
    n = part.stop - part.start
    pixels = open_corpus(TEST_IMAGES).read(encoder.card.image_spec, 0, args.queries).pixels
    queries = encoder.encode(pixels).reshape(args.queries, -1).astype(codes.dtype)
    started = time.perf_counter()
    # each patch code widened to one 64-bit word: the summed distance is the whole grid's
    exact = hamming_knn(codes.astype(np.uint64), queries.astype(np.uint64), 10) + part.start
    print(f"{n:,} images, {bmap.keys.size:,} keys in {bmap.n_groups} positions; exact top-10 by brute force: "
          f"{1000 * (time.perf_counter() - started) / args.queries:.0f} ms/query", flush=True)
    rows = []
    print(f"| t | shortlist | bucket cap | vote budget | ms/query (one partition, one thread, median of {args.repeats}) | candidates (share of the partition) | recall@10 vs exact |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for t in (int(v) for v in args.thresholds.split(",")):
        for shortlist in (int(v) for v in args.shortlists.split(",")):
            for cap_arg, budget_arg in ((c, b) for c in args.caps.split(",") for b in args.budgets.split(",")):
                cap = int(float(cap_arg) * n) if float(cap_arg) < 1 else int(cap_arg)
                budget = None if budget_arg == "none" else int(budget_arg)
                search = lambda q: rerank_search(q, bmap, codes, t, manifest.bits, 10, shortlist, cap, budget, id_range=(part.start, part.stop))  # noqa: E731
                search(queries[:2])  # compile, build the multi-index tables
                runs = []
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    found = search(queries)
                    runs.append(1000 * (time.perf_counter() - started) / args.queries)
                ms = float(np.median(runs))
                recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.ids.tolist(), exact.tolist())]))
                row = {"t": t, "shortlist": shortlist, "cap": cap, "vote_budget": budget, "ms_per_query": ms, "runs_ms_per_query": runs,
                       "candidates": float(found.n_candidates.mean()), "recall_at_10": recall}
                rows.append(row)
                print(f"| {t} | {shortlist} | {cap:,} | {'none' if budget is None else f'{budget:,}'} | {ms:.2f} | {row['candidates']:,.0f} ({row['candidates'] / n:.0%}) | {recall:.3f} |", flush=True)
    result = {"images": n, "queries": args.queries, "keys": int(bmap.keys.size), "rows": rows}
    if args.substrings:
        result["substrings"] = _time_substrings(bmap, codes, queries, manifest.bits, (part.start, part.stop),
                                                [int(v) for v in args.substrings.split(",")], args.repeats)
    write_json(args.out_json, result)
    return result


def _time_substrings(bmap, codes, queries, bits: int, id_range: tuple[int, int], counts: list[int], repeats: int) -> dict:
    """Median ms/query of the default settings with each number of multi-index substrings."""
    from pipeline.rerank import rerank_search
    from pipeline.mih import mih_substrings
    from workflows.query import QuerySettings

    settings = QuerySettings()
    t = settings.threshold
    shortlist, max_bucket = settings.partition_limits(id_range[1] - id_range[0])
    chosen = mih_substrings(bmap.keys.size // bmap.n_groups, bits, t)

    def search(q, m):
        return rerank_search(q, bmap, codes, t, bits, 10, shortlist, max_bucket, settings.vote_budget,
                             id_range=id_range, method="mih", n_substrings=m)

    counts = sorted({*counts, chosen})
    expected = search(queries, chosen).ids  # also compiles and builds the chosen tables
    times: dict[int, list[float]] = {m: [] for m in counts}
    for m in counts:
        if not (search(queries, m).ids == expected).all():
            raise RuntimeError(f"{m} substrings changed the results")
    for _ in range(repeats):  # alternating, so a change in the machine's load touches every count
        for m in counts:
            started = time.perf_counter()
            search(queries, m)
            times[m].append(1000 * (time.perf_counter() - started) / len(queries))
    medians = {m: float(np.median(v)) for m, v in times.items()}
    print(f"\nmulti-index substrings, default settings (t={t}), median of {repeats} alternating runs; "
          f"the cost model picks {chosen}:")
    for m in counts:
        print(f"  {m} substrings: {medians[m]:.3f} ms/query ({medians[m] / medians[chosen]:.2f}x the cost model's choice)")
    return {"threshold": t, "cost_model_choice": chosen, "ms_per_query": {str(m): medians[m] for m in counts},
            "runs": {str(m): times[m] for m in counts}}


if __name__ == "__main__":
    main()

"""``patchhash query --mode seed`` against seed 000's Python search, on the same codes.

Builds (or reuses) a patchhash index of the Fashion-MNIST train images with the CLI, times the
whole ``patchhash query --mode seed`` command on the 10k test images (start-up included), then
runs the seed's search (:mod:`seed_reference`) on the index's own codes for the first few
queries, checks that both give the same top-k, and prints ms/query of each::

    python benchmarks/bench_query_vs_seed.py --index ./fmnist.index --out-json seed.json
    python benchmarks/bench_query_vs_seed.py --smoke --skip-patchhash   # seconds, for CI

``--smoke`` indexes the first 300 images of ``--corpus`` and queries the first 50 of
``--queries`` (both must then be arrays: IDX, ``.npy`` or Zarr).
``--skip-patchhash`` does not run the query command and checks the reference against
:func:`pipeline.seed.seed_search` in process instead.

Agreement: for every checked query the top-k scores must be equal rank by rank; the image ids
must be equal for every score of the top-k, except the k-th score when more images share it
than the top-k holds (the seed orders ties arbitrarily). The script exits non-zero on any
disagreement, after writing its figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import TEST_IMAGES, TRAIN_IMAGES, parser, write_json
from seed_reference import SemanticHashTable, populate_table, search

SMOKE_CORPUS = 300
SMOKE_QUERIES = 50
PATCHHASH = str(Path(sys.executable).with_name("patchhash"))


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options (``argv`` defaults to ``sys.argv[1:]``)."""
    ap = parser(__doc__)
    ap.add_argument("--corpus", default=TRAIN_IMAGES, help="images to index (default: %(default)s)")
    ap.add_argument("--queries", default=TEST_IMAGES, help="query images (default: %(default)s)")
    ap.add_argument("--index", help="index directory: reused if it exists, built there otherwise "
                                    "(default: in the work directory)")
    ap.add_argument("--model", help="model for a new index (default: the CLI's, fashion-mnist)")
    ap.add_argument("--workers", type=int, default=2, help="workers of `patchhash index`")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threshold", type=int, default=3)
    ap.add_argument("--seed-queries", type=int, default=10,
                    help="queries answered (and timed one by one) by the seed reference")
    ap.add_argument("--repeats", type=int, help="runs of the query command (default 3, 1 with --smoke)")
    ap.add_argument("--skip-patchhash", action="store_true",
                    help="do not run `patchhash query`; check against seed_search in process")
    ap.add_argument("--smoke", action="store_true",
                    help=f"first {SMOKE_CORPUS} images of --corpus, first {SMOKE_QUERIES} of --queries")
    ap.add_argument("--workdir", help="where inputs, index and results go (default: a temporary "
                                      "directory, removed at the end)")
    ap.add_argument("--out-json", help="write the figures here")
    args = ap.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.smoke else 3
    return args


def write_subset(url: str, n: int, path: Path) -> str:
    """Save the first ``n`` images of ``url`` (at their native size) as ``.npy``; its path."""
    from storage import open_corpus

    corpus = open_corpus(url)
    np.save(path, corpus.read(corpus.native_spec(), 0, n).pixels)
    return str(path)


def run_cli(args: list[str]) -> float:
    """Run ``patchhash ARGS``; its wall time in seconds (start-up included)."""
    start = time.perf_counter()
    done = subprocess.run([PATCHHASH, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"patchhash {' '.join(args)} failed ({done.returncode}):\n"
                           f"{done.stderr[-2000:]}")
    return seconds


def build_index(corpus: str, index: str, model: str | None, workers: int) -> float:
    """Index ``corpus`` into the new index ``index`` with the CLI; seconds taken."""
    model_args = ["--model", model] if model else []
    return run_cli(["index", "--corpus", corpus, "--index", index, "--workers", str(workers),
                    *model_args])


def time_query_command(index: str, queries: str, out: str, k: int, threshold: int,
                       repeats: int) -> list[float]:
    """Wall seconds of each of ``repeats`` runs of ``patchhash query --mode seed``."""
    seconds = []
    for _ in range(repeats):
        Path(out).unlink(missing_ok=True)
        seconds.append(run_cli(["query", "--index", index, "--queries", queries, "--out", out,
                                "--k", str(k), "--threshold", str(threshold), "--mode", "seed"]))
    return seconds


def index_codes(index: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Codes [n, G] and ids of the readable images of ``index``, and its code width."""
    import pyarrow.parquet as pq
    import zarr

    from storage.manifest import read_manifest

    manifest = read_manifest(index)
    codes = zarr.open_array(f"{index}/codes")[: manifest.n_images]
    ids = np.concatenate([
        pq.read_table(f"{index}/{shard.images}", columns=["image_id"])["image_id"].to_numpy()
        for shard in manifest.shards
    ])
    ids.sort()
    return codes.reshape(codes.shape[0], -1)[ids], ids, manifest.bits


def encode_queries(index: str, queries: str, n: int) -> np.ndarray:
    """Codes [n, G] of the first ``n`` images of ``queries`` by the index's model."""
    from pipeline.encode import load_encoder
    from storage import open_corpus

    encoder = load_encoder(f"{index}/model")
    data = open_corpus(queries).read(encoder.card.image_spec, 0, n)
    if data.errors:
        raise RuntimeError(f"cannot read query images: {data.errors[:3]}")
    codes = encoder.encode(data.pixels)
    return codes.reshape(n, -1)


def run_seed_reference(table: SemanticHashTable, query_codes: np.ndarray, threshold: int,
                       k: int) -> tuple[list[float], list[list[tuple[int, float]]]]:
    """Time the seed's ``search`` on each query; seconds and top-(k+1) ``(id, score)`` lists.

    One more than ``k`` results shows whether the k-th score is tied beyond the top-k.
    """
    seconds, results = [], []
    for codes in query_codes:
        start = time.perf_counter()
        hits = search(codes, table, threshold, k + 1)
        seconds.append(time.perf_counter() - start)
        results.append([(int(i), float(s)) for i, s in hits])
    return seconds, results


def patchhash_results(path: str, n: int) -> list[list[tuple[int, float]]]:
    """``(image_id, score)`` by rank of queries ``0 .. n - 1`` from a results Parquet file."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["query_id", "rank", "image_id", "score", "error"])
    table = table.filter(pc.and_(pc.is_null(table["error"]), pc.less(table["query_id"], n)))
    table = table.sort_by([("query_id", "ascending"), ("rank", "ascending")])
    results = [[] for _ in range(n)]
    for q, i, s in zip(*(table[c].to_pylist() for c in ("query_id", "image_id", "score"))):
        results[q].append((i, s))
    return results


def in_process_results(codes: np.ndarray, ids: np.ndarray, query_codes: np.ndarray,
                       threshold: int, bits: int, k: int) -> list[list[tuple[int, float]]]:
    """The same lists from :func:`pipeline.seed.seed_search` over one bucket map."""
    from pipeline.buckets import build_bucket_map
    from pipeline.seed import seed_search

    bmap = build_bucket_map(codes, ids, positional=False)
    top = seed_search(query_codes, bmap, threshold, bits, k)
    return [[(int(i), float(s)) for i, s in zip(row_ids, row_scores) if i >= 0]
            for row_ids, row_scores in zip(top.ids, top.scores)]


def disagreements(reference: list, other: list, k: int) -> list[str]:
    """How the reference's top-(k+1) and another top-k of one query differ (empty: agree)."""
    top = reference[:k]
    ref_scores = [s for _, s in top]
    other_scores = [s for _, s in other]
    if ref_scores != other_scores:
        return [f"scores {ref_scores} != {other_scores}"]
    tied_beyond = len(reference) > k and reference[k][1] == top[-1][1]
    problems = []
    for score in sorted(set(ref_scores), reverse=True):
        if tied_beyond and score == top[-1][1]:
            continue
        ref_ids = sorted(i for i, s in top if s == score)
        other_ids = sorted(i for i, s in other if s == score)
        if ref_ids != other_ids:
            problems.append(f"score {score}: ids {ref_ids} != {other_ids}")
    return problems


def main(argv=None) -> None:
    """Run the benchmark; print the table and write ``--out-json``."""
    args = parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_seed_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        corpus, queries = args.corpus, args.queries
        if args.smoke:
            corpus = write_subset(corpus, SMOKE_CORPUS, workdir / "corpus.npy")
            queries = write_subset(queries, SMOKE_QUERIES, workdir / "queries.npy")
        index = args.index or str(workdir / "index")
        build_s = None
        if not Path(index, "manifest.json").exists():
            print(f"indexing {corpus} into {index} ...", flush=True)
            build_s = build_index(corpus, index, args.model, args.workers)
            print(f"  {build_s:.1f} s", flush=True)

        from storage import open_corpus

        n_queries = len(open_corpus(queries))
        command_s = None
        results_path = str(workdir / "results.parquet")
        if not args.skip_patchhash:
            print(f"patchhash query --mode seed: {n_queries} queries x {args.repeats} ...", flush=True)
            command_s = time_query_command(index, queries, results_path, args.k,
                                           args.threshold, args.repeats)

        codes, ids, bits = index_codes(index)
        n_seed = min(args.seed_queries, n_queries)
        query_codes = encode_queries(index, queries, n_seed)
        table = SemanticHashTable()
        start = time.perf_counter()
        populate_table(codes, ids, table)
        populate_s = time.perf_counter() - start
        n_distinct = table.codes.size
        print(f"seed reference: {n_seed} queries over {ids.size} images "
              f"({n_distinct} distinct codes) ...", flush=True)
        seed_s, reference = run_seed_reference(table, query_codes, args.threshold, args.k)

        if args.skip_patchhash:
            compared_with = "pipeline.seed.seed_search (in process)"
            other = in_process_results(codes, ids, query_codes, args.threshold, bits, args.k)
        else:
            compared_with = "patchhash query --mode seed"
            other = patchhash_results(results_path, n_seed)
        mismatches = {q: d for q in range(n_seed)
                      if (d := disagreements(reference[q], other[q], args.k))}

        seed_ms = 1000 * statistics.median(seed_s)
        patchhash_ms = None if command_s is None else 1000 * statistics.median(command_s) / n_queries
        figures = dict(
            corpus=corpus, queries=queries, index=index, n_images=int(ids.size),
            n_queries=n_queries, k=args.k, threshold=args.threshold, bits=bits,
            grid_codes=int(codes.shape[1]), distinct_codes=int(n_distinct),
            index_build_s=build_s,
            patchhash_command_s=command_s,
            patchhash_ms_per_query=patchhash_ms,
            seed_populate_s=populate_s,
            seed_query_s=seed_s,
            seed_ms_per_query=seed_ms,
            speed_ratio=None if patchhash_ms is None else seed_ms / patchhash_ms,
            agreement=dict(compared_with=compared_with, queries_checked=n_seed,
                           mismatches={str(q): d for q, d in mismatches.items()}),
            machine=dict(platform=platform.platform(), cpus=os.cpu_count(),
                         python=platform.python_version()),
        )
        write_json(args.out_json, figures, newline=True)

        print()
        print(f"{'':58s}{'ms/query':>12s}")
        if patchhash_ms is None:
            print(f"{'patchhash query --mode seed':58s}{'skipped':>12s}")
        else:
            label = f"patchhash query --mode seed (whole command / {n_queries})"
            print(f"{label:58s}{patchhash_ms:12.3f}")
        label = f"seed 000 reference search (median of {n_seed})"
        print(f"{label:58s}{seed_ms:12.1f}")
        if patchhash_ms is not None:
            print(f"{'speed ratio (seed / patchhash)':58s}{seed_ms / patchhash_ms:11.1f}x")
        print(f"agreement with {compared_with}: {n_seed - len(mismatches)}/{n_seed} queries")
        if mismatches:
            for q, problems in mismatches.items():
                print(f"  query {q}: {'; '.join(problems)}")
            raise SystemExit(1)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

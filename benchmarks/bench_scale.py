"""Synthetic indexes of 100k to 10M images: build time, memory, bytes per image, ms/query.

The codes mimic the real code distribution: the codes of the Fashion-MNIST train images
(encoded with the model) repeated, each bit of each copy flipped with probability ``--flip``
(so most images have near, not exact, twins, and the distinct codes grow with the index).
They are written through the index's own storage (the Zarr codes array, one images table
per shard, Dask tasks, done-markers) and bucketed by the index job's own partition phase and
commit, so only the encoder is left out. Then the real query job answers ``--queries`` test
images in each mode with :func:`workflows.bench.bench` (warm-up block first, then one
timed job per mode).

Reported per size: build seconds (codes + bucket maps + commit), peak RSS of each worker
process during build and during queries (``VmHWM``: the high-water mark of the process),
index bytes on disk per image, the workers' local copies of the partitions
(:mod:`workflows.partition_files`, memory-mapped) per image, and ms/query per mode. Each
worker's cache of bucket maps and codes held in its own memory is bounded (``--cache-bytes``);
each partition's search tasks are pinned to one worker::

    python benchmarks/bench_scale.py --sizes 100000,1000000,10000000 [--queries 1000]
    python benchmarks/bench_scale.py --smoke
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from _common import TEST_IMAGES, TRAIN_IMAGES, add_smoke_and_out_json, parser, write_json


def synthetic_shard_task(index_url: str, base_url: str, start: int, stop: int, flip: float) -> dict:
    """Write codes rows ``[start, stop)`` (base codes with bits flipped) and their images table."""
    from storage import join_url
    from storage.arrays import open_array
    from storage.image_tables import IMAGES_SCHEMA, ERRORS_SCHEMA, write_shard_tables
    from storage.layout import CODES

    base = np.load(base_url, mmap_mode="r")
    rows = np.arange(start, stop)
    codes = np.array(base[rows % len(base)])
    bits = 8 * codes.dtype.itemsize
    rng = np.random.default_rng(start)
    # flip each bit with probability `flip`: OR together one random mask per bit position
    flips = np.zeros(codes.shape, codes.dtype)
    for b in range(bits):
        flips |= (rng.random(codes.shape) < flip).astype(codes.dtype) << codes.dtype.type(b)
    open_array(join_url(index_url, CODES), mode="r+")[start:stop] = codes ^ flips
    images = pa.table({"image_id": rows, "uri": [f"synthetic/{r}" for r in rows], "source": np.zeros(len(rows), np.int32),
                       "fingerprint": [None] * len(rows)}, schema=IMAGES_SCHEMA)
    return write_shard_tables(index_url, start, stop, 1, images, ERRORS_SCHEMA.empty_table()).__dict__


def build(index_url: str, base_url: str, card_model: str, n: int, shard_size: int, partition_size: int, flip: float, client) -> float:
    """Build a synthetic index of ``n`` images at ``index_url``; seconds taken."""
    from pipeline.modelcard import read_card
    from storage import join_url
    from storage.arrays import create_codes_array
    from storage.layout import CODES, MODEL_DIR
    from storage.manifest import Manifest, ShardEntry, SourceEntry, commit_manifest, utc_now
    from workflows.index import build_partitions, install_model
    from workflows.progress import track

    started = time.perf_counter()
    install_model(index_url, card_model)
    card = read_card(join_url(index_url, MODEL_DIR))
    create_codes_array(join_url(index_url, CODES), n, card.grid, card.code_dtype, shard_size)
    futures = [client.submit(synthetic_shard_task, index_url, base_url, s, min(s + shard_size, n), flip, pure=False)
               for s in range(0, n, shard_size)]
    done = [ShardEntry(**f.result()) for f in track(futures, total=len(futures), desc="codes", unit="shard")]
    shards = tuple(sorted(done, key=lambda s: s.start))  # the manifest lists shards in id order
    partitions = build_partitions(client, index_url, shards, n, partition_size)
    manifest = Manifest(
        version=1, model={**card.identity, "path": MODEL_DIR}, bits=card.bits, grid=card.grid, code_dtype=card.code_dtype.name,
        shard_size=shard_size, partition_size=partition_size, n_images=n, shards=shards, partitions=partitions,
        sources=(SourceEntry(0, "synthetic", None, "synthetic", 1, 1, utc_now()),), created=utc_now(), parent=None,
    )
    commit_manifest(index_url, manifest)
    return time.perf_counter() - started


def disk_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--sizes", default="100000,1000000", help="index sizes in images, comma-separated")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--modes", default="default,seed")
    ap.add_argument("--flip", type=float, default=0.02, help="probability that a bit of a copied code flips")
    ap.add_argument("--shard-size", type=int, default=100_000)
    ap.add_argument("--partition-size", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--block-size", type=int, default=1000,
                    help="queries per task; where a worker's partitions do not fit its cache, each block loads them again")
    ap.add_argument("--cache-bytes", default="1.5GiB",
                    help="each worker's cache of bucket maps and codes (PATCHHASH_CACHE_BYTES): keeps a worker under 4 GB at 10M images")
    ap.add_argument("--local-dir", help="the workers' local copies of partitions (PATCHHASH_LOCAL_DIR; default: a folder of the "
                    "work directory, so the first job of each size starts without any); off: none, every load from the index")
    ap.add_argument("--model", default="fashion-mnist")
    ap.add_argument("--workdir", help="where the indexes go (default: a temporary directory; each index is removed after use)")
    add_smoke_and_out_json(ap, "one index of 4000 images, 50 queries")
    args = ap.parse_args(argv)
    if args.smoke:
        args.sizes, args.queries, args.shard_size, args.partition_size = "4000", 50, 1000, 2000
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = args.modes.split(",")
    os.environ["PATCHHASH_CACHE_BYTES"] = args.cache_bytes  # the workers inherit it

    from pipeline.encode import load_encoder
    from storage import ImageSpec, open_corpus
    from workflows.bench import BenchSettings, bench, peak_rss_mb
    from workflows.cluster import ClusterSettings, dask_client

    encoder = load_encoder(args.model)
    base_images = 60000 if not args.smoke else 3000
    pixels = open_corpus(TRAIN_IMAGES).read(encoder.card.image_spec, 0, base_images).pixels
    results = []
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        base_url = f"{tmp}/base_codes.npy"
        np.save(base_url, encoder.encode(pixels))
        queries = f"{tmp}/queries.npy"
        np.save(queries, open_corpus(TEST_IMAGES).read(ImageSpec(28, 28, 1), 0, args.queries).pixels[..., 0])
        for n in sizes:
            index_url = f"{tmp}/index-{n}"
            local = args.local_dir or f"{tmp}/local-copies-{n}"
            os.environ["PATCHHASH_LOCAL_DIR"] = local  # the workers inherit it
            # a fresh cluster per size, so that each worker's peak RSS belongs to this size
            with dask_client(ClusterSettings(workers=args.workers)) as client:
                seconds = build(index_url, base_url, args.model, n, args.shard_size, args.partition_size, args.flip, client)
                build_rss = sorted(client.run(peak_rss_mb).values())
                row = {"images": n, "build_s": seconds, "images_per_s": n / seconds,
                       "bytes_per_image": disk_bytes(index_url) / n, "build_peak_rss_mb": build_rss, "ms_per_query": {}}
            timed = bench(index_url, queries, BenchSettings(modes=tuple(modes), repeats=1, block_size=args.block_size), ClusterSettings(workers=args.workers))
            row["ms_per_query"] = {m: timed.ms_per_query(m) for m in modes}
            row["query_peak_rss_mb"] = sorted(timed.peak_rss_mb.values())
            row["query_anon_rss_mb"] = sorted(timed.anon_rss_mb.values())
            row["local_copy_bytes_per_image"] = disk_bytes(local) / n if os.path.isdir(local) else 0
            shutil.rmtree(index_url)
            if not args.local_dir:
                shutil.rmtree(local, ignore_errors=True)
            results.append(row)
            print(f"{n:>11,} images: built in {seconds:7.1f} s ({row['images_per_s']:,.0f}/s), "
                  f"{row['bytes_per_image']:6.0f} B/image, worker peak RSS build {max(build_rss):,.0f} MB / "
                  f"query {max(row['query_peak_rss_mb']):,.0f} MB, local copies {row['local_copy_bytes_per_image']:,.0f} B/image, ms/query: "
                  + ", ".join(f"{m} {v:.2f}" for m, v in row["ms_per_query"].items()), flush=True)
    write_json(args.out_json, {"args": vars(args), "results": results})
    return {"results": results}


if __name__ == "__main__":
    main()

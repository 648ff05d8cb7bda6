"""The cost of patchhash at scale: a model calibrated on partitions measured one at a time,
checked against whole runs, a simulated 1B-image merge, and a plan (docs/SCALE.md).

1. **Calibration**, in this process on one thread, as one worker works: a synthetic index of
   ``--calibrate-images`` images in partitions of ``--partition-size`` (real codes with bits
   flipped, built as ``bench_scale.py`` builds them); each partition loaded as a worker loads it
   (a local copy, memory-mapped) and searched in the default mode by ``--queries`` test images.
   It measures CPU ms per query and partition, query encoding per image, the index's and the
   local copies' bytes per image and the index's objects per partition.
2. **Check**: the model's ms/query for 1M and 10M images on 2 workers against ``bench_scale.py``
   runs (``--check``: its JSON), within 25%.
3. **Simulated 1B batch**: ``--simulate`` partitions (1,000), each the top-k lists of one of the
   measured partitions with its ids moved to the partition's range (and its scores lowered by
   its number mod 5, so that partitions differ), merged as the query job merges them (a tree of
   32-way merges), checked against one sort of all the lists.
4. **The plan** for ``--plan`` images on ``--cores`` cores, printed as a table and written with
   everything above to ``--out-json``.

    python benchmarks/scale_model.py --check benchmarks/results/bench_scale.json
    python benchmarks/scale_model.py --smoke
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from _common import TEST_IMAGES, TRAIN_IMAGES, add_smoke_and_out_json, parser, write_json

# S3 Standard list prices, us-east-1, in US dollars: what AWS published from 2021 through at
# least 2024; this machine cannot reach aws.amazon.com to confirm them on the plan's date.
S3_PRICES = {"date": "2026-12-06 (prices as published since 2021; unconfirmed from here)", "gb_month": 0.023,
             "put_per_1000": 0.005, "get_per_1000": 0.0004}
MERGE_FAN_IN = 32  # workflows/query.py's tree of merges
ENCODE_BATCH = 256  # pipeline/encode.py: images per run of the network, the unit of a block's encode parts


@dataclass(frozen=True)
class Calibration:
    """What the model is built from (per core: one worker thread)."""

    partition_size: int
    search_ms: float  # CPU ms per query and partition, default mode
    encode_ms: float  # CPU ms per query image (the Fashion-MNIST model)
    merge_ms: float  # CPU ms per query and partition list merged
    index_bytes_per_image: float
    local_bytes_per_image: float  # a worker's local copy: live map, codes, multi-index tables
    objects_per_partition: float
    build_images_per_s_per_core: float  # codes written and bucket maps built, without the encoder


def predict_ms_per_query(cal: Calibration, images: int, cores: int, queries: int = 1000, block: int = 1000,
                         in_flight: int = 8) -> float:
    """Wall ms per query of a job: the CPU work spread over the cores, or the job's critical
    path, whichever is longer. The path starts with the first block's encoding. Then:

    - with at least as many partitions as cores, each partition's searches are pinned to one
      worker, which searches its partitions block after block;
    - with fewer, any core takes any search, but only ``in_flight`` blocks' searches exist at a
      time.

    A block is encoded in parts of whole encoder batches, one per core at most
    (``workflows.query.encode_parts``): the path waits for the largest part.
    """
    parts = math.ceil(images / cal.partition_size)
    blocks = math.ceil(queries / block)
    per_query = cal.encode_ms + parts * (cal.search_ms + cal.merge_ms)
    spread = queries * per_query / cores
    if parts >= cores:
        searching = blocks * math.ceil(parts / cores) * block * cal.search_ms
    else:
        searching = queries * parts * cal.search_ms / min(cores, parts * min(in_flight, blocks))
    first_part = min(block, math.ceil(block / (cores * ENCODE_BATCH)) * ENCODE_BATCH)
    return max(spread, first_part * cal.encode_ms + searching) / queries


def plan(cal: Calibration, images: int, cores: int, encode_images_per_s_per_core: float) -> dict:
    """Partitions, per-worker storage, S3 objects and cost, index time, query batch times."""
    parts = math.ceil(images / cal.partition_size)
    per_core = math.ceil(parts / cores)
    index_bytes = images * cal.index_bytes_per_image
    objects = parts * cal.objects_per_partition
    rate = 1 / (1 / encode_images_per_s_per_core + 1 / cal.build_images_per_s_per_core)
    return {
        "images": images, "cores": cores, "partitions": parts, "partitions_per_core": per_core,
        "local_disk_per_core_gb": per_core * cal.partition_size * cal.local_bytes_per_image / 1e9,
        "index_gb": index_bytes / 1e9, "s3_objects": objects,
        "s3_storage_usd_per_month": index_bytes / 1e9 * S3_PRICES["gb_month"],
        "s3_build_puts_usd": objects / 1000 * S3_PRICES["put_per_1000"],
        "s3_first_load_gets_usd": objects / 1000 * S3_PRICES["get_per_1000"],
        "index_hours": images / (rate * cores) / 3600,
        "ms_per_query_1000": predict_ms_per_query(cal, images, cores, 1000, 1000),
        "batch_10000_s": predict_ms_per_query(cal, images, cores, 10_000, 1000) * 10,
    }


def calibrate(work: str, n_images: int, partition_size: int, n_queries: int) -> tuple[Calibration, list]:
    """Build the synthetic index and time its partitions one at a time (module docstring)."""
    from bench_scale import build, disk_bytes

    from pipeline.encode import load_encoder
    from pipeline.rerank import rerank_search
    from pipeline.topk import merge_topk
    from storage import open_corpus
    from storage.manifest import read_manifest
    from workflows.cluster import ClusterSettings, dask_client
    from workflows.query import QuerySettings
    from workflows.worker_cache import load_codes, load_partition, save_tables

    os.environ["PATCHHASH_LOCAL_DIR"] = local = f"{work}/local-copies"
    encoder = load_encoder("fashion-mnist")
    index_url = f"{work}/index"
    base = f"{work}/base_codes.npy"
    np.save(base, encoder.encode(open_corpus(TRAIN_IMAGES).read(encoder.card.image_spec, 0, min(60000, n_images)).pixels))
    with dask_client(ClusterSettings(workers=2)) as client:
        seconds = build(index_url, base, "fashion-mnist", n_images, min(100_000, partition_size), partition_size, 0.02, client)
    pixels = open_corpus(TEST_IMAGES).read(encoder.card.image_spec, 0, n_queries).pixels
    encoder.encode(pixels[:8])
    started = time.process_time()
    queries = encoder.encode(pixels).reshape(n_queries, -1)
    encode_ms = 1000 * (time.process_time() - started) / n_queries
    settings = QuerySettings()
    lists, search_ms = [], []
    for part in read_manifest(index_url).search_partitions("pos"):
        bmap, codes = load_partition(index_url, part), load_codes(index_url, part)
        shortlist, max_bucket = settings.partition_limits(bmap.n_images)
        args = (settings.threshold, 32, settings.k, shortlist, max_bucket, settings.vote_budget, (part.start, part.stop))
        rerank_search(queries[:50], bmap, codes, *args)  # compiles, builds the multi-index tables
        save_tables(index_url, part, bmap)  # into the local copy, as a worker does
        started = time.process_time()
        lists.append(rerank_search(queries, bmap, codes, *args))
        search_ms.append(1000 * (time.process_time() - started) / n_queries)
    merged = lists * (MERGE_FAN_IN // len(lists) + 1)  # about one merge task's lists
    started = time.process_time()
    merge_topk(merged, settings.k)
    merge_ms = 1000 * (time.process_time() - started) / n_queries / len(merged)
    objects = sum(1 for f in Path(index_url).rglob("*") if f.is_file())
    cal = Calibration(
        partition_size=partition_size, search_ms=float(np.median(search_ms)), encode_ms=encode_ms, merge_ms=merge_ms,
        index_bytes_per_image=disk_bytes(index_url) / n_images, local_bytes_per_image=disk_bytes(local) / n_images,
        objects_per_partition=objects / len(lists), build_images_per_s_per_core=n_images / seconds / 2,
    )
    print(f"calibrated on {len(lists)} partition(s) of {partition_size:,} images, one at a time: search "
          + ", ".join(f"{v:.3f}" for v in search_ms) + " CPU ms per query and partition", flush=True)
    return cal, lists


def from_bench(path: str, build_rate: float) -> Calibration:
    """The model's figures from a ``patchhash bench --out`` JSON (its ``plan_inputs``, default mode)."""
    import json

    plan_inputs = json.loads(Path(path).read_text())["plan_inputs"]
    mode = plan_inputs["default"]
    return Calibration(partition_size=plan_inputs["partition_size"], search_ms=mode["search_ms"], encode_ms=mode["encode_ms"],
                       merge_ms=mode["merge_ms"], index_bytes_per_image=plan_inputs["index_bytes_per_image"],
                       local_bytes_per_image=plan_inputs["local_bytes_per_image"],
                       objects_per_partition=plan_inputs["objects_per_partition"], build_images_per_s_per_core=build_rate)


def simulate_merge(lists: list, partition_size: int, n_partitions: int, k: int = 10) -> dict:
    """Merge ``n_partitions`` top-k lists (the measured ones, moved to other id ranges) as a
    query job's tree of merges does, and check the result against one sort of every list."""
    from pipeline.topk import TopK, merge_topk

    parts = []
    for p in range(n_partitions):
        j = p % len(lists)  # measured partition j holds ids [j * partition_size, (j + 1) * partition_size)
        src = lists[j]
        ids = np.where(src.ids >= 0, src.ids + (p - j) * partition_size, -1)
        parts.append(TopK(ids, np.where(src.ids >= 0, src.scores - (p % 5), src.scores), src.n_candidates))
    list_bytes = sum(p.ids.nbytes + p.scores.nbytes for p in parts)
    started = time.perf_counter()
    level = parts
    while len(level) > MERGE_FAN_IN:
        level = [merge_topk(level[i:i + MERGE_FAN_IN], k) for i in range(0, len(level), MERGE_FAN_IN)]
    merged = merge_topk(level, k)
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    merge_topk(parts, k)
    one_task = time.perf_counter() - started
    ids = np.concatenate([p.ids for p in parts], axis=1)
    scores = np.concatenate([p.scores for p in parts], axis=1)
    for q in range(ids.shape[0]):
        live = ids[q] >= 0
        order = np.lexsort((ids[q][live], -scores[q][live]))[:k]
        expected = ids[q][live][order]
        assert np.array_equal(merged.ids[q][: expected.size], expected), f"simulated merge differs for query {q}"
    return {"partitions": n_partitions, "queries": int(ids.shape[0]), "merge_s": seconds, "one_task_merge_s": one_task,
            "lists_mb": list_bytes / 1e6,
            "largest_task_lists_mb": list_bytes / n_partitions * MERGE_FAN_IN / 1e6, "checked": True}


def check(cal: Calibration, measured_json: str) -> list[dict]:
    """Predicted against measured ms/query for each size of a ``bench_scale.py`` run."""
    import json

    rows = []
    run = json.loads(Path(measured_json).read_text())
    for row in run["results"]:
        predicted = predict_ms_per_query(cal, row["images"], run["args"]["workers"], run["args"]["queries"], run["args"]["block_size"])
        measured = row["ms_per_query"]["default"]
        rows.append({"images": row["images"], "measured_ms": measured, "predicted_ms": predicted, "ratio": predicted / measured,
                     "within_25_percent": abs(predicted / measured - 1) <= 0.25})
        print(f"{row['images']:>12,} images on {run['args']['workers']} workers: measured {measured:.2f} ms/query, "
              f"model {predicted:.2f} ({predicted / measured:.2f}x)")
    return rows


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--calibrate-images", type=int, default=3_000_000, help="images of the calibration index")
    ap.add_argument("--partition-size", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--check", help="a bench_scale.py JSON to compare the model with")
    ap.add_argument("--simulate", type=int, default=1000, help="partitions of the simulated merge")
    ap.add_argument("--plan", type=int, default=1_000_000_000, help="images of the plan")
    ap.add_argument("--cores", default="64,256,1000", help="cores (worker threads) of the plan, comma-separated")
    ap.add_argument("--workdir", help="where the calibration index goes (default: a temporary directory)")
    ap.add_argument("--from-bench", help="the JSON of `patchhash bench --out` on your own index and cluster: the model's figures "
                    "from that run instead of a calibration here (no simulated merge)")
    ap.add_argument("--build-rate", type=float, default=30_000,
                    help="with --from-bench: images per second and core that codes and bucket maps are written at")
    add_smoke_and_out_json(ap, "a calibration index of 6,000 images in 3 partitions, 50 queries, 40 simulated partitions")
    args = ap.parse_args(argv)
    if args.smoke:
        args.calibrate_images, args.partition_size, args.queries, args.simulate = 6000, 2000, 50, 40
    if args.from_bench:
        cal, lists = from_bench(args.from_bench, args.build_rate), []
    else:
        with tempfile.TemporaryDirectory(dir=args.workdir) as work:
            cal, lists = calibrate(work, args.calibrate_images, args.partition_size, args.queries)
    encode_rate = 1000 / cal.encode_ms
    print("calibration: " + ", ".join(f"{k} {v:,.3f}" for k, v in asdict(cal).items()))
    checked = check(cal, args.check) if args.check else []
    simulated = simulate_merge(lists, cal.partition_size, args.simulate) if lists else {}
    if simulated:
        print(f"simulated merge of {simulated['partitions']:,} partitions' top-10 lists for {simulated['queries']:,} queries: "
              f"{simulated['merge_s']:.2f} s, {simulated['lists_mb']:.0f} MB of lists ({simulated['largest_task_lists_mb']:.1f} MB "
              f"per merge task; {simulated['one_task_merge_s']:.2f} s in one task), equal to one sort of all of them")
    plans = [plan(cal, args.plan, int(c), encode_rate) for c in args.cores.split(",")]
    print("| cores | partitions per core | local disk per core | index | S3 objects | S3 $/month | build PUTs $ | index time "
          "| ms/query, 1000-query job | 10,000-query batch |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in plans:
        print(f"| {p['cores']:,} | {p['partitions_per_core']} | {p['local_disk_per_core_gb']:.1f} GB | {p['index_gb']:,.0f} GB "
              f"| {p['s3_objects']:,.0f} | {p['s3_storage_usd_per_month']:,.2f} | {p['s3_build_puts_usd']:,.2f} "
              f"| {p['index_hours']:,.1f} h | {p['ms_per_query_1000']:,.1f} | {p['batch_10000_s']:,.0f} s |")
    figures = {"args": vars(args), "calibration": asdict(cal), "s3_prices": S3_PRICES, "check": checked,
               "simulated_merge": simulated, "plan": plans}
    write_json(args.out_json, figures)
    return figures


if __name__ == "__main__":
    main()

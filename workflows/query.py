"""``patchhash query``: answer a batch query file against one version of an index.

query file -> blocks (Dask: read, convert, encode with the index's model)
-> fan-out: one task per (bucket partition, block) running the numba scan
-> one merge task per block (exact global top-k) -> results file, block by block, in order.

At most ``max_blocks_in_flight`` blocks are in the cluster at once, so memory stays bounded
whatever the size of the query file. The manifest is read once: every block is answered
against the same committed version, even if an append commits a new one meanwhile.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict, deque
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from storage import ConfigError, Corpus, CorpusError, join_url, open_corpus
from storage.layout import MODEL_DIR
from storage.location import IndexLocation
from storage.manifest import Manifest, read_manifest
from storage.results import FORMATS, RESULTS_SCHEMA, open_results, results_format
from workflows.cluster import ClusterSettings, dask_client
from workflows.options import check_options, option

__all__ = ["MODES", "QuerySettings", "QueryReport", "query", "image_uris", "image_uri_array"]

log = logging.getLogger(__name__)

MODES = ("default", "seed")
MAX_K = 10_000
# Per-position Hamming radius when none is given: seed 000's t=3 for its rule; for the
# default mode's shortlist, the value docs/QUALITY.md chose.
DEFAULT_THRESHOLD = {"seed": 3, "default": 3}
MAP_LAYOUT = {"seed": "any", "default": "pos"}  # the bucket maps each mode searches
# Default mode: images re-ranked per query and partition; buckets skipped above a share of
# the partition or a number of images; the votes (bucket entries) a query may cast in a
# partition before its radius shrinks. docs/QUALITY.md chose them on Fashion-MNIST, and
# docs/BENCHMARKS.md section 5 on synthetic partitions of 1M images.
DEFAULT_MAX_BUCKET_FRACTION = 0.1
DEFAULT_MAX_BUCKET = 300
DEFAULT_VOTE_BUDGET = 100_000


@dataclass(frozen=True)
class QuerySettings:
    """Options of a query job (``patchhash query``), validated up front.

    ``mode="seed"`` is seed 000's scoring rule exactly (position-free buckets); ``"default"``
    shortlists by positional buckets and re-ranks by the Hamming distance of the whole code
    grid (:mod:`pipeline.rerank`; ``shortlist`` images per query and partition, by default
    :func:`pipeline.rerank.default_shortlist` of the partition's size; buckets of
    more than ``max_bucket_fraction`` of a partition's images or more than ``max_bucket``
    images skipped; the radius shrinks below ``threshold`` where a query's buckets in a
    partition would cast more than ``vote_budget`` votes). ``threshold`` is the
    per-code Hamming radius; ``None`` takes the mode's default (:data:`DEFAULT_THRESHOLD`).
    ``shift_radius`` r > 0 (default mode) also searches each query shifted by up to r pixels
    in steps of ``shift_step`` s (1 or less, e.g. 0.5) and keeps each image's best score
    (:mod:`pipeline.shifts`; (2r/s+1)**2 times the work).
    ``strict`` makes any unreadable query row an error (raised after the results file,
    error rows included, is written).
    """

    k: int = option(10, "Hits per query.", minimum=1, maximum=MAX_K, example="10")
    threshold: int | None = option(None, f"Hamming radius t for matching codes (default: {DEFAULT_THRESHOLD['default']}).",
                                   minimum=0, example="3")
    mode: str = option("default", "Scoring: default (positional shortlist, re-ranked by whole-grid Hamming distance), or seed "
                       "(seed 000's rule exactly).", choices=MODES, example="default")
    shortlist: int | None = option(None, "Default mode: images re-ranked per query and partition [default: 400, or 0.2% of a "
                                   "partition above 200,000 images].", minimum=1, example="400")
    max_bucket_fraction: float = option(DEFAULT_MAX_BUCKET_FRACTION, "Default mode: skip codes shared by more than this "
                                        f"fraction of a partition's images [default: {DEFAULT_MAX_BUCKET_FRACTION}].",
                                        minimum=0, maximum=1, open_minimum=True, example="0.1", show_default=False)
    max_bucket: int = option(DEFAULT_MAX_BUCKET, "Default mode: skip codes shared by more than this many images of a "
                             f"partition [default: {DEFAULT_MAX_BUCKET}].", minimum=1, note=" (images)", example="300",
                             show_default=False)
    vote_budget: int = option(DEFAULT_VOTE_BUDGET, "Default mode: per query and partition, use the largest radius <= t whose "
                              "matching buckets hold at most this many entries in all (an image counts once per matching "
                              f"position) [default: {DEFAULT_VOTE_BUDGET}].", minimum=0, example="100000", show_default=False)
    shift_radius: float = option(0, "Default mode: also search each query shifted by up to this many pixels ((2r/s+1)^2 times "
                                 "the work; r/s <= 4).", minimum=0, check=False, example="0")
    shift_step: float = option(1, "Default mode: the shifts' step s in pixels, 1 or less (0.5 for copies of larger images).",
                               minimum=0, maximum=1, open_minimum=True, check=False, example="1")
    block_size: int = option(1000, "Queries per task.", minimum=1, example="1000")
    strict: bool = option(False, "Exit non-zero if any query cannot be read.", example="false")
    format: str | None = option(None, "parquet, csv, jsonl, or dataset (a folder of Parquet parts, one per block; a rerun "
                                "resumes).", choices=FORMATS, check=False, example="parquet")
    max_blocks_in_flight: int = 8

    def __post_init__(self) -> None:
        check_options(self)
        if self.threshold is None:
            object.__setattr__(self, "threshold", DEFAULT_THRESHOLD[self.mode])
        if self.shift_radius < 0 or (self.shift_radius and self.mode == "seed"):
            raise ConfigError(f"--shift-radius must be >= 0, and 0 in seed mode (the seed's rule has no shifts), got {self.shift_radius}")
        try:
            self.shift_offsets()
        except ValueError as err:
            raise ConfigError(f"--shift-radius / --shift-step: {err} (e.g. --shift-radius 1 --shift-step 0.5)") from None
        if self.max_blocks_in_flight < 1:
            raise ConfigError("max_blocks_in_flight must be >= 1")

    def partition_limits(self, n_images: int) -> tuple[int, int]:
        """The default mode's ``(shortlist, max_bucket)`` in a partition of ``n_images``."""
        from pipeline.rerank import default_shortlist

        return (self.shortlist or default_shortlist(n_images),
                min(self.max_bucket, int(self.max_bucket_fraction * n_images)))

    def shift_offsets(self) -> list[tuple[float, float]]:
        """The offsets each query is searched at (just ``(0, 0)`` without shifts)."""
        from pipeline.shifts import offsets

        return offsets(self.shift_radius, self.shift_step)


@dataclass
class QueryReport:
    index: str
    version: int
    out: str
    n_queries: int = 0
    n_failed: int = 0
    n_without_hits: int = 0
    rows: int = 0
    seconds: float = 0.0
    mean_candidates: float = 0.0
    blocks_skipped: int = 0
    errors: list[dict] = field(default_factory=list)

    @property
    def ms_per_query(self) -> float:
        return 1000 * self.seconds / self.n_queries if self.n_queries else 0.0


@dataclass(frozen=True, eq=False)
class QueryBlock:
    """Encoded queries of one block: ``rows`` are positions in the query file."""

    rows: np.ndarray
    uris: list[str]
    codes: np.ndarray
    errors: list[tuple[int, str, str]]


# --------------------------------------------------------------------------- worker tasks

class WorkerCache:
    """Least-recently-used cache of index arrays in a worker process, bounded in bytes.

    Holds bucket maps (with the multi-index tables built on them) and rows of codes: both are
    immutable once committed, so a worker loads each partition once per job, or once per
    cluster when it stays warm. The budget is ``PATCHHASH_CACHE_BYTES`` (e.g. ``2GiB``), else
    40% of the worker's memory limit, else 2 GiB; the most recent entry is always kept, even
    alone over the budget. Loading runs outside the lock (two threads may both load a key).
    """

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, key: tuple, load):
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        value = load()
        with self._lock:
            self.loads += 1
            self._entries[key] = value
            self._entries.move_to_end(key)
        self.trim()
        return value

    def trim(self) -> None:
        """Evict least recently used entries until the cache fits its budget (sizes are taken
        now: a bucket map grows when its multi-index tables are built)."""
        budget = cache_budget()
        with self._lock:
            sizes = {key: _nbytes(value) for key, value in self._entries.items()}
            total = sum(sizes.values())
            while total > budget and len(self._entries) > 1:
                key, _ = self._entries.popitem(last=False)
                total -= sizes[key]

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(_nbytes(v) for v in self._entries.values())


def cache_budget() -> int:
    """Bytes a worker's :class:`WorkerCache` may hold (see there)."""
    from dask.utils import parse_bytes

    if value := os.environ.get("PATCHHASH_CACHE_BYTES"):
        try:
            return parse_bytes(value)
        except (ValueError, TypeError):
            raise ConfigError(f"PATCHHASH_CACHE_BYTES={value!r} is not a size; set it to e.g. 2GiB or 2000000000") from None
    try:
        from distributed import get_worker

        limit = get_worker().memory_manager.memory_limit
    except (ImportError, ValueError, AttributeError):
        limit = None
    return int(0.4 * limit) if limit else 2 * 2**30


def _nbytes(value) -> int:
    from pipeline.buckets import BucketMap
    from pipeline.mih import index_nbytes

    if isinstance(value, BucketMap):
        return value.keys.nbytes + value.offsets.nbytes + value.ids.nbytes + value.key_bounds.nbytes + index_nbytes(value)
    return value.nbytes


_cache = WorkerCache()


def load_partition(index_url: "IndexLocation | str", partition, storage_options=None):
    """The live bucket map of a :class:`~storage.manifest.SearchPartition`: its base map merged
    with its deltas, tombstoned ids dropped. Every object it is made of is immutable once
    committed, so the result is cached per worker process under the partition's key."""
    from pipeline.buckets import BucketMap, drop_ids, merge_bucket_maps
    from storage.arrays import read_array_group
    from storage.tables import read_parquet

    index = IndexLocation.of(index_url, storage_options)

    def read_map(path: str) -> BucketMap:
        arrays, _ = read_array_group(index.resolve(path), index.storage_options)
        return BucketMap(arrays["keys"], arrays["offsets"], arrays["ids"], arrays["key_bounds"])

    def load():
        maps = [read_map(path) for path in partition.maps]
        bmap = maps[0] if len(maps) == 1 else merge_bucket_maps(maps)
        if partition.tombstones:
            dead = read_parquet(index.resolve(partition.tombstones), index.storage_options, ["image_id"]).column("image_id")
            bmap = drop_ids(bmap, dead.to_numpy())
        return bmap

    return _cache.get(("partition", index.url, partition.key), load)


def load_codes(index_url: "IndexLocation | str", codes: str, start: int, stop: int, storage_options=None) -> np.ndarray:
    """Flattened ``[stop - start, G]`` codes of images ``start..stop`` from the codes array
    ``codes`` (committed rows never change), cached per worker process like the bucket maps."""
    from storage.arrays import read_rows

    index = IndexLocation.of(index_url, storage_options)

    def load():
        return read_rows(index.resolve(codes), start, stop, index.storage_options).reshape(stop - start, -1)

    return _cache.get(("codes", index.url, codes, start, stop), load)


def encode_block_task(index: IndexLocation, shard, shift_radius: float = 0, shift_step: float = 1) -> QueryBlock:
    from pipeline.encode import load_encoder
    from pipeline.shifts import shifted_copies
    from storage import ImageSpec

    encoder = load_encoder(index.join(MODEL_DIR), index.storage_options)
    data = shard.read(ImageSpec(*encoder.input_shape))
    gh, gw = encoder.card.grid
    pixels = shifted_copies(data.pixels, shift_radius, shift_step) if shift_radius else data.pixels
    codes = encoder.encode(pixels).reshape(len(pixels), gh * gw)
    return QueryBlock(data.ids, data.uris, codes, [(e.image_id, e.uri, e.reason) for e in data.errors])


def search_task(index: IndexLocation, partition, block: QueryBlock, settings: QuerySettings, bits: int):
    from pipeline.rerank import rerank_search
    from pipeline.seed import seed_search

    bmap = load_partition(index, partition)
    start, stop = partition.start, partition.stop
    if settings.mode == "seed":
        found = seed_search(block.codes, bmap, settings.threshold, bits, settings.k, id_range=(start, stop))
    else:
        codes = load_codes(index, partition.codes, start, stop)
        shortlist, max_bucket = settings.partition_limits(bmap.n_images)
        found = rerank_search(block.codes, bmap, codes, settings.threshold, bits, settings.k, shortlist, max_bucket,
                              settings.vote_budget, id_range=(start, stop))
        if settings.shift_radius:
            from pipeline.shifts import best_of_copies

            found = best_of_copies(found, len(settings.shift_offsets()), settings.k)
    _cache.trim()  # the search may have built multi-index tables on the map
    return found


def partition_affinity(partitions: list[dict], workers: list[str], tolerance: float = 1.1) -> list[str | None]:
    """The worker each partition's search tasks should run on, or ``None`` for each (anywhere).

    Partitions go to workers greedily, largest first, to the least loaded (in images). Pinned
    this way, a worker loads and caches only its own partitions: with an index larger than
    one worker's cache budget, unpinned tasks would make every worker load every partition,
    again and again. Pinning is used only when it keeps the load balanced: the busiest worker
    at most ``tolerance`` times the mean (so never with fewer partitions than workers). The
    pin is loose: if the worker is lost, its partitions go to the others.
    """
    if not workers or len(partitions) < len(workers):
        return [None] * len(partitions)
    load = {w: 0 for w in sorted(workers)}
    chosen: list[str | None] = [None] * len(partitions)
    for i in sorted(range(len(partitions)), key=lambda i: partitions[i]["start"] - partitions[i]["stop"]):
        worker = min(load, key=load.get)
        chosen[i] = worker
        load[worker] += partitions[i]["stop"] - partitions[i]["start"]
    mean = sum(load.values()) / len(load)
    return chosen if max(load.values()) <= tolerance * mean else [None] * len(partitions)


def merge_task(parts: list, k: int):
    from pipeline.topk import merge_topk

    return merge_topk(parts, k)


# --------------------------------------------------------------------------- client side


def image_uri_array(index: "IndexLocation | str", manifest: Manifest) -> pa.LargeStringArray:
    """Uri of every image id of ``manifest`` as one Arrow array (null for unreadable rows).

    About the uri's length in bytes per image, with no Python object per uri: the query client
    holds it for the whole job, and gathers a block's hits from it with one ``take``.
    """
    from storage.tables import read_parquet

    index = IndexLocation.of(index)
    ids, uris = [], []
    for shard in manifest.shards:
        table = read_parquet(index.resolve(shard.images), index.storage_options)
        ids.append(table.column("image_id").to_numpy())
        uris.extend(table.column("uri").cast(pa.large_string()).chunks)
    ids = np.concatenate(ids) if ids else np.empty(0, np.int64)
    values = pa.concat_arrays(uris) if uris else pa.array([], pa.large_string())
    if np.array_equal(ids, np.arange(manifest.n_images)):
        return values
    position = np.full(manifest.n_images, -1, np.int64)
    position[ids] = np.arange(len(ids))
    return values.take(pa.array(position, mask=position < 0))


def image_uris(index: "IndexLocation | str", manifest: Manifest) -> np.ndarray:
    """Uri of every image id of ``manifest`` (object array; ``None`` for unreadable rows)."""
    return image_uri_array(index, manifest).to_numpy(zero_copy_only=False)


def _block_table(block: QueryBlock, topk, uris: pa.LargeStringArray) -> pa.Table:
    """Result rows of one block, ordered by query row then rank; unreadable queries get one error row."""
    q_idx, ranks = np.nonzero(topk.ids >= 0)
    hit_ids = topk.ids[q_idx, ranks]
    hits = pa.table(
        {
            "query_id": block.rows[q_idx].astype(np.int64),
            "query_uri": pa.array(block.uris, pa.string()).take(q_idx),
            "rank": (ranks + 1).astype(np.int32),
            "image_id": hit_ids,
            "image_uri": uris.take(hit_ids).cast(pa.string()),
            "score": topk.scores[q_idx, ranks],
            "error": pa.nulls(len(q_idx), pa.string()),
        },
        schema=RESULTS_SCHEMA,
    )
    if not block.errors:
        return hits
    rows, failed_uris, reasons = zip(*block.errors)
    n = len(rows)
    errors = pa.table(
        {
            "query_id": pa.array(rows, pa.int64()),
            "query_uri": list(failed_uris),
            "rank": pa.nulls(n, pa.int32()),
            "image_id": pa.nulls(n, pa.int64()),
            "image_uri": pa.nulls(n, pa.string()),
            "score": pa.nulls(n, pa.float64()),
            "error": list(reasons),
        },
        schema=RESULTS_SCHEMA,
    )
    return pa.concat_tables([hits, errors]).sort_by([("query_id", "ascending"), ("rank", "ascending")])


def query(
    index_url: "str | IndexLocation",
    queries: "str | Corpus",
    out: str,
    settings: QuerySettings = QuerySettings(),
    cluster: ClusterSettings = ClusterSettings(),
    storage_options: dict | None = None,
    client=None,
    on_block=None,
    report: str | None = None,
    report_limit: int = 50,
    report_labels: tuple[np.ndarray, np.ndarray] | None = None,
) -> QueryReport:
    """Answer every image of ``queries`` against ``index_url``; write results to ``out``.

    ``queries`` is a corpus URL (folder, glob, IDX, npy, Zarr, uri list) or an opened
    :class:`storage.Corpus`. ``storage_options`` reach ``index_url``, ``queries``, ``out`` and
    ``report`` (or pass an :class:`~storage.location.IndexLocation`, whose options then serve
    them all).

    ``on_block(block, topk)`` (optional) sees each answered block in order, e.g. to collect
    results for an evaluation. ``report`` names an HTML report of the first
    ``report_limit`` queries; ``report_labels`` (label of each image id, label of each query
    row) marks in it which hits share the query's label. Returns a :class:`QueryReport`.
    """
    if report is not None and report_limit < 1:
        raise ConfigError(f"--report-limit must be >= 1, got {report_limit}")
    cache_budget()  # a bad PATCHHASH_CACHE_BYTES fails here, not in every worker task
    shown: list[tuple[QueryBlock, object]] = []

    def collect(block: QueryBlock, topk) -> None:
        if on_block is not None:
            on_block(block, topk)
        if report is not None and sum(len(b.rows) + len(b.errors) for b, _ in shown) < report_limit:
            shown.append((block, topk))

    started = time.perf_counter()
    index = IndexLocation.of(index_url, storage_options)
    storage_options = index.storage_options
    pinned = _resumed_version(out, settings.format, storage_options)
    manifest = read_manifest(index, version=pinned)
    if settings.threshold > manifest.bits:
        raise ConfigError(f"--threshold must be between 0 and the code length {manifest.bits}, got {settings.threshold}")
    source = queries if isinstance(queries, Corpus) else open_corpus(queries, storage_options)
    queries = source.url
    partitions = manifest.search_partitions(MAP_LAYOUT[settings.mode])
    uris = image_uri_array(index, manifest)
    shards = source.shards(settings.block_size)
    result = QueryReport(index.url, manifest.version, out, n_queries=len(source))
    log.info("answering %d queries from %s against %s (version %d, %d partitions, mode %s)",
             len(source), queries, index.url, manifest.version, len(partitions), settings.mode)
    job = {"index": index.url, "version": manifest.version, "queries": queries, "n_queries": len(source),
           "settings": {k: v for k, v in asdict(settings).items() if k not in ("format", "max_blocks_in_flight")}}
    candidates = 0
    window: deque = deque()
    with (
        open_results(out, settings.format, job, storage_options) as writer,
        dask_client(cluster) if client is None else nullcontext(client) as dask,
        tqdm(total=len(shards), desc="query", unit="block", dynamic_ncols=True) as bar,
    ):
        todo = [s for s in shards if s.start not in writer.done]
        if len(todo) < len(shards):
            result.blocks_skipped = len(shards) - len(todo)
            log.info("resuming: %d of %d blocks already answered in %s, skipped", result.blocks_skipped, len(shards), out)
            for marker in writer.done.values():
                result.n_failed += marker["failed"]
                result.n_without_hits += marker["without_hits"]
                candidates += marker["candidates"]
                result.rows += marker["rows"]
            bar.update(result.blocks_skipped)
        next_shards = iter(todo)
        pinned_to = partition_affinity([{"start": p.start, "stop": p.stop} for p in partitions], list(dask.nthreads()))

        def refill() -> None:
            for shard in next_shards:
                block = dask.submit(encode_block_task, index, shard, settings.shift_radius, settings.shift_step, pure=False)
                parts = [dask.submit(search_task, index, p, block, settings, manifest.bits, pure=False,
                                     **({} if w is None else {"workers": [w], "allow_other_workers": True}))
                         for p, w in zip(partitions, pinned_to)]
                window.append((shard, block, dask.submit(merge_task, parts, settings.k, pure=False)))
                if len(window) >= settings.max_blocks_in_flight:
                    return

        try:
            refill()
            while window:  # answer blocks in file order; later blocks keep the cluster busy
                shard, block_future, merged_future = window.popleft()
                block, topk = block_future.result(), merged_future.result()
                refill()
                stats = {"failed": len(block.errors), "without_hits": int(np.sum(topk.ids[:, 0] < 0)),
                         "candidates": int(topk.n_candidates.sum())}
                writer.write_block(shard.start, shard.stop, _block_table(block, topk, uris), stats)
                result.n_failed += stats["failed"]
                result.n_without_hits += stats["without_hits"]
                candidates += stats["candidates"]
                result.errors.extend({"query_id": int(r), "uri": u, "reason": why} for r, u, why in block.errors[: max(0, 20 - len(result.errors))])
                collect(block, topk)
                bar.update(1)
        finally:
            pending = [f for _, *futures in window for f in futures]
            if pending:
                dask.cancel(pending)
    result.rows += writer.rows
    answered = result.n_queries - result.n_failed
    result.mean_candidates = candidates / answered if answered else 0.0
    result.seconds = time.perf_counter() - started
    for err in result.errors[:5]:
        log.warning("query %d (%s) could not be read: %s", err["query_id"], err["uri"], err["reason"])
    if result.n_failed == result.n_queries:
        raise CorpusError(f"{queries}: none of the {result.n_queries} queries could be read (see the errors above); nothing to answer")
    if settings.strict and result.n_failed:
        raise CorpusError(
            f"{queries}: {result.n_failed} query row(s) could not be read and --strict is set "
            f"(the results, with an error row for each, are in {out})"
        )
    log.info("answered %d queries in %.1f s (%.2f ms/query): %d result rows in %s, %d unreadable, %d without hits",
             answered, result.seconds, result.ms_per_query, result.rows, out, result.n_failed, result.n_without_hits)
    if report is not None:
        if result.blocks_skipped:
            log.warning("the report shows queries answered in this run only (%d blocks were answered before)", result.blocks_skipped)
        _write_report(report, shown, report_limit, report_labels, uris, source, settings, result, index)
    return result


def _resumed_version(out: str, fmt: str | None, storage_options) -> int | None:
    """The index version an earlier, interrupted run into the dataset ``out`` answered against:
    a resumed job keeps answering from it, even if the index has moved on since."""
    from storage.atomic import read_json

    if results_format(out, fmt) != "dataset":
        return None
    try:
        return int(read_json(join_url(out.rstrip("/"), "_job.json"), storage_options)["version"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def _write_report(url: str, shown, limit: int, labels, uris, source, settings: QuerySettings, result: QueryReport,
                  index: IndexLocation) -> None:
    """HTML report of the collected blocks: query images beside their hits."""
    from storage import ImageSpec
    from storage.corpus import UriListCorpus
    from workflows.report import ReportHit, ReportQuery, write_report

    from pipeline.modelcard import read_card

    storage_options = index.storage_options
    card = read_card(index.join(MODEL_DIR), storage_options)
    spec = ImageSpec(*card.config.input_shape)
    rows = []
    for block, topk in shown:
        for i, row in enumerate(block.rows):
            rows.append((int(row), block.uris[i], topk.ids[i], topk.scores[i], None))
        rows.extend((int(r), u, None, None, why) for r, u, why in block.errors)
    rows = sorted(rows, key=lambda r: r[0])[:limit]
    hit_ids = sorted({int(i) for r in rows if r[2] is not None for i in r[2] if i >= 0})
    hit_pixels = {}
    if hit_ids:
        data = UriListCorpus("report hits", storage_options, uris.take(hit_ids).to_pylist()).read(spec)
        hit_pixels = {hit_ids[int(j)]: px for j, px in zip(data.ids, data.pixels)}
    first = min(len(source), max((r[0] for r in rows), default=-1) + 1)
    query_data = source.read(spec, 0, first)
    query_pixels = dict(zip(query_data.ids.tolist(), query_data.pixels))
    queries = []
    for row, uri, ids, scores, error in rows:
        hits = () if ids is None else tuple(
            ReportHit(rank=r + 1, image_id=int(i), uri=uris[int(i)].as_py(), score=float(s), pixels=hit_pixels.get(int(i)),
                      label=None if labels is None else str(labels[0][i]))
            for r, (i, s) in enumerate(zip(ids, scores)) if i >= 0
        )
        queries.append(ReportQuery(query_id=row, uri=uri, pixels=query_pixels.get(row), hits=hits, error=error,
                                   label=None if labels is None else str(labels[1][row])))
    summary = {
        "index": result.index, "version": str(result.version), "mode": settings.mode, "k": str(settings.k),
        "threshold": str(settings.threshold), "queries": str(result.n_queries), "unreadable": str(result.n_failed),
        "time": f"{result.seconds:.1f} s ({result.ms_per_query:.2f} ms/query)",
    }
    write_report(url, queries, title=f"patchhash results: {source.url}", summary=summary, storage_options=storage_options)
    log.info("report of %d queries written to %s", len(queries), url)

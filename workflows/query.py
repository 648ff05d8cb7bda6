"""``patchhash query``: answer a batch query file against one version of an index.

query file -> blocks (Dask: read, convert, encode with the index's model)
-> fan-out: one task per (bucket partition, block) running the numba scan
-> one merge task per block (exact global top-k) -> results file, block by block, in order.

At most ``max_blocks_in_flight`` blocks are in the cluster at once (:func:`in_order`), so memory
stays bounded whatever the size of the query file. The manifest is read once: every block is
answered against the same committed version, even if an append commits a new one meanwhile.
:func:`query` only wires the job: :class:`QueryJob` counts what the blocks add up to and keeps
what the report shows; the workers' cache of partitions is :mod:`workflows.worker_cache`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, nullcontext
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pyarrow as pa

from storage import ConfigError, Corpus, CorpusError, ReadError, Shard, join_url, open_corpus
from storage.canonical import BALANCED, mirror_margin
from storage.image_tables import ImageUris, read_image_uris
from storage.layout import MODEL_DIR
from storage.location import IndexLocation
from storage.manifest import Manifest, read_manifest
from storage.retry import RetryPolicy
from storage.results import FORMATS, RESULTS_SCHEMA, open_results, results_format
from storage.uri_cache import uri_cache_budget
from workflows.cluster import ClusterSettings, dask_client
from workflows.options import check_options, option
from workflows.partition_files import local_budget
from workflows.progress import progress
from workflows.worker_cache import cache_budget, load_codes, load_partition, save_tables, trim_worker_cache

__all__ = ["MODES", "QuerySettings", "QueryReport", "QueryBlock", "QueryJob", "query", "in_order", "image_uris"]

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
    images skipped, except in a partition no larger than the shortlist, and except a query's
    smallest exact-match bucket when all of them would be; the radius shrinks below ``threshold`` where a query's buckets in a
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
    flip: bool = option(False, "Also search each query mirrored left-right and keep each image's best score: finds "
                        "mirrored copies, at twice the work (a model with the mirror rule, as icons-photos, finds them "
                        "without it, and searches both ways only the queries balanced left and right).", example="false")
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

        shortlist = self.shortlist or default_shortlist(n_images)
        if n_images <= shortlist:  # every candidate is re-ranked anyway: skipping saves nothing
            return shortlist, n_images
        return shortlist, min(self.max_bucket, int(self.max_bucket_fraction * n_images))

    def shift_offsets(self) -> list[tuple[float, float]]:
        """The offsets each query is searched at (just ``(0, 0)`` without shifts)."""
        from pipeline.shifts import offsets

        return offsets(self.shift_radius, self.shift_step)


@dataclass
class QueryReport:
    """What a query job did. ``errors`` holds the first 20 unreadable queries (``image_id`` is
    the query's row in the query file)."""

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
    errors: list[ReadError] = field(default_factory=list)

    @property
    def ms_per_query(self) -> float:
        return 1000 * self.seconds / self.n_queries if self.n_queries else 0.0


@dataclass(frozen=True, eq=False)
class QueryBlock:
    """Encoded queries of one block: ``rows`` are positions in the query file; ``errors`` the
    block's queries that could not be read (``image_id`` their row)."""

    rows: np.ndarray
    uris: list[str]
    codes: np.ndarray
    errors: list[ReadError]
    owners: np.ndarray | None = None  # per row of codes, its query; None when each query has one row

    @classmethod
    def join(cls, parts: "Sequence[QueryBlock]") -> "QueryBlock":
        """One block of consecutive parts (each encoded by its own task)."""
        if len(parts) == 1:
            return parts[0]
        owners = None
        if any(part.owners is not None for part in parts):
            first = np.cumsum([0] + [len(part.rows) for part in parts[:-1]])
            owners = np.concatenate([(np.arange(len(part.rows)) if part.owners is None else part.owners) + offset
                                     for part, offset in zip(parts, first)])
        return cls(np.concatenate([part.rows for part in parts]), [uri for part in parts for uri in part.uris],
                   np.concatenate([part.codes for part in parts]), [e for part in parts for e in part.errors], owners)


def encode_parts(shard: Shard, n_parts: int) -> list[Shard]:
    """``shard`` cut into at most ``n_parts`` consecutive parts of whole encoder batches, for as
    many tasks to encode at once: a job's first block is encoded before any search can start,
    with the other workers idle (a code never depends on how images are batched)."""
    from pipeline.encode import ENCODE_BATCH

    size = -(-len(shard) // (max(1, n_parts) * ENCODE_BATCH)) * ENCODE_BATCH
    cuts = range(shard.start, shard.stop, max(size, 1))
    return [replace(shard, start=lo, stop=min(lo + size, shard.stop),
                    uris=shard.uris[lo - shard.start:lo - shard.start + size] if shard.uris else ())
            for lo in cuts] or [shard]


# --------------------------------------------------------------------------- worker tasks


def encode_block_task(index: IndexLocation, shard, shift_radius: float = 0, shift_step: float = 1,
                      flip: bool = False) -> QueryBlock:
    from pipeline.encode import load_encoder
    from pipeline.shifts import query_copies

    encoder = load_encoder(index.join(MODEL_DIR), index.storage_options)
    spec = encoder.card.image_spec
    data = shard.read(spec)
    gh, gw = encoder.card.grid
    n, places = len(data.pixels), 1 + len(spec.placements)
    pixels = query_copies(data.pixels, shift_radius, shift_step, flip, places)
    per_query = len(pixels) // n if n else 1
    owners = np.repeat(np.arange(n), per_query)
    if spec.rules.mirror == "mean" and not flip and n:
        # the mirror rule may turn a nearly balanced query and its original different ways: search those both ways
        # (judged by the first placement, the one the rule balances)
        balanced = np.flatnonzero(mirror_margin(data.pixels[:, :spec.height]) < BALANCED)
        owners = np.concatenate([owners, np.repeat(balanced, per_query)])
        pixels = np.concatenate([pixels, query_copies(data.pixels[balanced][:, :, ::-1], shift_radius, shift_step, places=places)])
    codes = encoder.encode(pixels).reshape(len(pixels), gh * gw)
    return QueryBlock(data.ids, data.uris, codes, list(data.errors), owners if len(pixels) > n else None)


def search_task(index: IndexLocation, partition, parts: list[QueryBlock], settings: QuerySettings, bits: int,
                placements: tuple[int, int] = (1, 0)):
    from pipeline.rerank import rerank_search
    from pipeline.seed import seed_search

    block = QueryBlock.join(parts)
    bmap = load_partition(index, partition)  # looked up here, in this module, at each call
    start, stop = partition.start, partition.stop
    if settings.mode == "seed":
        found = seed_search(block.codes, bmap, settings.threshold, bits, settings.k, id_range=(start, stop))
    else:
        codes = load_codes(index, partition)
        shortlist, max_bucket = settings.partition_limits(bmap.n_images)
        found = rerank_search(block.codes, bmap, codes, settings.threshold, bits, settings.k, shortlist, max_bucket,
                              settings.vote_budget, id_range=(start, stop), placements=placements[0], penalty=placements[1])
    if block.owners is not None:
        from pipeline.shifts import best_of_groups

        found = best_of_groups(found, block.owners, len(block.rows), settings.k)
    save_tables(index, partition, bmap)  # the search may have built multi-index tables on the map
    trim_worker_cache()
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


def image_uris(index: "IndexLocation | str", manifest: Manifest) -> np.ndarray:
    """Uri of every image id of ``manifest`` (object array; ``None`` for unreadable rows)."""
    return read_image_uris(index, manifest).to_numpy()


def block_table(block: QueryBlock, topk, uris: ImageUris) -> pa.Table:
    """Result rows of one block, ordered by query row then rank; unreadable queries get one error row."""
    q_idx, ranks = np.nonzero(topk.ids >= 0)
    hit_ids = topk.ids[q_idx, ranks]
    hits = pa.table(
        {
            "query_id": block.rows[q_idx].astype(np.int64),
            "query_uri": pa.array(block.uris, pa.string()).take(q_idx),
            "rank": (ranks + 1).astype(np.int32),
            "image_id": hit_ids,
            "image_uri": uris.take(hit_ids),
            "score": topk.scores[q_idx, ranks],
            "error": pa.nulls(len(q_idx), pa.string()),
        },
        schema=RESULTS_SCHEMA,
    )
    if not block.errors:
        return hits
    n = len(block.errors)
    errors = pa.table(
        {
            "query_id": pa.array([e.image_id for e in block.errors], pa.int64()),
            "query_uri": [e.uri for e in block.errors],
            "rank": pa.nulls(n, pa.int32()),
            "image_id": pa.nulls(n, pa.int64()),
            "image_uri": pa.nulls(n, pa.string()),
            "score": pa.nulls(n, pa.float64()),
            "error": [e.reason for e in block.errors],
        },
        schema=RESULTS_SCHEMA,
    )
    return pa.concat_tables([hits, errors]).sort_by([("query_id", "ascending"), ("rank", "ascending")])


def in_order(dask, shards: Iterable, submit: Callable[[object], list], limit: int) -> Iterator[tuple[object, list]]:
    """``(shard, results)`` of each of ``shards`` in their order, ``results`` those of the futures
    ``submit(shard)`` gives; at most ``limit`` shards in the cluster at once (later blocks keep it
    busy while the first is collected). Closing the generator early cancels what is still in flight."""
    pending = iter(shards)
    window: deque = deque()

    def refill() -> None:
        for shard in pending:
            window.append((shard, submit(shard)))
            if len(window) >= limit:
                return

    try:
        refill()
        while window:
            shard, futures = window.popleft()
            results = [future.result() for future in futures]
            refill()
            yield shard, results
    finally:
        rest = [future for _, futures in window for future in futures]
        if rest:
            dask.cancel(rest)


_MAX_ERRORS = 20  # unreadable queries a QueryReport lists
# Partitions' top-k lists merged by one task. Beyond it, merges form a tree: at 1,000
# partitions one task would receive 160 MB of lists per block of 1,000 queries, each of the
# tree's 5 MB, for the same CPU time (benchmarks/scale_model.py).
_MERGE_FAN_IN = 32


class QueryJob:
    """The client side of one query job, once its manifest is read and its queries opened.

    It submits the tasks of a block, and owns what the answered blocks add up to: a block's
    counts go through :meth:`count` once, whether the block was just answered or read back
    from an earlier run's done-marker (``failed``, ``without_hits``, ``candidates``, ``rows``).
    It keeps the first unreadable queries and the blocks the HTML report shows.
    """

    def __init__(self, index: IndexLocation, queries: "str | Corpus", out: str, settings: QuerySettings,
                 on_block=None, report_limit: int = 0):
        self.index, self.out, self.settings = index, out, settings
        self.manifest = read_manifest(index, version=_resumed_version(out, settings.format, index.storage_options))
        if settings.threshold > self.manifest.bits:
            raise ConfigError(f"--threshold must be between 0 and the code length {self.manifest.bits}, got {settings.threshold}")
        self.source = queries if isinstance(queries, Corpus) else open_corpus(queries, index.storage_options)
        from pipeline.modelcard import read_card

        card = read_card(index.join(MODEL_DIR), index.storage_options, verify=False)
        self.placements = (1 + len(card.placements), card.placement_penalty)  # how the re-rank scores (pipeline.rerank)
        self.partitions = self.manifest.search_partitions(MAP_LAYOUT[settings.mode])
        # Every image's uri is read while the workers answer the first block (0.9-1.7 CPU s at
        # 10M images, which would otherwise hold back the first tasks): needed only to write
        # it. The process keeps what it read for its next jobs (storage.uri_cache).
        reader = ThreadPoolExecutor(1, thread_name_prefix="patchhash-uris")
        self._uris = reader.submit(read_image_uris, index, self.manifest)
        reader.shutdown(wait=False)  # the thread ends with its one task
        self.shards = self.source.shards(settings.block_size)
        self.on_block, self.report_limit = on_block, report_limit
        self.counts = {"failed": 0, "without_hits": 0, "candidates": 0, "rows": 0}
        self.blocks_skipped = 0
        self.errors: list[ReadError] = []
        self.shown: list[tuple[QueryBlock, object]] = []

    @property
    def uris(self) -> ImageUris:
        """Uri of every image id (:func:`storage.image_tables.read_image_uris`), once read."""
        return self._uris.result()

    def spec(self) -> dict:
        """What identifies the job in a results dataset (``_job.json``), for resuming."""
        settings = {k: v for k, v in asdict(self.settings).items() if k not in ("format", "max_blocks_in_flight")}
        return {"index": self.index.url, "version": self.manifest.version, "queries": self.source.url,
                "n_queries": len(self.source), "settings": settings}

    def count(self, stats: dict) -> None:
        """Add one block's counts to the job's."""
        for key in self.counts:
            self.counts[key] += stats[key]

    def resume(self, done: dict[int, dict]) -> list:
        """The shards still to answer; counts the blocks ``done`` (start -> done-marker) holds already."""
        todo = [s for s in self.shards if s.start not in done]
        self.blocks_skipped = len(self.shards) - len(todo)
        if self.blocks_skipped:
            log.info("resuming: %d of %d blocks already answered in %s, skipped", self.blocks_skipped, len(self.shards), self.out)
            for marker in done.values():
                self.count(marker)
        return todo

    def submitter(self, dask) -> Callable[[object], list]:
        """``submit(shard)``: the futures of a block's encoded queries (in parts, encoded at once:
        :func:`encode_parts`) and of its merged top-k (its partitions' search tasks pinned to
        workers when that keeps the load balanced)."""
        settings, bits = self.settings, self.manifest.bits
        nthreads = dask.nthreads()
        pinned_to = partition_affinity([{"start": p.start, "stop": p.stop} for p in self.partitions], list(nthreads))
        n_threads = sum(nthreads.values())

        def submit(shard) -> list:
            blocks = [dask.submit(encode_block_task, self.index, part, settings.shift_radius, settings.shift_step,
                                  settings.flip, pure=False) for part in encode_parts(shard, n_threads)]
            parts = [dask.submit(search_task, self.index, p, blocks, settings, bits, self.placements, pure=False,
                                 **({} if w is None else {"workers": [w], "allow_other_workers": True}))
                     for p, w in zip(self.partitions, pinned_to)]
            while len(parts) > _MERGE_FAN_IN:  # a tree: no task receives every partition's lists at once
                parts = [dask.submit(merge_task, parts[i:i + _MERGE_FAN_IN], settings.k, pure=False)
                         for i in range(0, len(parts), _MERGE_FAN_IN)]
            return [*blocks, dask.submit(merge_task, parts, settings.k, pure=False)]

        return submit

    def answered(self, shard, block: QueryBlock, topk, writer) -> None:
        """Write and count one answered block; keep its unreadable queries and what the report shows."""
        table = block_table(block, topk, self.uris)
        stats = {"failed": len(block.errors), "without_hits": int(np.sum(topk.ids[:, 0] < 0)),
                 "candidates": int(topk.n_candidates.sum())}
        writer.write_block(shard.start, shard.stop, table, stats)
        self.count({**stats, "rows": table.num_rows})
        self.errors += block.errors[: max(0, _MAX_ERRORS - len(self.errors))]
        if self.on_block is not None:
            self.on_block(block, topk)
        if sum(len(b.rows) + len(b.errors) for b, _ in self.shown) < self.report_limit:
            self.shown.append((block, topk))

    def report(self, seconds: float) -> QueryReport:
        """The job's :class:`QueryReport`; raises if no query could be read, or any with ``strict``."""
        n_queries, failed = len(self.source), self.counts["failed"]
        answered = n_queries - failed
        result = QueryReport(self.index.url, self.manifest.version, self.out, n_queries=n_queries, n_failed=failed,
                             n_without_hits=self.counts["without_hits"], rows=self.counts["rows"], seconds=seconds,
                             mean_candidates=self.counts["candidates"] / answered if answered else 0.0,
                             blocks_skipped=self.blocks_skipped, errors=self.errors)
        for err in result.errors[:5]:
            log.warning("query %d (%s) could not be read: %s", err.image_id, err.uri, err.reason)
        queries = self.source.url
        if failed == n_queries:
            raise CorpusError(f"{queries}: none of the {n_queries} queries could be read (see the errors above); nothing to answer")
        if self.settings.strict and failed:
            raise CorpusError(
                f"{queries}: {failed} query row(s) could not be read and --strict is set "
                f"(the results, with an error row for each, are in {self.out})"
            )
        log.info("answered %d queries in %.1f s (%.2f ms/query): %d result rows in %s, %d unreadable, %d without hits",
                 answered, result.seconds, result.ms_per_query, result.rows, self.out, failed, result.n_without_hits)
        return result

    def write_report(self, url: str, labels, result: QueryReport) -> None:
        """HTML report of the blocks kept: query images beside their hits (:mod:`workflows.report`)."""
        from pipeline.modelcard import read_card
        from workflows.report import query_report_rows, write_report

        if result.blocks_skipped:
            log.warning("the report shows queries answered in this run only (%d blocks were answered before)", result.blocks_skipped)
        card = read_card(self.index.join(MODEL_DIR), self.index.storage_options)
        rows = query_report_rows(self.shown, self.report_limit, self.uris, self.source, card.image_spec,
                                 labels, self.index.storage_options)
        settings = self.settings
        summary = {
            "index": result.index, "version": str(result.version), "mode": settings.mode, "k": str(settings.k),
            "threshold": str(settings.threshold), "queries": str(result.n_queries), "unreadable": str(result.n_failed),
            "time": f"{result.seconds:.1f} s ({result.ms_per_query:.2f} ms/query)",
        }
        write_report(url, rows, title=f"patchhash results: {self.source.url}", summary=summary,
                     storage_options=self.index.storage_options)
        log.info("report of %d queries written to %s", len(rows), url)


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
    # a bad setting in the environment fails here, not in every worker task (or in the thread
    # that reads the uris)
    cache_budget(), local_budget(), uri_cache_budget(), RetryPolicy.from_env()
    started = time.perf_counter()
    index = IndexLocation.of(index_url, storage_options)
    job = QueryJob(index, queries, out, settings, on_block, report_limit if report is not None else 0)
    log.info("answering %d queries from %s against %s (version %d, %d partitions, mode %s)",
             len(job.source), job.source.url, index.url, job.manifest.version, len(job.partitions), settings.mode)
    with (
        open_results(out, settings.format, job.spec(), index.storage_options) as writer,
        dask_client(cluster, size=len(job.source), model=index.child(MODEL_DIR)) if client is None else nullcontext(client) as dask,
        progress(len(job.shards), "query", "block") as bar,
    ):
        todo = job.resume(writer.done)
        bar.update(job.blocks_skipped)
        with closing(in_order(dask, todo, job.submitter(dask), settings.max_blocks_in_flight)) as answers:
            for shard, (*blocks, topk) in answers:  # in file order
                job.answered(shard, QueryBlock.join(blocks), topk, writer)
                bar.update(1)
    result = job.report(time.perf_counter() - started)
    if report is not None:
        job.write_report(report, report_labels, result)
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

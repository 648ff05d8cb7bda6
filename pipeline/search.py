"""Scoring a block of queries against one partition of the index, and merging top-k lists.

The index is partitioned by image-id range, so one partition computes complete scores for
its images and returns an exact partial top-k (:class:`TopK`); :func:`merge_topk` merges
the partial lists of disjoint partitions into the exact global top-k.

Ranking everywhere: score descending, then image id ascending. Images with score 0 never
appear; missing entries are padded with id -1 and score 0.
"""

from __future__ import annotations

import logging
import math
import operator
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from .buckets import BucketMap

# numba's cache does not notice edits to kernels of other modules that a cached kernel
# calls: after changing pipeline/hamming.py, delete pipeline/__pycache__/search*.nb[ic].
from .hamming import (
    ball_size,
    enumerate_within,
    mih_build,
    mih_cost,
    mih_split,
    mih_table_bits,
    mih_within,
    prefetch,
    scan_within,
)

__all__ = ["SCORE_DTYPE", "TopK", "SearchIndex", "prepare_index", "seed_search", "merge_topk",
           "choose_method", "mih_substrings", "index_nbytes"]

logger = logging.getLogger(__name__)

SCORE_DTYPE = np.int64
"""Integer type in which seed scores are reported before the cast to float64 (they are
sums of powers of two); the kernels accumulate in the narrowest of int16, int32 and int64
that no total can overflow."""

METHODS = ("auto", "scan", "enumerate", "mih")
_SCAN, _ENUMERATE, _MIH = 0, 1, 2
_METHOD_CODE = {"scan": _SCAN, "enumerate": _ENUMERATE, "mih": _MIH}
"""The kernels' integer code of each method name (numba branches on it)."""

# Costs in units of one popcount comparison of a key scan. Measured on an AMD EPYC (Zen 1,
# 2 GHz): a scan compares ~2.4e9 uint32 keys/s; a probe step of a binary search costs
# 3.5-4 ns (10k to 4M keys). With this value the model picked the faster of scan and
# enumerate in every case tried (d = 16, 32, 64; t = 2, 3; 10k-4M keys).
_PROBE_STEP_COST = 10.0
# A multi-index probe reads a bucket start and the bucket: one or two cache misses on a
# large table (~40 ns). Candidates are estimated for uniformly spread keys; real codes
# cluster, so a probe finds several times more (x7 on Fashion-MNIST codes), at ~1.5 ns
# each. With these values the model picked the fastest method, or one within 25% of it,
# for 300 to 429k Fashion-MNIST keys (t = 2, 3; same machine).
_MIH_PROBE_COST = 100.0
_MIH_CANDIDATE_COST = 25.0

# Scoring (see _score_queries): once a query's codes have hit n_range / _DENSE_DIV (key,
# image) pairs, it stops listing the images it touches and ranks by one pass over the id
# range. A code with at least n_range / _HEAVY_DIV hits (on Fashion-MNIST, half of a
# query's codes, with ~97% of its hits) is first reduced to its per-image best weight in a
# dense array, with no per-hit branch, then added to the totals in one vectorised pass.
# Results hardly depend on the two values (+-5% for divisors 2-8 and 4-64).
_DENSE_DIV = 4
_HEAVY_DIV = 16
# Buckets of most matching keys are small and scattered: the hit loops prefetch the bucket
# of the match this many matches ahead (-30% time on the Fashion-MNIST light codes).
_PREFETCH_AHEAD = 8
# The dense top-k skips chunks of this many images whose best total cannot enter the top-k.
_TOPK_CHUNK = 64
# A heavy code used by several queries of a block has its per-image best weights computed
# once and kept for the block, most-saving codes first, within this many bytes (one byte
# per image of the range while t < 8). On Fashion-MNIST the ~200 most shared codes of a
# 500-query block (6 MB) cut the (key, image) visits per query by 6x.
_SHARED_BYTES = 16 << 20
# Matches of codes that several queries of a block use are found once and kept, most-used
# codes first, within this many bytes (5 per match); other codes are matched per query.
_SHARED_MATCHES_BYTES = 64 << 20


@dataclass(frozen=True, eq=False)
class TopK:
    """Best ``k`` images of each query of a block.

    Attributes
    ----------
    ids : numpy.ndarray
        ``int64`` [q, k], best first; -1 where fewer than ``k`` images scored.
    scores : numpy.ndarray
        ``float64`` [q, k]; 0 where ``ids`` is -1.
    n_candidates : numpy.ndarray
        ``int64`` [q]: number of distinct images with a non-zero score (summed over the
        partitions by :func:`merge_topk`).
    """

    ids: np.ndarray
    scores: np.ndarray
    n_candidates: np.ndarray

    @property
    def k(self) -> int:
        """Number of columns of ``ids`` and ``scores``."""
        return self.ids.shape[1]


@dataclass(frozen=True, eq=False)
class SearchIndex:
    """Multi-index-hashing tables over the keys of one bucket map, one set per key block.

    Built by :func:`prepare_index` (which caches it on the map) and used by
    :func:`seed_search` (position-free maps: one block) and
    :func:`pipeline.rerank.rerank_search` (positional maps: one block per grid position)
    with ``method="mih"``. The ``bits``-bit codes are cut into ``n_substrings`` disjoint
    substrings (:func:`pipeline.hamming.mih_split`); a search of radius ``t`` probes each
    substring's table within radius ``t // n_substrings``. The tables serve any radius;
    their cost is best for the radius they were planned for.

    Attributes
    ----------
    bits : int
        Code width the substrings cut.
    n_keys : int
        Number of keys of the map (a consistency check).
    shifts, widths, table_bits : numpy.ndarray
        ``int64`` [m]: the substrings and the bucket-index width of each table.
    order, table_keys : numpy.ndarray
        [m, n_keys]: the tables of block ``b`` are the columns
        ``key_bounds[b]:key_bounds[b + 1]`` of the map (:func:`pipeline.hamming.mih_build`
        of that block's keys: positions within the block); 8 bytes per key per substring
        for 32-bit keys (12 for 64-bit ones).
    starts : numpy.ndarray
        ``int32`` [B, m, 2**max(table_bits) + 1]: bucket starts of each block's tables.
    """

    bits: int
    n_keys: int
    shifts: np.ndarray
    widths: np.ndarray
    table_bits: np.ndarray
    order: np.ndarray
    table_keys: np.ndarray
    starts: np.ndarray

    @property
    def n_substrings(self) -> int:
        return int(self.shifts.size)

    @property
    def n_blocks(self) -> int:
        return int(self.starts.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.order.nbytes + self.table_keys.nbytes + self.starts.nbytes)


# Indexes built by prepare_index, per bucket map (a map is immutable once built; partitions
# are cached per worker process, so each map's index is built once). Values must not refer
# to their map, or the map would never be collected.
_index_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_index_cache_lock = threading.Lock()


def index_nbytes(bmap: BucketMap) -> int:
    """Bytes of the multi-index tables :func:`prepare_index` has built and cached on ``bmap``."""
    with _index_cache_lock:
        return sum(index.nbytes for index in _index_cache.get(bmap, {}).values())


def mih_substrings(n_keys: int, bits: int, threshold: int) -> int:
    """Number of substrings minimising the multi-index cost model for a search radius."""
    costs = {m: _mih_cost_units(n_keys, bits, threshold, m)
             for m in range(1, min(threshold + 1, bits) + 1)}
    return min(costs, key=costs.get)


def _mih_cost_units(n_keys: int, bits: int, threshold: int, m: int) -> float:
    probes, candidates = mih_cost(bits, threshold, m, n_keys)
    return probes * _MIH_PROBE_COST + candidates * _MIH_CANDIDATE_COST


def prepare_index(bmap: BucketMap, bits: int, threshold: int,
                  n_substrings: int | None = None) -> SearchIndex:
    """The multi-index-hashing tables of a bucket map, built once and cached on it.

    Parameters
    ----------
    bmap : BucketMap
        Position-free or positional bucket map (fewer than 2**31 keys); a positional map
        gets one set of tables per grid position.
    bits : int
        Code width (8..64), as for :func:`seed_search`.
    threshold : int
        The search radius to plan the substrings for.
    n_substrings : int, optional
        Force the number of substrings (1..bits) instead of the cost model's choice (made
        for the mean number of keys per block).

    Returns
    -------
    SearchIndex
        Cached per ``(map, bits, n_substrings)``: later calls return the same object.
        Building is a counting sort of the keys per substring (tens of ms for 1M keys).
    """
    bits, threshold = operator.index(bits), operator.index(threshold)
    keys = bmap.keys
    if not 8 <= bits <= 64 or bits > 8 * keys.dtype.itemsize:
        raise ValueError(
            f"bits must be in 8..64 and fit the map's {keys.dtype} keys, got {bits}"
        )
    if keys.size >= 2**31:
        raise ValueError(f"multi-index hashing needs fewer than 2**31 keys, got {keys.size}")
    per_block = keys.size // max(bmap.n_blocks, 1)
    m = (mih_substrings(per_block, bits, threshold) if n_substrings is None
         else operator.index(n_substrings))
    with _index_cache_lock:
        cached = _index_cache.get(bmap, {}).get((bits, m))
    if cached is not None:
        return cached
    shifts, widths = mih_split(bits, m)
    # one table width for every block (the mean block's), so that the starts stack
    table_bits = mih_table_bits(widths, per_block)
    order = np.empty((m, keys.size), np.int32)
    table_keys = np.empty((m, keys.size), keys.dtype)
    starts = np.empty((bmap.n_blocks, m, (1 << int(table_bits.max())) + 1), np.int32)
    for b in range(bmap.n_blocks):
        lo, hi = int(bmap.key_bounds[b]), int(bmap.key_bounds[b + 1])
        order[:, lo:hi], table_keys[:, lo:hi], starts[b] = mih_build(keys[lo:hi], shifts, widths, table_bits)
    index = SearchIndex(bits, int(keys.size), shifts, widths, table_bits, order, table_keys,
                        starts)
    logger.debug("built a %d-substring index of %d keys in %d block(s) (%d bits): %.1f MB",
                 m, keys.size, bmap.n_blocks, bits, index.nbytes / 1e6)
    with _index_cache_lock:
        # Two threads may race to build the same index: keep the first.
        return _index_cache.setdefault(bmap, {}).setdefault((bits, m), index)


def choose_method(n_keys: int, bits: int, threshold: int) -> str:
    """Pick ``"scan"``, ``"enumerate"`` or ``"mih"`` for a key block by a cost model.

    A scan costs one comparison per key; enumerating costs, per probe of the Hamming
    ball, a binary search of about ``log2(n_keys) + 1`` steps, each worth
    ``_PROBE_STEP_COST`` comparisons; multi-index hashing costs its probes and the
    candidates they find (:func:`pipeline.hamming.mih_cost`), for the best number of
    substrings. The one-off cost of building the multi-index tables is not counted.
    """
    probes = ball_size(bits, threshold)
    costs = {
        "scan": float(n_keys),
        "enumerate": probes * (math.log2(max(n_keys, 1)) + 1) * _PROBE_STEP_COST,
        "mih": _mih_cost_units(n_keys, bits, threshold, mih_substrings(n_keys, bits, threshold)),
    }
    return min(costs, key=costs.get)


def seed_search(
    query_codes: np.ndarray,
    bmap: BucketMap,
    threshold: int,
    bits: int,
    k: int,
    id_range: tuple[int, int] | None = None,
    method: str = "auto",
    index: SearchIndex | None = None,
) -> TopK:
    """Score a block of queries against one position-free partition with seed 000's rule.

    For each code ``c`` of a query (with multiplicity), every indexed code within Hamming
    distance ``d <= threshold`` of ``c`` scores ``2**(threshold - d)``; an image keeps the
    maximum of these over its codes for ``c``; its score is the sum over the query's codes.

    Parameters
    ----------
    query_codes : numpy.ndarray
        Integer [q, G'] codes below ``2**bits``; G' need not equal the index's G.
    bmap : BucketMap
        Position-free bucket map of the partition.
    threshold : int
        Hamming radius ``t``, ``0 <= t <= bits``.
    bits : int
        Code width ``d`` (8..64); must fit the map's key dtype.
    k : int
        Number of images to return per query (>= 1).
    id_range : (int, int), optional
        ``(start, stop)``: the partition's image ids; defaults to the span of the map's ids.
    method : {"auto", "scan", "enumerate", "mih"}
        How to find the indexed codes near a query code; all give identical results.
        ``"mih"`` is multi-index hashing (:class:`SearchIndex`). ``"auto"`` chooses by
        :func:`choose_method`, or takes ``"mih"`` when ``index`` is given.
    index : SearchIndex, optional
        Multi-index tables of ``bmap`` from :func:`prepare_index` (for ``"mih"``); by
        default they are built on first use and cached on the map.

    Returns
    -------
    TopK
        Exact top-``k`` of the partition per query.

    Notes
    -----
    A code that several queries of the block use is matched against the keys once; and if
    it hits many images, its per-image best weights are computed once too (see
    ``_SHARED_BYTES``, ``_SHARED_MATCHES_BYTES``). Otherwise each query visits one
    (matching key, image) pair per hit of each of its distinct codes. Scratch memory: up
    to 80 MiB for the block-level sharing, 11 to 17 bytes per id of ``id_range``, 21
    bytes per key, and the multi-index tables (cached on the map; see
    :class:`SearchIndex`).
    """
    threshold, bits, k = (operator.index(v) for v in (threshold, bits, k))
    queries = _check_queries(query_codes, bmap, bits)
    _check_search_args(bmap, threshold, bits, k, method, queries.shape[1])
    start, stop = _check_id_range(bmap, id_range)
    keys = bmap.block_keys(0)
    if keys.size >= 2**31:
        raise ValueError(f"seed_search handles fewer than 2**31 keys, got {keys.size}")
    if method == "auto":
        method = "mih" if index is not None else choose_method(keys.size, bits, threshold)
    if method == "mih":
        if index is None:
            index = prepare_index(bmap, bits, threshold)
        elif index.n_keys != keys.size or index.bits != bits or index.n_blocks != 1 \
                or index.table_keys.dtype != keys.dtype:
            raise ValueError("index was not prepared for this bucket map and code width")
        tables = (index.shifts, index.widths, index.table_bits, index.order,
                  index.table_keys, index.starts[0])
    else:
        tables = _NO_TABLES.get(keys.dtype) or _no_tables(keys.dtype)
    logger.debug("seed_search: %d queries, %d keys, ids [%d, %d), method %s",
                 queries.shape[0], keys.size, start, stop, method)
    n_queries = queries.shape[0]
    ids = np.full((n_queries, k), -1, np.int64)
    scores = np.zeros((n_queries, k), SCORE_DTYPE)
    n_candidates = np.zeros(n_queries, np.int64)
    if n_queries == 0 or queries.shape[1] == 0:
        return TopK(ids, scores.astype(np.float64), n_candidates)
    # The block's distinct codes; each query row as indices into them, sorted so that a
    # repeated code is one run (scored once, with its multiplicity).
    codes, inverse = np.unique(queries, return_inverse=True)
    code_of = np.sort(inverse.reshape(queries.shape).astype(np.int32), axis=1)
    method_code = _METHOD_CODE[method]
    uses = _code_uses(code_of, codes.size)
    # Codes shared by several queries are matched once for the block (5 bytes a match).
    match_lo, match_hi, code_hits, match_keys, match_dists = _shared_matches(
        codes, uses, keys, bmap.offsets, bits, threshold, method_code, tables,
        _SHARED_MATCHES_BYTES // 5)
    # Totals of a query are at most G' * 2**t: the narrowest integer accumulators that
    # hold that; a code's best weight is at most 2**t: one byte while that fits.
    n_range = stop - start
    max_total = queries.shape[1] << threshold
    acc_dtype = np.int16 if max_total < 2**15 else np.int32 if max_total < 2**31 else np.int64
    best_dtype = np.uint8 if threshold < 8 else acc_dtype
    dense_hits, heavy_hits = _scoring_thresholds(n_range)
    row_bytes = n_range * np.dtype(best_dtype).itemsize
    max_shared = _SHARED_BYTES // row_bytes if row_bytes else 0
    slot_of, n_shared = _plan_shared(uses, code_hits, heavy_hits, max_shared)
    _score_queries(code_of, codes, keys, bmap.offsets, bmap.ids, bits, threshold, method_code,
                   tables, match_lo, match_hi, code_hits, match_keys, match_dists, start,
                   np.zeros(n_range, acc_dtype), np.zeros(n_range, best_dtype), dense_hits,
                   heavy_hits, slot_of, np.zeros((n_shared, n_range), best_dtype), ids, scores,
                   n_candidates)
    return TopK(ids, scores.astype(np.float64), n_candidates)


def _scoring_thresholds(n_range: int) -> tuple[int, int]:
    """``(dense_hits, heavy_hits)`` for an id range of ``n_range`` images (see
    :func:`_score_queries`); the tests replace it to force each scoring path."""
    return max(1, n_range // _DENSE_DIV), max(1, n_range // _HEAVY_DIV)


_NO_TABLES: dict = {}


def _no_tables(dtype) -> tuple:
    """Placeholder multi-index tables (of the right types) for the other methods."""
    empty = np.zeros(1, np.int64)
    tables = (empty, empty, empty, np.zeros((1, 1), np.int32), np.zeros((1, 1), dtype),
              np.zeros((1, 2), np.int32))
    _NO_TABLES[dtype] = tables
    return tables


def _check_queries(query_codes, bmap: BucketMap, bits: int) -> np.ndarray:
    """Query codes as a C-contiguous array of the map's key dtype."""
    queries = np.asarray(query_codes)
    if queries.ndim != 2 or (queries.size and queries.dtype.kind not in "iu"):
        raise ValueError(
            f"query codes must be a 2-d integer array, got {queries.dtype}{queries.shape}"
        )
    if not 8 <= bits <= 64 or bits > 8 * bmap.keys.dtype.itemsize:
        raise ValueError(
            f"bits must be in 8..64 and fit the map's {bmap.keys.dtype} keys, got {bits}"
        )
    if queries.size and (queries.min() < 0 or int(queries.max()) >> bits):
        raise ValueError(f"query codes must lie in [0, 2**{bits})")
    if bmap.keys.size and int(bmap.keys.max()) >> bits:
        raise ValueError(f"the bucket map holds codes wider than {bits} bits")
    return np.ascontiguousarray(queries, dtype=bmap.keys.dtype)


def _check_search_args(bmap, threshold, bits, k, method, n_query_codes) -> None:
    if bmap.positional:
        raise ValueError(
            "seed_search needs a position-free bucket map (seed 000 ignores positions)"
        )
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if not 0 <= threshold <= bits:
        raise ValueError(f"threshold must be in 0..{bits}, got {threshold}")
    # Scores are reported as float64: keep every possible total exactly representable.
    if max(n_query_codes, 1) << threshold > 2**53:
        raise ValueError(f"threshold {threshold} is too large for exact scores of "
                         f"{n_query_codes} query codes")


def _check_id_range(bmap: BucketMap, id_range) -> tuple[int, int]:
    lo, hi = bmap.id_span
    if id_range is None:
        return lo, hi
    start, stop = int(id_range[0]), int(id_range[1])
    if lo < hi and not (start <= lo and hi <= stop):
        raise ValueError(f"id_range [{start}, {stop}) does not hold the map's ids [{lo}, {hi})")
    if stop < start:
        raise ValueError(f"id_range [{start}, {stop}) ends before it starts")
    return start, stop


@njit(nogil=True, cache=True)
def _find_sorted(code, keys, offsets, bits, t, method, tables, found_idx, found_dist,
                 per_dist, out_keys, out_dists, pos):
    """Find the keys within ``t`` of ``code`` and write them to ``out_*[pos:]`` by
    non-decreasing distance (scoring relies on it).

    ``tables`` are the multi-index tables (used by ``method == _MIH`` only);
    ``found_*`` and ``per_dist`` are scratch. Returns the number of matches and their
    number of (key, image) pairs.
    """
    if method == _SCAN:
        n_found = scan_within(code, keys, t, found_idx, found_dist)
    elif method == _ENUMERATE:
        n_found = enumerate_within(code, keys, bits, t, found_idx, found_dist)
    else:
        n_found = mih_within(code, t, tables[0], tables[1], tables[2], tables[3], tables[4],
                             tables[5], found_idx, found_dist)
    # Counting sort by distance, stable in the finder's order.
    per_dist[:] = 0
    hits = 0
    for j in range(n_found):
        per_dist[found_dist[j] + 1] += 1
        key = found_idx[j]
        hits += offsets[key + 1] - offsets[key]
    for d in range(t + 1):
        per_dist[d + 1] += per_dist[d]
    for j in range(n_found):
        at = pos + per_dist[found_dist[j]]
        per_dist[found_dist[j]] += 1
        out_keys[at] = found_idx[j]
        out_dists[at] = found_dist[j]
    return n_found, hits


@njit(nogil=True, cache=True)
def _code_uses(code_of, n_codes):
    """Number of queries using each of the block's distinct codes."""
    uses = np.zeros(n_codes, np.int64)
    for qi in range(code_of.shape[0]):
        row = code_of[qi]
        for j in range(row.size):
            if j == 0 or row[j] != row[j - 1]:
                uses[row[j]] += 1
    return uses


@njit(nogil=True, cache=True)
def _shared_matches(codes, uses, keys, offsets, bits, t, method, tables, max_matches):
    """Matches of the codes that several queries of the block use, found once.

    Most-used codes first, until ``max_matches`` matches are kept. Returns ``match_lo``,
    ``match_hi`` (int64 per code: its matches are ``match_*[lo:hi]``; -1 if not kept),
    ``code_hits`` (int64 per code: (key, image) pairs of its matches; -1 if not kept),
    ``match_keys`` (int32 key positions) and ``match_dists`` (int8), by non-decreasing
    distance within a code.
    """
    n_codes = codes.size
    match_lo = np.full(n_codes, -1, np.int64)
    match_hi = np.full(n_codes, -1, np.int64)
    code_hits = np.full(n_codes, -1, np.int64)
    capacity = 1024
    match_keys = np.empty(capacity, np.int32)
    match_dists = np.empty(capacity, np.int8)
    found_idx = np.empty(keys.size, np.int64)
    found_dist = np.empty(keys.size, np.int64)
    sorted_keys = np.empty(keys.size, np.int32)
    sorted_dists = np.empty(keys.size, np.int8)
    per_dist = np.zeros(t + 2, np.int64)
    n = 0
    for c in np.argsort(-uses, kind="mergesort"):
        if uses[c] < 2:
            break
        n_found, hits = _find_sorted(codes[c], keys, offsets, bits, t, method, tables,
                                     found_idx, found_dist, per_dist, sorted_keys,
                                     sorted_dists, 0)
        if n + n_found > max_matches:
            break
        if n + n_found > capacity:
            capacity = min(max(2 * capacity, n + n_found), max(max_matches, n + n_found))
            match_keys = _grow(match_keys, n, capacity)
            match_dists = _grow(match_dists, n, capacity)
        match_keys[n:n + n_found] = sorted_keys[:n_found]
        match_dists[n:n + n_found] = sorted_dists[:n_found]
        match_lo[c] = n
        match_hi[c] = n + n_found
        code_hits[c] = hits
        n += n_found
    return match_lo, match_hi, code_hits, match_keys[:n], match_dists[:n]


@njit(nogil=True, cache=True)
def _grow(arr, n, capacity):
    out = np.empty(capacity, arr.dtype)
    out[:n] = arr[:n]
    return out


@njit(nogil=True, cache=True)
def _plan_shared(uses, code_hits, heavy_hits, max_shared):
    """Which heavy codes keep their per-image best weights for the whole block.

    Returns ``slot_of`` (int32 per distinct code: its row of the shared array, or -1) and
    the number of rows: the ``max_shared`` codes, among those with known hits
    (``code_hits >= 0``) that are heavy and used by several queries, that save the most
    (key, image) visits.
    """
    n_codes = uses.size
    saving = np.zeros(n_codes, np.int64)
    for c in range(n_codes):
        if uses[c] >= 2 and code_hits[c] >= heavy_hits:
            saving[c] = (uses[c] - 1) * code_hits[c]
    slot_of = np.full(n_codes, -1, np.int32)
    n_shared = 0
    for c in np.argsort(-saving, kind="mergesort"):
        if n_shared >= max_shared or saving[c] == 0:
            break
        slot_of[c] = n_shared
        n_shared += 1
    return slot_of, n_shared


@njit(nogil=True, cache=True)
def _score_queries(code_of, codes, keys, offsets, bucket_ids, bits, t, method, tables,
                   match_lo, match_hi, code_hits, match_keys, match_dists, start, totals, best,
                   dense_hits, heavy_hits, slot_of, shared, out_ids, out_scores,
                   out_candidates):
    """Seed scores of every query, reduced to each query's top-k (written to ``out_*``).

    Row ``q`` of ``code_of`` holds query ``q``'s codes as ascending indices into the
    block's distinct ``codes``; a code repeated r times is scored once, with weight r. A
    code's matches come from the block's shared matches (:func:`_shared_matches`) or are
    found here. ``totals`` (accumulator dtype) and ``best`` (best-weight dtype) are zeroed
    scratch over the id range; ``shared`` holds a row of best weights for each code given
    a slot by :func:`_plan_shared`, filled on first use.

    A query keeps a list of the images it touches (so that resetting and ranking cost the
    hits, not the range) until its hits reach a fraction of the range, or it meets a heavy
    code; from then on it scores densely over the range, its heavy codes through per-image
    best weights added in one vectorised pass.
    """
    n_range = totals.size
    weights = np.empty(t + 1, totals.dtype)
    best_weights = np.empty(t + 1, best.dtype)
    for d in range(t + 1):
        weights[d] = 1 << (t - d)
        best_weights[d] = 1 << (t - d)
    # stamp[i] == current marks image i as already scored for the current query code.
    stamp = np.zeros(n_range, np.int32)
    touched = np.empty(n_range, np.int32)
    built = np.zeros(shared.shape[0], np.bool_)
    found_idx = np.empty(keys.size, np.int64)
    found_dist = np.empty(keys.size, np.int64)
    own_keys = np.empty(keys.size, np.int32)
    own_dists = np.empty(keys.size, np.int8)
    per_dist = np.zeros(t + 2, np.int64)
    current = 0
    for qi in range(code_of.shape[0]):
        row = code_of[qi]
        dense = False
        query_hits = 0
        n_touched = 0
        j = 0
        while j < row.size:
            c = row[j]
            run = 1
            while j + run < row.size and row[j + run] == c:
                run += 1
            j += run
            if match_lo[c] >= 0:
                src_keys = match_keys
                src_dists = match_dists
                lo = match_lo[c]
                hi = match_hi[c]
                hits = code_hits[c]
            else:
                src_keys = own_keys
                src_dists = own_dists
                lo = 0
                hi, hits = _find_sorted(codes[c], keys, offsets, bits, t, method, tables,
                                        found_idx, found_dist, per_dist, own_keys,
                                        own_dists, 0)
            query_hits += hits
            heavy = hits >= heavy_hits
            # The touched list is abandoned once dense: the top-k then scans the range.
            dense = dense or heavy or query_hits >= dense_hits
            if heavy:
                slot = slot_of[c]
                if slot >= 0:
                    if not built[slot]:
                        _best_weights(src_keys, src_dists, lo, hi, best_weights, offsets,
                                      bucket_ids, start, shared[slot])
                        built[slot] = True
                    _add_best(totals, shared[slot], run, False)
                else:
                    _best_weights(src_keys, src_dists, lo, hi, best_weights, offsets,
                                  bucket_ids, start, best)
                    _add_best(totals, best, run, True)
            else:
                if current == 2**31 - 1:
                    stamp[:] = 0
                    current = 0
                current += 1
                if dense:
                    _add_code_dense(src_keys, src_dists, lo, hi, run, weights, offsets,
                                    bucket_ids, start, totals, stamp, current)
                else:
                    n_touched = _add_code_sparse(src_keys, src_dists, lo, hi, run, weights,
                                                 offsets, bucket_ids, start, totals, stamp,
                                                 current, touched, n_touched)
        if dense:
            out_candidates[qi] = _select_topk_dense(totals, start, out_ids[qi], out_scores[qi])
            totals[:] = 0
        else:
            out_candidates[qi] = n_touched
            _select_topk(touched, n_touched, totals, start, out_ids[qi], out_scores[qi])
            for i in range(n_touched):
                totals[touched[i]] = 0


@njit(nogil=True, cache=True)
def _add_best(totals, best, multiplicity, clear):
    """``totals += multiplicity * best`` (then ``best[:] = 0`` if ``clear``)."""
    m = totals.dtype.type(multiplicity)
    for i in range(np.uint64(totals.size)):
        totals[i] += m * totals.dtype.type(best[i])
    if clear:
        best[:] = 0


@njit(nogil=True, cache=True)
def _best_weights(match_keys, match_dists, lo, hi, weights, offsets, bucket_ids, start, best):
    """``best[i]``: the largest weight of image ``i`` among matches ``lo:hi`` (0 if none).

    Branch-free, for codes with many hits (most images met more than once).
    """
    for m in range(lo, hi):
        if m + _PREFETCH_AHEAD < hi:
            prefetch(bucket_ids, offsets[match_keys[m + _PREFETCH_AHEAD]])
        key = match_keys[m]
        w = weights[match_dists[m]]
        # Unsigned indices: numba then skips its negative-index wraparound (-30% time).
        for p in range(np.uint64(offsets[key]), np.uint64(offsets[key + 1])):
            i = np.uint64(bucket_ids[p] - start)
            best[i] = max(best[i], w)


@njit(nogil=True, cache=True)
def _add_code_dense(match_keys, match_dists, lo, hi, multiplicity, weights, offsets,
                    bucket_ids, start, totals, stamp, current):
    """Add one query code's scores (times ``multiplicity``) to the image totals.

    Matches come by increasing distance, so the first time an image is met is with its
    best (maximum) score for this code; later meetings are skipped via ``stamp``.
    """
    for m in range(lo, hi):
        if m + _PREFETCH_AHEAD < hi:
            prefetch(bucket_ids, offsets[match_keys[m + _PREFETCH_AHEAD]])
        key = match_keys[m]
        w = multiplicity * weights[match_dists[m]]
        for p in range(np.uint64(offsets[key]), np.uint64(offsets[key + 1])):
            i = np.uint64(bucket_ids[p] - start)
            if stamp[i] != current:
                stamp[i] = current
                totals[i] += w


@njit(nogil=True, cache=True)
def _add_code_sparse(match_keys, match_dists, lo, hi, multiplicity, weights, offsets,
                     bucket_ids, start, totals, stamp, current, touched, n_touched):
    """:func:`_add_code_dense` that also lists the images it touches first; returns the
    new number of touched images."""
    for m in range(lo, hi):
        if m + _PREFETCH_AHEAD < hi:
            prefetch(bucket_ids, offsets[match_keys[m + _PREFETCH_AHEAD]])
        key = match_keys[m]
        w = multiplicity * weights[match_dists[m]]
        for p in range(np.uint64(offsets[key]), np.uint64(offsets[key + 1])):
            i = np.uint64(bucket_ids[p] - start)
            if stamp[i] != current:
                stamp[i] = current
                if totals[i] == 0:
                    touched[n_touched] = i
                    n_touched += 1
                totals[i] += w
    return n_touched


@njit(nogil=True, cache=True)
def _select_topk_dense(totals, start, out_ids, out_scores):
    """:func:`_select_topk` over every image of the range with a non-zero total; returns
    their number.

    Images come by ascending id, so one that ties the worst kept loses. The range goes by
    chunks: a vectorised pass takes each chunk's maximum (and counts its non-zero totals),
    and only a chunk whose maximum beats the worst kept is ranked image by image.
    """
    k = out_ids.size
    heap_scores = np.empty(k, np.int64)
    heap_ids = np.empty(k, np.int64)
    size = 0
    n_nonzero = 0
    for base in range(0, totals.size, _TOPK_CHUNK):
        end = min(base + _TOPK_CHUNK, totals.size)
        chunk_max = totals.dtype.type(0)
        n_chunk = 0
        for i in range(base, end):
            chunk_max = max(chunk_max, totals[i])
            n_chunk += totals[i] != 0
        n_nonzero += n_chunk
        if chunk_max == 0 or (size == k and np.int64(chunk_max) <= heap_scores[0]):
            continue
        for i in range(base, end):
            score = np.int64(totals[i])
            if score == 0:
                continue
            if size < k:
                heap_scores[size] = score
                heap_ids[size] = i + start
                _sift_up(heap_scores, heap_ids, size)
                size += 1
            elif score > heap_scores[0]:
                heap_scores[0] = score
                heap_ids[0] = i + start
                _sift_down(heap_scores, heap_ids, size, 0)
    _drain_heap(heap_scores, heap_ids, size, out_ids, out_scores)
    return n_nonzero


@njit(nogil=True, cache=True)
def _worse(score_a, id_a, score_b, id_b):
    """Whether (score_a, id_a) ranks after (score_b, id_b)."""
    return score_a < score_b or (score_a == score_b and id_a > id_b)


@njit(nogil=True, cache=True)
def _sift_down(heap_scores, heap_ids, size, pos):
    """Restore the worst-at-root heap order below ``pos``."""
    while True:
        child = 2 * pos + 1
        if child >= size:
            return
        right = child + 1
        if right < size and _worse(heap_scores[right], heap_ids[right],
                                   heap_scores[child], heap_ids[child]):
            child = right
        if not _worse(heap_scores[child], heap_ids[child], heap_scores[pos], heap_ids[pos]):
            return
        heap_scores[pos], heap_scores[child] = heap_scores[child], heap_scores[pos]
        heap_ids[pos], heap_ids[child] = heap_ids[child], heap_ids[pos]
        pos = child


@njit(nogil=True, cache=True)
def _sift_up(heap_scores, heap_ids, pos):
    while pos > 0:
        parent = (pos - 1) // 2
        if not _worse(heap_scores[pos], heap_ids[pos], heap_scores[parent], heap_ids[parent]):
            return
        heap_scores[pos], heap_scores[parent] = heap_scores[parent], heap_scores[pos]
        heap_ids[pos], heap_ids[parent] = heap_ids[parent], heap_ids[pos]
        pos = parent


@njit(nogil=True, cache=True)
def _select_topk(touched, n_touched, totals, start, out_ids, out_scores):
    """Write the best ``out_ids.size`` touched images, best first, into ``out_*``.

    A heap of the k best so far, worst at the root: O(n log k) for n touched images.
    ``out_*`` must come pre-filled with the padding (-1, 0).
    """
    k = out_ids.size
    heap_scores = np.empty(k, np.int64)
    heap_ids = np.empty(k, np.int64)
    size = 0
    for j in range(n_touched):
        i = touched[j]
        score = totals[i]
        image = i + start
        if size < k:
            heap_scores[size] = score
            heap_ids[size] = image
            _sift_up(heap_scores, heap_ids, size)
            size += 1
        elif _worse(heap_scores[0], heap_ids[0], score, image):
            heap_scores[0] = score
            heap_ids[0] = image
            _sift_down(heap_scores, heap_ids, size, 0)
    _drain_heap(heap_scores, heap_ids, size, out_ids, out_scores)


@njit(nogil=True, cache=True)
def _drain_heap(heap_scores, heap_ids, size, out_ids, out_scores):
    """Write a worst-at-root heap of ``size`` entries into ``out_*``, best first."""
    for pos in range(size - 1, -1, -1):
        out_scores[pos] = heap_scores[0]
        out_ids[pos] = heap_ids[0]
        heap_scores[0] = heap_scores[pos]
        heap_ids[0] = heap_ids[pos]
        _sift_down(heap_scores, heap_ids, pos, 0)


def merge_topk(parts: Sequence[TopK], k: int) -> TopK:
    """Merge the partial top-k lists of disjoint partitions into the exact global top-k.

    Parameters
    ----------
    parts : sequence of TopK
        At least one; all for the same block of queries, over disjoint sets of images.
        Each must hold its partition's exact top-``k`` (or more).
    k : int
        Number of images to keep per query (>= 1).

    Returns
    -------
    TopK
        Best first by score descending then id ascending; ``n_candidates`` summed.
    """
    parts = list(parts)
    k = operator.index(k)
    if not parts:
        raise ValueError("merge_topk needs at least one partial result")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    n_queries = parts[0].ids.shape[0]
    if any(p.ids.shape[0] != n_queries for p in parts):
        raise ValueError("merge_topk: partial results are for different numbers of queries")
    for p in parts:
        if p.k < k and np.any(p.n_candidates > p.k):
            raise ValueError(f"merge_topk: a partial result keeps only its top-{p.k} of more "
                             f"hits, so the global top-{k} cannot be exact")
    ids = np.concatenate([p.ids for p in parts], axis=1)
    scores = np.concatenate([p.scores for p in parts], axis=1)
    padding = ids < 0
    # Padding sorts last: below every real score (all > 0), and by an id above any real one.
    order = np.lexsort((np.where(padding, np.iinfo(np.int64).max, ids),
                        -np.where(padding, -np.inf, scores)), axis=-1)[:, :k]
    top_ids = np.full((n_queries, k), -1, np.int64)
    top_scores = np.zeros((n_queries, k), np.float64)
    width = order.shape[1]
    top_ids[:, :width] = np.take_along_axis(ids, order, axis=1)
    top_scores[:, :width] = np.take_along_axis(scores, order, axis=1)
    top_scores[top_ids < 0] = 0.0
    n_candidates = np.sum([p.n_candidates for p in parts], axis=0, dtype=np.int64)
    return TopK(top_ids, top_scores, n_candidates)

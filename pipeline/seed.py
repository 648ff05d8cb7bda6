"""Seed mode: seed 000's scoring rule (:func:`seed_search`) for a block of queries against one
position-free partition, reduced to the partition's exact top-k (:class:`pipeline.topk.TopK`).

The kernels find each distinct query code's matching keys (:mod:`pipeline.mih` picks how),
turn them into per-image scores, listing the images a query touches or, for codes with many
hits, over the whole id range, and rank them (:func:`pipeline.topk.select_topk`). Codes that
several queries of a block use are matched, and their per-image best weights computed, once
for the block.
"""
from __future__ import annotations

import logging
import operator

import numpy as np
from numba import njit

from .buckets import BucketMap
from .hamming import enumerate_within, mih_within, scan_within
from .jit import PREFETCH_AHEAD, grow, prefetch
from .mih import ENUMERATE, METHOD_CODE, METHODS, SCAN, SearchIndex, choose_method, no_tables, prepare_index
from .topk import TopK, check_id_range, select_topk, select_topk_dense

__all__ = ["SCORE_DTYPE", "seed_search"]

logger = logging.getLogger(__name__)

SCORE_DTYPE = np.int64
"""Integer type in which seed scores are reported before the cast to float64 (they are
sums of powers of two); the kernels accumulate in the narrowest of int16, int32 and int64
that no total can overflow."""

# Scoring (see _score_queries): once a query's codes have hit n_range / _DENSE_DIV (key,
# image) pairs, it stops listing the images it touches and ranks by one pass over the id
# range. A code with at least n_range / _HEAVY_DIV hits (on Fashion-MNIST, half of a
# query's codes, with ~97% of its hits) is first reduced to its per-image best weight in a
# dense array, with no per-hit branch, then added to the totals in one vectorised pass.
# Results hardly depend on the two values (+-5% for divisors 2-8 and 4-64).
_DENSE_DIV = 4
_HEAVY_DIV = 16
# A heavy code used by several queries of a block has its per-image best weights computed
# once and kept for the block, most-saving codes first, within this many bytes (one byte
# per image of the range while t < 8). On Fashion-MNIST the ~200 most shared codes of a
# 500-query block (6 MB) cut the (key, image) visits per query by 6x.
_SHARED_BYTES = 16 << 20
# Matches of codes that several queries of a block use are found once and kept, most-used
# codes first, within this many bytes (5 per match); other codes are matched per query.
_SHARED_MATCHES_BYTES = 64 << 20


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
        ``"mih"`` is multi-index hashing (:class:`pipeline.mih.SearchIndex`). ``"auto"`` chooses by
        :func:`pipeline.mih.choose_method`, or takes ``"mih"`` when ``index`` is given.
    index : SearchIndex, optional
        Multi-index tables of ``bmap`` from :func:`pipeline.mih.prepare_index` (for ``"mih"``); by
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
    :class:`pipeline.mih.SearchIndex`).
    """
    threshold, bits, k = (operator.index(v) for v in (threshold, bits, k))
    queries = _check_queries(query_codes, bmap, bits)
    _check_search_args(bmap, threshold, bits, k, method, queries.shape[1])
    start, stop = check_id_range(bmap, id_range)
    keys = bmap.group_keys(0)
    if keys.size >= 2**31:
        raise ValueError(f"seed_search handles fewer than 2**31 keys, got {keys.size}")
    if method == "auto":
        method = "mih" if index is not None else choose_method(keys.size, bits, threshold)
    if method == "mih":
        if index is None:
            index = prepare_index(bmap, bits, threshold)
        elif index.n_keys != keys.size or index.bits != bits or index.n_groups != 1 \
                or index.table_keys.dtype != keys.dtype:
            raise ValueError("index was not prepared for this bucket map and code width")
        tables = (index.shifts, index.widths, index.table_bits, index.order,
                  index.table_keys, index.starts[0])
    else:
        tables = no_tables(keys.dtype)
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
    method_code = METHOD_CODE[method]
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
                   tables, match_lo, match_hi, code_hits, match_keys, match_dists, start - bmap.id_base,
                   np.zeros(n_range, acc_dtype), np.zeros(n_range, best_dtype), dense_hits,
                   heavy_hits, slot_of, np.zeros((n_shared, n_range), best_dtype), ids, scores,
                   n_candidates)
    ids[ids >= 0] += bmap.id_base  # the kernel counts ids as the map stores them
    return TopK(ids, scores.astype(np.float64), n_candidates)


def _scoring_thresholds(n_range: int) -> tuple[int, int]:
    """``(dense_hits, heavy_hits)`` for an id range of ``n_range`` images (see
    :func:`_score_queries`); the tests replace it to force each scoring path."""
    return max(1, n_range // _DENSE_DIV), max(1, n_range // _HEAVY_DIV)




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


@njit(nogil=True, cache=True)
def _find_sorted(code, keys, offsets, bits, t, method, tables, found_idx, found_dist,
                 per_dist, out_keys, out_dists, pos):
    """Find the keys within ``t`` of ``code`` and write them to ``out_*[pos:]`` by
    non-decreasing distance (scoring relies on it).

    ``tables`` are the multi-index tables (used by ``method == MIH`` only);
    ``found_*`` and ``per_dist`` are scratch. Returns the number of matches and their
    number of (key, image) pairs.
    """
    if method == SCAN:
        n_found = scan_within(code, keys, t, found_idx, found_dist)
    elif method == ENUMERATE:
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
            match_keys = grow(match_keys, n, capacity)
            match_dists = grow(match_dists, n, capacity)
        match_keys[n:n + n_found] = sorted_keys[:n_found]
        match_dists[n:n + n_found] = sorted_dists[:n_found]
        match_lo[c] = n
        match_hi[c] = n + n_found
        code_hits[c] = hits
        n += n_found
    return match_lo, match_hi, code_hits, match_keys[:n], match_dists[:n]


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
            out_candidates[qi] = select_topk_dense(totals, start, out_ids[qi], out_scores[qi])
            totals[:] = 0
        else:
            out_candidates[qi] = n_touched
            select_topk(touched, n_touched, totals, start, out_ids[qi], out_scores[qi])
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
        if m + PREFETCH_AHEAD < hi:
            prefetch(bucket_ids, offsets[match_keys[m + PREFETCH_AHEAD]])
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
        if m + PREFETCH_AHEAD < hi:
            prefetch(bucket_ids, offsets[match_keys[m + PREFETCH_AHEAD]])
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
        if m + PREFETCH_AHEAD < hi:
            prefetch(bucket_ids, offsets[match_keys[m + PREFETCH_AHEAD]])
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


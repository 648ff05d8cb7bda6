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
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from .buckets import BucketMap

# numba's cache does not notice edits to kernels of other modules that a cached kernel
# calls: after changing pipeline/hamming.py, delete pipeline/__pycache__/search*.nb[ic].
from .hamming import ball_size, enumerate_within, scan_within

__all__ = ["SCORE_DTYPE", "TopK", "seed_search", "merge_topk", "choose_method"]

logger = logging.getLogger(__name__)

SCORE_DTYPE = np.int64
"""Integer type in which seed scores are accumulated (they are sums of powers of two)."""

METHODS = ("auto", "scan", "enumerate")

# Cost of one binary-search step of a Hamming-ball probe, in units of one popcount
# comparison of a key scan. Measured on an AMD EPYC (Zen 1, 2 GHz): a scan compares
# ~2.4e9 uint32 keys/s; a probe step costs 3.5-4 ns (10k to 4M keys). With this value the
# model picked the faster method in every case tried (d = 16, 32, 64; t = 2, 3; 10k-4M keys).
_PROBE_STEP_COST = 10.0


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


def choose_method(n_keys: int, bits: int, threshold: int) -> str:
    """Pick ``"scan"`` or ``"enumerate"`` for a key block by a cost model.

    A scan costs one comparison per key; enumerating costs, per probe of the Hamming
    ball, a binary search of about ``log2(n_keys) + 1`` steps, each worth
    ``_PROBE_STEP_COST`` comparisons.
    """
    probes = ball_size(bits, threshold)
    enumerate_cost = probes * (math.log2(max(n_keys, 1)) + 1) * _PROBE_STEP_COST
    return "enumerate" if enumerate_cost < n_keys else "scan"


def seed_search(
    query_codes: np.ndarray,
    bmap: BucketMap,
    threshold: int,
    bits: int,
    k: int,
    id_range: tuple[int, int] | None = None,
    method: str = "auto",
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
    method : {"auto", "scan", "enumerate"}
        How to find the indexed codes near a query code; all give identical results.
        ``"auto"`` chooses by :func:`choose_method`.

    Returns
    -------
    TopK
        Exact top-``k`` of the partition per query.

    Notes
    -----
    Work per query is the scan (or probes) for each distinct query code plus one visit
    per (matching key, image) pair; scratch memory is 24 bytes per id of ``id_range``.
    """
    threshold, bits, k = (operator.index(v) for v in (threshold, bits, k))
    queries = _check_queries(query_codes, bmap, bits)
    _check_search_args(bmap, threshold, bits, k, method, queries.shape[1])
    start, stop = _check_id_range(bmap, id_range)
    keys = bmap.block_keys(0)
    if method == "auto":
        method = choose_method(keys.size, bits, threshold)
    logger.debug("seed_search: %d queries, %d keys, ids [%d, %d), method %s",
                 queries.shape[0], keys.size, start, stop, method)
    n_queries = queries.shape[0]
    ids = np.full((n_queries, k), -1, np.int64)
    scores = np.zeros((n_queries, k), SCORE_DTYPE)
    n_candidates = np.zeros(n_queries, np.int64)
    # Sorted rows put repeated query codes side by side, to be scored once.
    _seed_scores(np.sort(queries, axis=1), keys, bmap.offsets, bmap.ids, start, stop - start,
                 threshold, bits, method == "enumerate", ids, scores, n_candidates)
    return TopK(ids, scores.astype(np.float64), n_candidates)


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
def _seed_scores(sorted_queries, keys, offsets, bucket_ids, start, n_range, t, bits,
                 use_enumerate, out_ids, out_scores, out_candidates):
    """Seed scores of every query, reduced to each query's top-k (written to ``out_*``).

    Each row of ``sorted_queries`` holds one query's codes in ascending order; a code
    repeated r times is scored once, with weight r.

    Per-image totals live in a dense array over the partition's id range; a list of the
    images touched by the current query makes resetting it cost the hits, not the range.
    """
    weights = np.empty(t + 1, np.int64)
    for d in range(t + 1):
        weights[d] = np.int64(1) << (t - d)
    totals = np.zeros(n_range, np.int64)
    # stamp[i] == current marks image i as already scored for the current query code.
    stamp = np.zeros(n_range, np.int64)
    touched = np.empty(n_range, np.int64)
    match_idx = np.empty(keys.size, np.int64)
    match_dist = np.empty(keys.size, np.int64)
    current = 0
    for qi in range(sorted_queries.shape[0]):
        codes = sorted_queries[qi]
        n_touched = 0
        j = 0
        while j < codes.size:
            run = 1
            while j + run < codes.size and codes[j + run] == codes[j]:
                run += 1
            if use_enumerate:
                n_match = enumerate_within(codes[j], keys, bits, t, match_idx, match_dist)
            else:
                n_match = scan_within(codes[j], keys, t, match_idx, match_dist)
            current += 1
            n_touched = _add_code_scores(match_idx, match_dist, n_match, t, run, weights,
                                         offsets, bucket_ids, start, totals, stamp, current,
                                         touched, n_touched)
            j += run
        out_candidates[qi] = n_touched
        _select_topk(touched, n_touched, totals, start, out_ids[qi], out_scores[qi])
        for i in range(n_touched):
            totals[touched[i]] = 0


@njit(nogil=True, cache=True)
def _add_code_scores(match_idx, match_dist, n_match, t, multiplicity, weights, offsets,
                     bucket_ids, start, totals, stamp, current, touched, n_touched):
    """Add one query code's scores (times ``multiplicity``) to the image totals.

    Matches are visited by increasing distance, so the first time an image is met is with
    its best (maximum) score for this code; later meetings are skipped via ``stamp``.
    Returns the new number of touched images.
    """
    for d in range(t + 1):
        w = multiplicity * weights[d]
        for m in range(n_match):
            if match_dist[m] != d:
                continue
            key = match_idx[m]
            for p in range(offsets[key], offsets[key + 1]):
                i = bucket_ids[p] - start
                if stamp[i] != current:
                    stamp[i] = current
                    if totals[i] == 0:
                        touched[n_touched] = i
                        n_touched += 1
                    totals[i] += w
    return n_touched


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

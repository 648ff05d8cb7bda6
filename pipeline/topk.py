"""Per-partition top-k lists of image ids and their exact merge.

The index is partitioned by image-id range, so one partition computes complete scores for
its images and returns an exact partial top-k (:class:`TopK`); :func:`merge_topk` merges
the partial lists of disjoint partitions into the exact global top-k. The kernels
:func:`select_topk` and :func:`select_topk_dense` rank a partition's scores inside the
search kernels of both modes (:mod:`pipeline.seed`, :mod:`pipeline.rerank`).

Ranking everywhere: score descending, then image id ascending. Images with score 0 never
appear; missing entries are padded with id -1 and score 0.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numba import njit

if TYPE_CHECKING:  # no import at run time: the kernels' cache then depends on this file only
    from .buckets import BucketMap

__all__ = ["TopK", "merge_topk", "check_id_range", "select_topk", "select_topk_dense", "offer", "offer_at", "drain_heap",
           "sort_heap"]

# The dense top-k skips chunks of this many images whose best total cannot enter the top-k.
_TOPK_CHUNK = 64


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


def check_id_range(bmap: BucketMap, id_range) -> tuple[int, int]:
    """A partition's ``(start, stop)`` image ids: ``id_range``, checked to hold the ids of
    ``bmap``, or by default the span of those ids. A top-k kernel takes ``start`` to turn
    positions in the range into image ids."""
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
def select_topk_dense(totals, start, out_ids, out_scores):
    """:func:`select_topk` over every image of the range with a non-zero total; returns
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
            if score != 0:
                size = offer(heap_scores, heap_ids, size, score, i + start)
    drain_heap(heap_scores, heap_ids, size, out_ids, out_scores)
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
def select_topk(touched, n_touched, totals, start, out_ids, out_scores):
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
        size = offer(heap_scores, heap_ids, size, totals[i], i + start)
    drain_heap(heap_scores, heap_ids, size, out_ids, out_scores)


@njit(nogil=True, cache=True)
def offer(heap_scores, heap_ids, size, score, image):
    """Offer ``(score, image)`` to a worst-at-root heap of ``size`` entries whose capacity is
    ``heap_scores.size``; returns its new size. Where the heap is full, it is kept only if it
    ranks before the root."""
    if size < heap_scores.size:
        heap_scores[size] = score
        heap_ids[size] = image
        _sift_up(heap_scores, heap_ids, size)
        return size + 1
    if _worse(heap_scores[0], heap_ids[0], score, image):
        heap_scores[0] = score
        heap_ids[0] = image
        _sift_down(heap_scores, heap_ids, size, 0)
    return size


@njit(nogil=True, cache=True, inline="always")
def offer_at(heap_scores, heap_ids, sizes, row, score, image):
    """:func:`offer` to heap ``row`` of the 2-D heaps ``heap_*`` (``sizes[row]`` entries each).
    The common case, a full heap whose root ranks before the offer, touches only the root."""
    size = sizes[row]
    if size == heap_scores.shape[1] and not _worse(heap_scores[row, 0], heap_ids[row, 0], score, image):
        return
    sizes[row] = offer(heap_scores[row], heap_ids[row], size, score, image)


@njit(nogil=True, cache=True)
def sort_heap(heap_scores, heap_ids, size):
    """Sort a worst-at-root heap of ``size`` entries in place, best first (heapsort)."""
    for pos in range(size - 1, 0, -1):
        heap_scores[0], heap_scores[pos] = heap_scores[pos], heap_scores[0]
        heap_ids[0], heap_ids[pos] = heap_ids[pos], heap_ids[0]
        _sift_down(heap_scores, heap_ids, pos, 0)


@njit(nogil=True, cache=True)
def drain_heap(heap_scores, heap_ids, size, out_ids, out_scores):
    """Write a worst-at-root heap of ``size`` entries into ``out_*``, best first (sorting the heap in place)."""
    sort_heap(heap_scores, heap_ids, size)
    for pos in range(size):
        out_scores[pos] = heap_scores[pos]
        out_ids[pos] = heap_ids[pos]


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

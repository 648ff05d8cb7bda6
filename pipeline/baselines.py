"""Reference retrieval methods on raw pixels, for ``patchhash evaluate``.

* **pixel-knn**: exact k nearest neighbours by Euclidean distance between pixel vectors.
* **lsh-B**: locality-sensitive hashing with ``B`` random hyperplanes (seed 004): a pixel
  vector, centred on the mean indexed image, gets bit ``j`` set when its projection on the
  ``j``-th Gaussian random vector is positive; images are ranked by the exact Hamming
  distance of these codes to the query's.

Both rank every indexed image (they are the yardsticks, not indexes), best first, ties by
image id. They hold the pixels of the whole index in memory: they are meant for
evaluation-sized corpora (Fashion-MNIST's 60k images take 47 MB).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .hamming import distance

__all__ = ["pixel_knn", "lsh_codes", "hamming_knn"]

_BATCH = 1024  # rows per matrix product: queries in pixel_knn, 8x as many images in lsh_codes


def pixel_knn(index_pixels: np.ndarray, query_pixels: np.ndarray, k: int) -> np.ndarray:
    """Ids (rows of ``index_pixels``) of the ``k`` nearest images to each query by L2 distance.

    Parameters
    ----------
    index_pixels, query_pixels : numpy.ndarray
        ``[n, ...]`` and ``[q, ...]`` images of one shape (any numeric dtype).
    k : int
        Neighbours per query (capped at ``n``; missing columns are -1).

    Returns
    -------
    numpy.ndarray
        ``int64 [q, k]``, nearest first; equal distances by ascending id.
    """
    x = np.asarray(index_pixels, np.float32).reshape(len(index_pixels), -1)
    q = np.asarray(query_pixels, np.float32).reshape(len(query_pixels), -1)
    if x.shape[1] != q.shape[1]:
        raise ValueError(f"index images have {x.shape[1]} values each but queries have {q.shape[1]}")
    x_norms = np.einsum("ij,ij->i", x, x)
    out = np.full((len(q), k), -1, np.int64)
    for lo in range(0, len(q), _BATCH):
        batch = q[lo:lo + _BATCH]
        # ||q - x||^2 minus the query's own norm, which does not change the order
        dist = x_norms[None, :] - 2.0 * (batch @ x.T)
        out[lo:lo + len(batch), :min(k, len(x))] = _smallest(dist, k)
    return out


def _smallest(dist: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` smallest values per row, ascending, ties by index."""
    k = min(k, dist.shape[1])
    part = np.argpartition(dist, k - 1, axis=1)[:, :k] if k < dist.shape[1] else np.tile(np.arange(dist.shape[1]), (len(dist), 1))
    # widen to every column tied with the k-th value so that ties resolve by index
    kth = np.take_along_axis(dist, part, axis=1).max(axis=1)
    rows = []
    for i in range(len(dist)):
        cand = np.flatnonzero(dist[i] <= kth[i])
        order = np.lexsort((cand, dist[i, cand]))[:k]
        rows.append(cand[order])
    return np.array(rows, np.int64)


def lsh_codes(pixels: np.ndarray, bits: int, mean: np.ndarray, seed: int = 0) -> np.ndarray:
    """Random-hyperplane codes of ``pixels``, packed into ``uint64 [n, ceil(bits / 64)]``.

    ``mean`` (the mean indexed image, flattened) centres the data; the hyperplanes are drawn
    from ``seed``, so the index and the queries must use the same ``bits``, ``mean`` and ``seed``.
    """
    if bits < 1:
        raise ValueError(f"bits must be >= 1, got {bits}")
    x = np.asarray(pixels, np.float32).reshape(len(pixels), -1) - np.asarray(mean, np.float32).reshape(1, -1)
    planes = np.random.default_rng(seed).standard_normal((x.shape[1], bits)).astype(np.float32)
    words = -(-bits // 64)
    packed = np.zeros((len(x), words), np.uint64)
    for lo in range(0, len(x), 8 * _BATCH):
        signs = (x[lo:lo + 8 * _BATCH] @ planes) > 0
        padded = np.zeros((len(signs), words * 64), np.uint8)
        padded[:, :bits] = signs
        packed[lo:lo + len(signs)] = np.packbits(padded, axis=1, bitorder="little").view("<u8").astype(np.uint64)
    return packed


def hamming_knn(index_codes: np.ndarray, query_codes: np.ndarray, k: int) -> np.ndarray:
    """Ids of the ``k`` nearest index codes to each query code by Hamming distance.

    ``index_codes`` and ``query_codes`` are packed ``uint64 [n, w]`` and ``[q, w]``. Returns
    ``int64 [q, k]``, nearest first, ties by ascending id (-1 where ``n < k``).
    """
    index_codes = np.ascontiguousarray(index_codes, np.uint64)
    query_codes = np.ascontiguousarray(query_codes, np.uint64)
    if index_codes.shape[1] != query_codes.shape[1]:
        raise ValueError("index and query codes have different widths")
    out = np.full((len(query_codes), k), -1, np.int64)
    if len(index_codes):
        _hamming_knn(index_codes, query_codes, min(k, len(index_codes)), out)
    return out


@njit(parallel=True, cache=True)
def _hamming_knn(index_codes, query_codes, k, out):
    n, words = index_codes.shape
    max_dist = 64 * words
    for qi in prange(query_codes.shape[0]):
        dist = np.empty(n, np.int64)
        counts = np.zeros(max_dist + 2, np.int64)
        for i in range(n):
            d = 0
            for w in range(words):
                d += distance(index_codes[i, w], query_codes[qi, w])
            dist[i] = d
            counts[d] += 1
        # counting sort by distance: stable, so ties come out by ascending id
        cut, total = 0, 0
        while total + counts[cut] < k:
            total += counts[cut]
            cut += 1
        starts = np.zeros(cut + 1, np.int64)
        acc = 0
        for d in range(cut + 1):
            starts[d] = acc
            acc += counts[d]
        for i in range(n):
            d = dist[i]
            if d <= cut:
                pos = starts[d]
                if pos < k:
                    out[qi, pos] = i
                starts[d] = pos + 1

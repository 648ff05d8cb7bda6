"""Query-time shift tolerance: search with shifted copies of each query and keep the best.

Codes come from patches on a fixed grid, so an image shifted by a pixel or two gets other
codes. With ``radius`` r, each query is also encoded at every offset ``(dy, dx)`` with
``|dy|, |dx| <= r`` (edges replicated), every copy is searched, and an image's score is its
best over the copies. This costs ``(2r + 1)**2`` times the encoding and search of one query.
"""

from __future__ import annotations

import numpy as np

from .search import TopK

__all__ = ["offsets", "shifted_copies", "best_of_copies"]


def offsets(radius: int) -> list[tuple[int, int]]:
    """The ``(dy, dx)`` offsets of ``radius``, the unshifted one first."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    around = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1) if (dy, dx) != (0, 0)]
    return [(0, 0), *around]


def shifted_copies(pixels: np.ndarray, radius: int) -> np.ndarray:
    """``[n * V, h, w, c]``: the ``V`` shifted copies of each image, image-major.

    Copy ``v`` of image ``i`` is row ``i * V + v``; it shows the image moved by
    ``offsets(radius)[v]`` (content moves down/right for positive offsets), the uncovered
    border filled by replicating the nearest edge pixels.
    """
    pixels = np.asarray(pixels)
    n, h, w = pixels.shape[:3]
    shifts = offsets(radius)
    if radius >= min(h, w):
        raise ValueError(f"shift radius {radius} is not smaller than the image ({h}x{w})")
    padded = np.pad(pixels, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
    out = np.empty((n, len(shifts), *pixels.shape[1:]), pixels.dtype)
    for v, (dy, dx) in enumerate(shifts):
        out[:, v] = padded[:, radius - dy:radius - dy + h, radius - dx:radius - dx + w]
    return out.reshape(n * len(shifts), *pixels.shape[1:])


def best_of_copies(topk: TopK, n_copies: int, k: int) -> TopK:
    """Merge the results of each query's ``n_copies`` consecutive rows: an image keeps its
    best score over the copies; best ``k`` by score descending, then id. ``n_candidates``
    is summed over the copies."""
    n_rows = topk.ids.shape[0]
    if n_rows % n_copies:
        raise ValueError(f"{n_rows} result rows are not a whole number of {n_copies} copies")
    n = n_rows // n_copies
    ids = topk.ids.reshape(n, -1)
    scores = topk.scores.reshape(n, -1)
    out_ids = np.full((n, k), -1, np.int64)
    out_scores = np.zeros((n, k), np.float64)
    for q in range(n):
        valid = ids[q] >= 0
        qi, qs = ids[q][valid], scores[q][valid]
        order = np.lexsort((qi, -qs))  # best first; the first occurrence of an id is its best
        qi, qs = qi[order], qs[order]
        _, first = np.unique(qi, return_index=True)
        keep = np.sort(first)[:k]
        out_ids[q, :len(keep)] = qi[keep]
        out_scores[q, :len(keep)] = qs[keep]
    return TopK(out_ids, out_scores, topk.n_candidates.reshape(n, n_copies).sum(axis=1))

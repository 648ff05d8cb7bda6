"""Query-time shift (and mirror) tolerance: search with shifted copies of each query and keep the best.

Codes come from patches on a fixed grid, so an image shifted by a pixel or two gets other
codes. With ``radius`` r and ``step`` s, each query is also encoded at every offset
``(dy, dx)`` that is a multiple of s with ``|dy|, |dx| <= r`` (edges replicated), every copy
is searched, and an image's score is its best over the copies. This costs
``(2 r / s + 1)**2`` times the encoding and search of one query.

A step of half a pixel serves copies of larger images: a photo moved by 2 pixels at 112x112
is moved by half a pixel at the model's 28x28, plus the blur of the resize. Fractional
offsets are interpolated bilinearly, and the blur that interpolation adds is taken back by an
unsharp mask (the copy plus its difference from a 3x3 box blur of itself); docs/QUALITY.md
measured both.

With ``flip`` (``--flip``) the left-right mirror of each query is searched too, with the same
shifts: a mirrored copy of an indexed image is found at twice the cost of a query. A query job
merges each query's copies by :func:`best_of_groups`, which takes any number per query: with a
model that has the mirror rule, it mirrors only some queries (:mod:`storage.canonical`).
"""

from __future__ import annotations

import math

import numpy as np

from .topk import TopK

__all__ = ["offsets", "shifted_copies", "query_copies", "best_of_copies", "best_of_groups"]

MAX_STEPS = 4
"""Offsets per direction at most (``radius / step``): 81 copies of each query."""


def offsets(radius: float, step: float = 1) -> list[tuple[float, float]]:
    """The ``(dy, dx)`` offsets of ``radius`` in multiples of ``step``, the unshifted one first."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1] pixel, got {step}")
    n = round(radius / step)
    if not math.isclose(n * step, radius, abs_tol=1e-9):
        raise ValueError(f"radius must be a multiple of step: got radius {radius}, step {step}")
    if n > MAX_STEPS:
        raise ValueError(f"at most {MAX_STEPS} steps each way ({(2 * MAX_STEPS + 1) ** 2} copies of each query): "
                         f"got radius {radius}, step {step}")
    values = [i * step if step != 1 else i for i in range(-n, n + 1)]
    around = [(dy, dx) for dy in values for dx in values if (dy, dx) != (0, 0)]
    return [(0, 0), *around]


def shifted_copies(pixels: np.ndarray, radius: float, step: float = 1) -> np.ndarray:
    """``[n * V, h, w, c]``: the ``V`` shifted copies of each image, image-major.

    Copy ``v`` of image ``i`` is row ``i * V + v``; it shows the image moved by
    ``offsets(radius, step)[v]`` (content moves down/right for positive offsets), the
    uncovered border filled by replicating the nearest edge pixels. Whole-pixel offsets copy
    pixels; fractional ones are interpolated and sharpened (module docstring).
    """
    pixels = np.asarray(pixels)
    n, h, w = pixels.shape[:3]
    shifts = offsets(radius, step)
    if radius >= min(h, w):
        raise ValueError(f"shift radius {radius} is not smaller than the image ({h}x{w})")
    pad = math.ceil(radius) + 1
    padded = np.pad(pixels, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    out = np.empty((n, len(shifts), *pixels.shape[1:]), pixels.dtype)
    for v, (dy, dx) in enumerate(shifts):
        if float(dy).is_integer() and float(dx).is_integer():
            out[:, v] = _window(padded, pad, int(dy), int(dx), h, w)
        else:
            out[:, v] = _to_dtype(_sharpen(_interpolated(padded, pad, dy, dx, h, w)), pixels.dtype)
    return out.reshape(n * len(shifts), *pixels.shape[1:])


def query_copies(pixels: np.ndarray, radius: float = 0, step: float = 1, flip: bool = False, places: int = 1) -> np.ndarray:
    """``[n * V, h, w, c]``: the copies of each image a query searches with, image-major.

    Without ``flip`` these are :func:`shifted_copies` (just ``pixels`` when ``radius`` is 0);
    with it, each image's shifted copies are followed by those of its left-right mirror, so
    that mirrored copies in the index are found (``V`` doubles, and so does the work). An image
    of several ``places`` (placements one below the other, ``h / places`` rows each) has each
    placement shifted and mirrored on its own.
    """
    pixels = np.asarray(pixels)
    copies = _shifted(pixels, radius, step, places) if radius else pixels
    if not flip:
        return copies
    mirrored = _shifted(pixels[:, :, ::-1], radius, step, places) if radius else pixels[:, :, ::-1]
    n = pixels.shape[0]
    both = np.stack([copies.reshape(n, -1, *pixels.shape[1:]), mirrored.reshape(n, -1, *pixels.shape[1:])], axis=1)
    return np.ascontiguousarray(both.reshape(-1, *pixels.shape[1:]))


def _shifted(pixels: np.ndarray, radius: float, step: float, places: int) -> np.ndarray:
    """:func:`shifted_copies` of images of ``places`` placements one below the other, each
    placement moved within its own rows."""
    if places == 1:
        return shifted_copies(pixels, radius, step)
    n, h, w, c = pixels.shape
    copies = shifted_copies(pixels.reshape(n * places, h // places, w, c), radius, step)
    copies = copies.reshape(n, places, -1, h // places, w, c).transpose(0, 2, 1, 3, 4, 5)
    return np.ascontiguousarray(copies.reshape(-1, h, w, c))


def _window(padded: np.ndarray, pad: int, dy: int, dx: int, h: int, w: int) -> np.ndarray:
    return padded[:, pad - dy:pad - dy + h, pad - dx:pad - dx + w]


def _interpolated(padded: np.ndarray, pad: int, dy: float, dx: float, h: int, w: int) -> np.ndarray:
    """Bilinear interpolation of the images moved by a fractional ``(dy, dx)``."""
    out = np.zeros((padded.shape[0], h, w, padded.shape[3]), np.float32)
    for iy, wy in _taps(dy):
        for ix, wx in _taps(dx):
            out += (wy * wx) * _window(padded, pad, iy, ix, h, w).astype(np.float32)
    return out


def _taps(offset: float) -> list[tuple[int, float]]:
    low = math.floor(offset)
    frac = offset - low
    return [(low, 1 - frac)] + ([(low + 1, frac)] if frac else [])


def _sharpen(images: np.ndarray) -> np.ndarray:
    """Unsharp mask: ``2 x - box3x3(x)``, edges replicated."""
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = images.shape[1:3]
    box = sum(padded[:, 1 + a:1 + a + h, 1 + b:1 + b + w] for a in (-1, 0, 1) for b in (-1, 0, 1)) / 9
    return 2 * images - box


def _to_dtype(images: np.ndarray, dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(images), info.min, info.max).astype(dtype)
    return images.astype(dtype)


def best_of_copies(topk: TopK, n_copies: int, k: int) -> TopK:
    """Merge the results of each query's ``n_copies`` consecutive rows: an image keeps its
    best score over the copies; best ``k`` by score descending, then id. ``n_candidates``
    is summed over the copies."""
    n_rows = topk.ids.shape[0]
    if n_rows % n_copies:
        raise ValueError(f"{n_rows} result rows are not a whole number of {n_copies} copies")
    n = n_rows // n_copies
    return best_of_groups(topk, np.repeat(np.arange(n), n_copies), n, k)


def best_of_groups(topk: TopK, owners: np.ndarray, n: int, k: int) -> TopK:
    """As :func:`best_of_copies`, with row ``r`` a copy of query ``owners[r]`` (``0 <= owners < n``;
    a query may have any number of copies)."""
    owners = np.asarray(owners)
    if owners.shape != (topk.ids.shape[0],) or (len(owners) and not 0 <= owners.min() <= owners.max() < n):
        raise ValueError(f"owners must name one of {n} queries for each of the {topk.ids.shape[0]} result rows")
    out_ids = np.full((n, k), -1, np.int64)
    out_scores = np.zeros((n, k), np.float64)
    order = np.argsort(owners, kind="stable")
    bounds = np.searchsorted(owners[order], np.arange(n + 1))
    for q in range(n):
        rows = order[bounds[q]:bounds[q + 1]]
        qi, qs = topk.ids[rows].ravel(), topk.scores[rows].ravel()
        valid = qi >= 0
        qi, qs = qi[valid], qs[valid]
        best = np.lexsort((qi, -qs))  # best first; the first occurrence of an id is its best
        qi, qs = qi[best], qs[best]
        _, first = np.unique(qi, return_index=True)
        keep = np.sort(first)[:k]
        out_ids[q, :len(keep)] = qi[keep]
        out_scores[q, :len(keep)] = qs[keep]
    return TopK(out_ids, out_scores, np.bincount(owners, weights=topk.n_candidates, minlength=n).astype(topk.n_candidates.dtype))

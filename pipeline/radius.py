"""Seed 004's evaluation protocol: precision@10 of the candidates within Hamming radius r.

Seed 004 compares hash functions this way. A query's candidates at radius ``r`` are the images
in every bin whose code differs from the query's in at most ``r`` bits (it enumerates those
bins; scanning every image's distance, as here, finds the same set). The candidates are ranked
by the cosine distance of their features (here: pixels) to the query's, and the precision is the
number of the first 10 that share the query's label, divided by 10 even when there are fewer
candidates. Queries without any candidate are left out of the mean; the share of queries that
have one is reported beside it, and so is the mean number of candidates (the cost).

Codes are given as ``uint64 [n, P, W]``: ``P`` codes per image of ``W`` words each. LSH has one
code (``P = 1``); a patchhash grid has one per position, and an image is a candidate when its
code at *some* position is within ``r`` bits of the query's code at that position: the buckets
the default mode looks in. ``max_bucket`` skips, as the default mode does, the buckets that hold
more images than that (a plain background's code is shared by most images at the grid's edge,
and would make every image a candidate of every query).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from .hamming import distance

__all__ = ["RadiusResult", "radius_protocol", "as_code_words"]

TOP = 10
"""Seed 004's cut: precision of the first 10 candidates."""
_QUERY_BLOCK = 256


@dataclass(frozen=True)
class RadiusResult:
    """Seed 004's figures of one method at one radius."""

    method: str
    radius: int
    precision: float  # mean over the queries with at least one candidate
    answered: float  # share of the queries with at least one candidate
    mean_candidates: float


def as_code_words(codes: np.ndarray) -> np.ndarray:
    """``uint64 [n, P, W]`` from packed LSH codes ``uint64 [n, W]`` or code grids ``[n, gh, gw]``/``[n, G]`` of uint32/uint64."""
    codes = np.asarray(codes)
    if codes.dtype == np.uint64 and codes.ndim == 2:
        return np.ascontiguousarray(codes[:, None, :])
    if codes.dtype.kind != "u":
        raise ValueError(f"codes must be unsigned integers, got {codes.dtype}")
    return np.ascontiguousarray(codes.reshape(len(codes), -1, 1).astype(np.uint64))


def _small_buckets(codes: np.ndarray, max_bucket: int | None) -> np.ndarray:
    """``bool [n, P]``: whether image i's bucket at position p holds at most ``max_bucket`` images."""
    n, positions, _ = codes.shape
    small = np.ones((n, positions), np.bool_)
    if max_bucket is not None:
        for p in range(positions):
            _, inverse, counts = np.unique(codes[:, p, :], axis=0, return_inverse=True, return_counts=True)
            small[:, p] = counts[inverse.reshape(-1)] <= max_bucket
    return small


@njit(parallel=True, cache=True)
def _nearest_position(index_codes, small, query_codes, out):
    """``out[q, i]``: the smallest Hamming distance between query q and image i over the
    positions where image i's bucket is small (``1 << 30`` where none is)."""
    n, positions, words = index_codes.shape
    for qi in prange(query_codes.shape[0]):
        for i in range(n):
            best = 1 << 30
            for p in range(positions):
                if not small[i, p]:
                    continue
                d = 0
                for w in range(words):
                    d += distance(index_codes[i, p, w], query_codes[qi, p, w])
                if d < best:
                    best = d
            out[qi, i] = best


def _unit_rows(pixels: np.ndarray) -> np.ndarray:
    x = np.asarray(pixels, np.float32).reshape(len(pixels), -1)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def radius_protocol(
    method: str,
    index_codes: np.ndarray,
    query_codes: np.ndarray,
    index_pixels: np.ndarray,
    query_pixels: np.ndarray,
    index_labels: np.ndarray,
    query_labels: np.ndarray,
    radii: "tuple[int, ...] | list[int]",
    max_bucket: int | None = None,
) -> list[RadiusResult]:
    """Seed 004's precision@10 at each radius of ``radii`` (module docstring).

    ``index_codes``/``query_codes`` are ``uint64 [n, P, W]`` and ``[q, P, W]``
    (:func:`as_code_words`); the pixels are the features the candidates are ranked by;
    buckets of more than ``max_bucket`` images are skipped (None: none is).
    """
    index_codes, query_codes = np.ascontiguousarray(index_codes, np.uint64), np.ascontiguousarray(query_codes, np.uint64)
    if index_codes.ndim != 3 or index_codes.shape[1:] != query_codes.shape[1:]:
        raise ValueError(f"index and query codes must be [n, P, W] of one P and W, got {index_codes.shape} and {query_codes.shape}")
    radii = sorted(set(int(r) for r in radii))
    if not radii or radii[0] < 0:
        raise ValueError(f"radii must be >= 0, got {radii}")
    index_labels, query_labels = np.asarray(index_labels), np.asarray(query_labels)
    index_unit = _unit_rows(index_pixels)
    small = _small_buckets(index_codes, max_bucket)
    hits = np.zeros((len(radii), len(query_codes)))
    candidates = np.zeros((len(radii), len(query_codes)))
    for lo in range(0, len(query_codes), _QUERY_BLOCK):
        block = query_codes[lo:lo + _QUERY_BLOCK]
        nearest = np.empty((len(block), len(index_codes)), np.int32)
        _nearest_position(index_codes, small, block, nearest)
        similarity = _unit_rows(query_pixels[lo:lo + len(block)]) @ index_unit.T
        for j in range(len(block)):
            order = np.argsort(-similarity[j], kind="stable")  # cosine distance, ties by image id
            same = index_labels[order] == query_labels[lo + j]
            within = nearest[j, order]
            for ri, r in enumerate(radii):
                found = np.flatnonzero(within <= r)
                candidates[ri, lo + j] = len(found)
                hits[ri, lo + j] = same[found[:TOP]].sum()
    results = []
    for ri, r in enumerate(radii):
        answered = candidates[ri] > 0
        precision = float((hits[ri][answered] / TOP).mean()) if answered.any() else 0.0
        results.append(RadiusResult(method, r, precision, float(answered.mean()) if len(answered) else 0.0,
                                    float(candidates[ri].mean()) if len(answered) else 0.0))
    return results

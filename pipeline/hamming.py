"""Hamming-distance kernels over unsigned integer codes (numba).

Every kernel is ``@njit(nogil=True, cache=True)`` so that Dask worker threads can run them
in parallel; none uses ``parallel=True`` (it would oversubscribe the workers' threads).

Population count goes through LLVM's ``llvm.ctpop`` intrinsic (:func:`pipeline.jit.ctpop`),
which LLVM lowers to the hardware ``POPCNT`` instruction when the target CPU has it (numba
compiles for the host CPU by default; a generic target such as ``NUMBA_CPU_NAME=generic``
gets a bit-trick sequence). Keys are always the unsigned dtype of the codes (``uint32`` for
up to 32 bits, ``uint64`` above); queries are cast to that dtype inside the kernels.

Three ways to find the keys within distance ``t`` of a query code (:func:`pipeline.mih.choose_method`
picks one):

* :func:`scan_within` tests every key (cost ~ number of keys);
* :func:`enumerate_within` probes the Hamming ball of radius ``t`` around the query in the
  sorted keys (cost ~ :func:`ball_size` x log2 of the number of keys);
* :func:`mih_within` probes multi-index hashing tables (:func:`mih_build`): per substring
  of the code, the small ball of radius ``t // m`` around the query's substring, then
  verifies the keys found there (cost ~ probes + keys sharing a probed substring).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .jit import ctpop

__all__ = [
    "popcount64",
    "distance",
    "hamming_distances",
    "count_within",
    "scan_within",
    "enumerate_within",
    "ball_size",
    "mih_split",
    "mih_table_bits",
    "mih_cost",
    "mih_build",
    "mih_within",
]

# Keys are tested in stripes of this many: first a pass that only asks whether the stripe
# holds a hit (no stores, well-predicted branches), then, for the rare stripes that do, a
# pass that records the hits. About 2x faster than recording in one loop (Zen 1).
_SCAN_STRIPE = 32


@njit(nogil=True, cache=True)
def popcount64(x):
    """Number of set bits of ``x`` taken as an unsigned 64-bit integer, as ``int64``."""
    return np.int64(ctpop(np.uint64(x)))


@njit(nogil=True, cache=True)
def distance(a, b):
    """Hamming distance of two codes of one unsigned dtype, as ``int64``."""
    return np.int64(ctpop(a ^ b))


@njit(nogil=True, cache=True)
def _popcount_flat(x):
    out = np.empty(x.size, np.int64)
    for i in range(x.size):
        out[i] = np.int64(ctpop(x[i]))
    return out


def hamming_distances(a, b) -> np.ndarray:
    """Elementwise Hamming distance of two broadcastable arrays of non-negative codes.

    Parameters
    ----------
    a, b : array_like
        Integer codes below ``2**64``; they are compared as ``uint64``.

    Returns
    -------
    numpy.ndarray
        ``int64`` distances with the broadcast shape of ``a`` and ``b``.
    """
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    return _popcount_flat(np.ascontiguousarray(x).ravel()).reshape(x.shape)


@njit(nogil=True, cache=True)
def count_within(query, keys, t):
    """Number of ``keys`` within Hamming distance ``t`` of ``query``.

    Parameters
    ----------
    query : int
        Query code (cast to the dtype of ``keys``).
    keys : numpy.ndarray
        ``uint32`` or ``uint64`` codes, any order.
    t : int
        Distance threshold (inclusive).

    Returns
    -------
    int
    """
    q = keys.dtype.type(query)
    n_keys = keys.size
    n_full = n_keys - n_keys % _SCAN_STRIPE
    n = 0
    for base in range(0, n_full, _SCAN_STRIPE):
        if _stripe_has_match(q, keys, t, base):
            n += _count_matches(q, keys, t, base, base + _SCAN_STRIPE)
    return n + _count_matches(q, keys, t, n_full, n_keys)


# Inlined at numba level: LLVM keeps it out of line and the call halves the scan rate.
@njit(nogil=True, cache=True, inline="always")
def _stripe_has_match(q, keys, t, base):
    """Whether ``keys[base:base + _SCAN_STRIPE]`` holds a key within ``t`` of ``q``."""
    hit = False
    for j in range(base, base + _SCAN_STRIPE):
        hit |= distance(q, keys[j]) <= t
    return hit


@njit(nogil=True, cache=True)
def _count_matches(q, keys, t, lo, hi):
    n = 0
    for j in range(lo, hi):
        if distance(q, keys[j]) <= t:
            n += 1
    return n


@njit(nogil=True, cache=True)
def scan_within(query, keys, t, out_idx, out_dist):
    """Find every key within distance ``t`` of ``query`` by testing them all.

    Parameters
    ----------
    query : int
        Query code (cast to the dtype of ``keys``).
    keys : numpy.ndarray
        ``uint32`` or ``uint64`` codes, any order.
    t : int
        Distance threshold (inclusive).
    out_idx, out_dist : numpy.ndarray
        ``int64`` buffers of at least ``keys.size`` entries; receive the positions of the
        matching keys (ascending) and their distances.

    Returns
    -------
    int
        Number of matches written.
    """
    q = keys.dtype.type(query)
    n_keys = keys.size
    n_full = n_keys - n_keys % _SCAN_STRIPE
    n = 0
    for base in range(0, n_full, _SCAN_STRIPE):
        if _stripe_has_match(q, keys, t, base):
            n = _record_matches(q, keys, t, base, base + _SCAN_STRIPE, out_idx, out_dist, n)
    return _record_matches(q, keys, t, n_full, n_keys, out_idx, out_dist, n)


@njit(nogil=True, cache=True)
def _record_matches(q, keys, t, lo, hi, out_idx, out_dist, n):
    for j in range(lo, hi):
        d = distance(q, keys[j])
        if d <= t:
            out_idx[n] = j
            out_dist[n] = d
            n += 1
    return n


def ball_size(bits: int, t: int) -> int:
    """Number of ``bits``-bit codes within Hamming distance ``t`` of a given code."""
    return sum(math.comb(bits, i) for i in range(min(t, bits) + 1))


@njit(nogil=True, cache=True)
def _lower_bound(keys, x):
    """First position in sorted ``keys`` whose key is not less than ``x``."""
    lo = 0
    size = keys.size
    while size > 0:
        half = size >> 1
        if keys[lo + half] < x:
            lo += half + 1
            size -= half + 1
        else:
            size = half
    return lo


@njit(nogil=True, cache=True)
def enumerate_within(query, keys, bits, t, out_idx, out_dist):
    """Find every key within distance ``t`` of ``query`` by probing its Hamming ball.

    Each of the ``ball_size(bits, t)`` codes that differ from ``query`` in at most ``t`` of
    its low ``bits`` bits is binary-searched in ``keys``.

    Parameters
    ----------
    query : int
        Query code below ``2**bits`` (cast to the dtype of ``keys``).
    keys : numpy.ndarray
        Sorted, distinct ``uint32`` or ``uint64`` codes below ``2**bits``.
    bits, t : int
        Code width and distance threshold (inclusive).
    out_idx, out_dist : numpy.ndarray
        ``int64`` buffers of at least ``min(keys.size, ball_size(bits, t))`` entries;
        receive the positions of the matching keys and their distances, in order of
        non-decreasing distance.

    Returns
    -------
    int
        Number of matches written.
    """
    q = keys.dtype.type(query)
    one = keys.dtype.type(1)
    pos = np.empty(max(t, 1), np.int64)
    n = 0
    for r in range(min(t, bits) + 1):
        for i in range(r):
            pos[i] = i
        while True:
            flips = keys.dtype.type(0)
            for i in range(r):
                flips |= one << keys.dtype.type(pos[i])
            probe = keys.dtype.type(q ^ flips)
            j = _lower_bound(keys, probe)
            if j < keys.size and keys[j] == probe:
                out_idx[n] = j
                out_dist[n] = r
                n += 1
            if not _next_combination(pos, r, bits):
                break
    return n


@njit(nogil=True, cache=True)
def _next_combination(pos, r, n):
    """Advance ``pos[:r]`` to the next r-subset of ``range(n)`` in lexicographic order.

    Returns ``False`` (leaving ``pos`` unspecified) when ``pos`` was the last subset.
    """
    i = r - 1
    while i >= 0 and pos[i] == n - r + i:
        i -= 1
    if i < 0:
        return False
    pos[i] += 1
    for j in range(i + 1, r):
        pos[j] = pos[j - 1] + 1
    return True


# --- multi-index hashing ---------------------------------------------------------------
#
# Norouzi, Punjani & Fleet, "Fast search in Hamming space with multi-index hashing" (CVPR
# 2012). The code is cut into m disjoint substrings; if two codes are within distance t,
# then (pigeonhole) on at least one substring they are within t // m of each other. Each
# substring has a table of the keys grouped by the substring's value (hashed when the
# substring is wider than the table); a query probes, per substring, every value within
# t // m of its own substring, and verifies the keys found there by their full distance.

_MIH_MAX_TABLE_BITS = 20
"""Largest substring table: 2**20 buckets (4 MiB of int32 offsets) per substring."""

_FIB_HASH = 0x9E3779B97F4A7C15
"""Fibonacci-hashing multiplier (2**64 / golden ratio), for substrings wider than a table."""


def mih_split(bits: int, n_substrings: int) -> tuple[np.ndarray, np.ndarray]:
    """Shifts and widths of ``n_substrings`` disjoint substrings covering ``bits`` bits.

    Widths differ by at most one; substring ``s`` is bits ``[shift, shift + width)``.
    """
    if not 1 <= n_substrings <= bits:
        raise ValueError(f"cannot cut {bits} bits into {n_substrings} substrings")
    widths = np.full(n_substrings, bits // n_substrings, np.int64)
    widths[: bits % n_substrings] += 1
    shifts = np.zeros(n_substrings, np.int64)
    np.cumsum(widths[:-1], out=shifts[1:])
    return shifts, widths


def mih_table_bits(widths: np.ndarray, n_keys: int) -> np.ndarray:
    """Bucket-index width of each substring's table: the substring itself when that keeps
    the table within about twice the number of keys, else a hash of it."""
    fit = max(1, int(n_keys).bit_length() + 1)
    return np.minimum(np.asarray(widths, np.int64), min(fit, _MIH_MAX_TABLE_BITS))


def mih_cost(bits: int, t: int, n_substrings: int, n_keys: int) -> tuple[float, float]:
    """``(probes, candidates)`` per query code of a multi-index search, assuming keys
    spread uniformly over each substring's values (real codes cluster: more candidates)."""
    _, widths = mih_split(bits, n_substrings)
    radius = t // n_substrings
    probes = candidates = 0.0
    for w, tb in zip(widths.tolist(), mih_table_bits(widths, n_keys).tolist()):
        ball = ball_size(w, radius)
        probes += ball
        # A probe reads one bucket of the table: all the keys hashed there.
        candidates += n_keys * min(1.0, ball / 2.0**tb)
    return probes, candidates


@njit(nogil=True, cache=True)
def _substring_mask(keys, width, shift):
    """Mask of bits ``[shift, shift + width)``, in the dtype of ``keys``."""
    if width >= 64:
        mask = ~np.uint64(0)
    else:
        mask = (np.uint64(1) << np.uint64(width)) - np.uint64(1)
    return keys.dtype.type(mask << np.uint64(shift))


@njit(nogil=True, cache=True, inline="always")
def _mih_bucket(sub, width, table_bits):
    """Table bucket of substring value ``sub``: the value itself, or its hash."""
    if table_bits == width:
        return np.int64(sub)
    return np.int64((np.uint64(sub) * np.uint64(_FIB_HASH)) >> np.uint64(64 - table_bits))


@njit(nogil=True, cache=True)
def mih_build(keys, shifts, widths, table_bits):
    """Substring tables of ``keys`` (uint32 or uint64 codes, any order).

    Returns ``order`` (int32 [m, K]: key positions grouped by bucket, ascending within a
    bucket), ``table_keys`` ([m, K]: ``keys[order]``, so that verification reads keys
    sequentially) and ``starts`` (int32 [m, 2**max(table_bits) + 1]: bucket ``b`` of
    substring ``s`` is ``order[s, starts[s, b]:starts[s, b + 1]]``). A counting sort: a
    few linear passes over the keys per substring.
    """
    m = shifts.size
    n = keys.size
    n_buckets = 1 << table_bits.max()
    order = np.empty((m, n), np.int32)
    table_keys = np.empty((m, n), keys.dtype)
    starts = np.zeros((m, n_buckets + 1), np.int32)
    bucket_of = np.empty(n, np.int64)
    for s in range(m):
        width = widths[s]
        tb = table_bits[s]
        shift = keys.dtype.type(shifts[s])
        mask = _substring_mask(keys, width, 0)
        counts = starts[s]
        for j in range(n):
            b = _mih_bucket((keys[j] >> shift) & mask, width, tb)
            bucket_of[j] = b
            counts[b + 1] += 1
        for b in range(n_buckets):
            counts[b + 1] += counts[b]
        cursor = counts[:n_buckets].copy()
        for j in range(n):
            b = bucket_of[j]
            pos = cursor[b]
            order[s, pos] = j
            table_keys[s, pos] = keys[j]
            cursor[b] = pos + 1
    return order, table_keys, starts


@njit(nogil=True, cache=True)
def mih_within(query, t, shifts, widths, table_bits, order, table_keys, starts, out_idx,
               out_dist):
    """Find every key within distance ``t`` of ``query`` with the tables of :func:`mih_build`.

    Exact: each substring ``s`` is probed at every value within ``r = t // m`` of the
    query's substring, and a key is reported only from the first substring on which it is
    within ``r`` of the query, so each matching key is reported exactly once.

    Parameters
    ----------
    query : int
        Query code (cast to the dtype of ``table_keys``).
    t : int
        Distance threshold (inclusive).
    shifts, widths, table_bits : numpy.ndarray
        The substrings (:func:`mih_split`) and table widths (:func:`mih_table_bits`) the
        tables were built with.
    order, table_keys, starts : numpy.ndarray
        The tables (:func:`mih_build`).
    out_idx, out_dist : numpy.ndarray
        ``int64`` buffers large enough for every match (at most the number of keys);
        receive the positions of the matching keys and their distances, in no particular
        order.

    Returns
    -------
    int
        Number of matches written.
    """
    dtype = table_keys.dtype
    q = dtype.type(query)
    m = shifts.size
    radius = t // m
    pos = np.empty(max(radius, 1), np.int64)
    masks = np.empty(m, dtype)  # substring s in place (not shifted down)
    for s in range(m):
        masks[s] = _substring_mask(table_keys, widths[s], shifts[s])
    n = 0
    for s in range(m):
        width = widths[s]
        tb = table_bits[s]
        shift = dtype.type(shifts[s])
        q_sub = (q & masks[s]) >> shift
        hashed = tb < width
        # Rows of the tables, indexed unsigned: no negative-index wraparound code.
        s_keys = table_keys[s]
        s_order = order[s]
        s_starts = starts[s]
        for r in range(min(radius, width) + 1):
            for i in range(r):
                pos[i] = i
            while True:
                probe = q_sub
                for i in range(r):
                    probe ^= dtype.type(1) << dtype.type(pos[i])
                b = np.uint64(_mih_bucket(probe, width, tb))
                # Branch-free: about half the candidates match, so a branch per candidate
                # would be mispredicted half the time. Each candidate is written at n, and n
                # moves on only for a match (with every key matched, n is past the buffer:
                # that test is always true until then, so it is predicted right).
                for j in range(np.uint64(s_starts[b]), np.uint64(s_starts[b + np.uint64(1)])):
                    key = s_keys[j]
                    x = key ^ q
                    d = np.int64(ctpop(x))
                    keep = d <= t
                    if hashed:
                        keep &= ((key & masks[s]) >> shift) == probe
                    # Report the key from the first substring within the radius only.
                    for s2 in range(s):
                        keep &= np.int64(ctpop(x & masks[s2])) > radius
                    if n < out_idx.size:
                        out_idx[n] = s_order[j]
                        out_dist[n] = d
                    n += np.int64(keep)
                if not _next_combination(pos, r, width):
                    break
    return n

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
    "mih_bucket_sizes",
    "mih_within",
    "mih_rings",
    "SIZE_SATURATED",
    "PROBES_ALL",
    "PROBES_EXACT",
    "PROBES_OTHER",
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
    pos = np.empty(max(t, 1), np.int64)
    n = 0
    for r in range(min(t, bits) + 1):
        for i in range(r):
            pos[i] = i
        while True:
            probe = _flipped(q, pos, r, keys)
            j = _lower_bound(keys, probe)
            if j < keys.size and keys[j] == probe:
                out_idx[n] = j
                out_dist[n] = r
                n += 1
            if not _next_combination(pos, r, bits):
                break
    return n


@njit(nogil=True, cache=True, inline="always")
def _flipped(value, pos, r, like):
    """``value`` with its bits ``pos[:r]`` flipped, in the dtype of the array ``like``."""
    value = like.dtype.type(value)
    for i in range(r):
        value ^= like.dtype.type(1) << like.dtype.type(pos[i])
    return value


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
def mih_bucket_sizes(order, key_bounds, offsets):
    """Bucket size of each entry of the tables of :func:`mih_build`, saturated at
    :data:`SIZE_SATURATED` (a larger bucket reads its size from ``offsets``).

    ``order`` holds the tables of every key group side by side (positions within the group,
    as :func:`pipeline.mih.prepare_index` builds them); key ``i`` of the map holds
    ``offsets[i + 1] - offsets[i]`` ids. One byte per entry, read beside the keys when
    verifying them, instead of a random read of ``offsets`` per matching key.
    """
    sizes = np.empty(order.shape, np.uint8)
    for b in range(key_bounds.size - 1):
        lo = key_bounds[b]
        for s in range(order.shape[0]):
            for j in range(lo, key_bounds[b + 1]):
                key = lo + order[s, j]
                sizes[s, j] = min(offsets[key + 1] - offsets[key], SIZE_SATURATED)
    return sizes


SIZE_SATURATED = 255
"""The largest bucket size :func:`mih_bucket_sizes` stores; it stands for any size from 255 up."""

PROBES_ALL, PROBES_EXACT, PROBES_OTHER = 0, 1, 2
"""Which probes :func:`mih_rings` reads: all, or a search in two stages. The *exact* probes (each
substring's own value) find every key with an exact substring, so every key within ``m - 1``
of the query for ``m`` substrings, and some farther ones; the *other* probes find the rest."""


@njit(nogil=True, cache=True)
def _mih_probes(q, t, shifts, widths, table_bits, starts, masks, stage):
    """The table buckets a search of radius ``t`` around ``q`` reads (those of ``stage``), one
    row per probe: substring, probed substring value, and the bucket's first and last + 1 entry."""
    m = shifts.size
    radius = t // m
    first = 1 if stage == PROBES_OTHER else 0  # probes flip r bits of a substring, for r from first
    if stage == PROBES_EXACT:
        radius = 0
    n_probes = 0
    for s in range(m):  # sum of the balls' sizes: binomials, built term by term
        term = 1
        for r in range(min(radius, widths[s]) + 1):
            n_probes += term if r >= first else 0
            term = term * (widths[s] - r) // (r + 1)
    probes = np.empty((n_probes, 4), np.int64)
    pos = np.empty(max(radius, 1), np.int64)
    n = 0
    for s in range(m):
        width = widths[s]
        tb = table_bits[s]
        shift = masks.dtype.type(shifts[s])
        q_sub = (q & masks[s]) >> shift
        for r in range(first, min(radius, width) + 1):
            for i in range(r):
                pos[i] = i
            while True:
                probe = _flipped(q_sub, pos, r, masks)
                b = _mih_bucket(probe, width, tb)
                probes[n, 0] = s
                probes[n, 1] = np.int64(probe)
                probes[n, 2] = starts[s, b]
                probes[n, 3] = starts[s, b + 1]
                n += 1
                if not _next_combination(pos, r, width):
                    break
    return probes


@njit(nogil=True, cache=True)
def _mih_masks(table_keys, shifts, widths):
    """Mask of each substring, in place (not shifted down), in the dtype of the keys."""
    masks = np.empty(shifts.size, table_keys.dtype)
    for s in range(shifts.size):
        masks[s] = _substring_mask(table_keys, widths[s], shifts[s])
    return masks


@njit(nogil=True, cache=True, inline="always")
def _mih_start(query, t, shifts, widths, table_bits, table_keys, starts, stage=PROBES_ALL):
    """``(q, masks, probes, radius)`` of a multi-index search: the query in the keys' dtype, the
    substrings' masks, the buckets to read (:func:`_mih_probes`) and the radius per substring."""
    q = table_keys.dtype.type(query)
    masks = _mih_masks(table_keys, shifts, widths)
    return q, masks, _mih_probes(q, t, shifts, widths, table_bits, starts, masks, stage), t // shifts.size


@njit(nogil=True, cache=True, inline="always")
def _mih_probe(probes, p, masks, shifts, widths, table_bits):
    """``(s, hashed, mask, shift, probe)`` of probe ``p``, as :func:`_mih_verify` takes them."""
    s = probes[p, 0]
    return s, table_bits[s] < widths[s], masks[s], masks.dtype.type(shifts[s]), masks.dtype.type(probes[p, 1])


@njit(nogil=True, cache=True, inline="always")
def _mih_verify(key, q, t, hashed, mask, shift, probe, masks, s, radius, stage=PROBES_ALL):
    """``(keep, d)`` for a key read from substring ``s``'s bucket of ``probe``: its distance
    ``d`` to ``q``, and whether it is a match reported here (within ``t``, in the probed
    substring value itself when the table is hashed, and within the radius on no earlier
    substring, so that each matching key is reported exactly once). In a search in two
    stages, the exact probes report a key at its first exact substring, and the others only
    keys with no exact substring."""
    x = key ^ q
    d = np.int64(ctpop(x))
    keep = d <= t
    if hashed:
        keep &= ((key & mask) >> shift) == probe
    earlier = 0 if stage == PROBES_EXACT else radius
    for s2 in range(s):
        keep &= np.int64(ctpop(x & masks[s2])) > earlier
    if stage == PROBES_OTHER:
        for s2 in range(s + 1, masks.size):
            keep &= np.int64(ctpop(x & masks[s2])) > 0
    return keep, d


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
    q, masks, probes, radius = _mih_start(query, t, shifts, widths, table_bits, table_keys, starts)
    n = 0
    for p in range(probes.shape[0]):
        s, hashed, mask, shift, probe = _mih_probe(probes, p, masks, shifts, widths, table_bits)
        s_keys = table_keys[s]
        s_order = order[s]
        # Branch-free: about half the candidates match, so a branch per candidate would be
        # mispredicted half the time. Each candidate is written at n, and n moves on only for
        # a match (with every key matched, n is past the buffer: that test is always true
        # until then, so it is predicted right). Indexed unsigned: no wraparound code.
        for j in range(np.uint64(probes[p, 2]), np.uint64(probes[p, 3])):
            keep, d = _mih_verify(s_keys[j], q, t, hashed, mask, shift, probe, masks, s, radius)
            if n < out_idx.size:
                out_idx[n] = s_order[j]
                out_dist[n] = d
            n += np.int64(keep)
    return n


@njit(nogil=True, cache=True)
def mih_rings(query, t, shifts, widths, table_bits, order, table_keys, sizes, starts, offsets, max_bucket,
              inner_idx, inner_dist, inner_size, outer_idx, ring_votes, stage=PROBES_ALL):
    """:func:`mih_within` for a search that first needs the votes of each ring, then the
    buckets of some: the matches at distance ``t`` (the outermost, largest ring) are kept as
    key positions only, the closer ones with their distance and bucket size.

    ``sizes`` are the tables' bucket sizes (:func:`mih_bucket_sizes`); ``offsets`` the map's,
    shifted so that ``offsets[i]`` is where key position ``i`` of this key group begins (read
    only for saturated sizes). ``ring_votes[d]`` (``t + 1`` entries) receives, for each
    distance ``d <= t``, the summed sizes of the matching buckets of at most ``max_bucket``
    images. With ``t = 0`` every match is inner. Returns ``(n_inner, n_outer)``; the buffers
    must hold every match (at most the number of keys). ``stage`` (:data:`PROBES_EXACT`,
    then :data:`PROBES_OTHER`) splits the search in two: a search whose vote budget the exact
    probes' rings already exceed needs no other probe.
    """
    q, masks, probes, radius = _mih_start(query, t, shifts, widths, table_bits, table_keys, starts, stage)
    n_in = 0
    n_out = 0
    outer_votes = 0
    for p in range(probes.shape[0]):
        s, hashed, mask, shift, probe = _mih_probe(probes, p, masks, shifts, widths, table_bits)
        s_keys = table_keys[s]
        s_order = order[s]
        s_sizes = sizes[s]
        for j in range(np.uint64(probes[p, 2]), np.uint64(probes[p, 3])):  # branch-free, as in mih_within
            keep, d = _mih_verify(s_keys[j], q, t, hashed, mask, shift, probe, masks, s, radius, stage)
            idx = np.int64(s_order[j])
            size = np.int64(s_sizes[j])
            if size == SIZE_SATURATED:  # rare: predicted right
                size = offsets[idx + 1] - offsets[idx]
            outer = keep & (d == t) & (t > 0)
            if n_out < outer_idx.size:
                outer_idx[n_out] = idx
            n_out += np.int64(outer)
            if n_in < inner_idx.size:
                inner_idx[n_in] = idx
                inner_dist[n_in] = d
                inner_size[n_in] = size
            n_in += np.int64(keep & ~outer)
            outer_votes += size * np.int64(outer & (size <= max_bucket))  # in a register: no store per key
    for j in range(min(n_in, inner_idx.size)):
        if inner_size[j] <= max_bucket:
            ring_votes[inner_dist[j]] += inner_size[j]
    ring_votes[t] += outer_votes
    return n_in, n_out

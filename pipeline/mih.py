"""How a search finds the indexed keys within Hamming distance ``t`` of a query code: the
methods (key scan, Hamming-ball enumeration, multi-index hashing), the cost model that
chooses between them, and the multi-index tables, built once per bucket map and cached on it.

Both search modes use them: :func:`pipeline.seed.seed_search` over a position-free map (one
key group), :func:`pipeline.rerank.rerank_search` over a positional one (one key group per
grid position). The matching kernels themselves are in :mod:`pipeline.hamming`.
"""

from __future__ import annotations

import logging
import math
import operator
import threading
import weakref
from dataclasses import dataclass

import numpy as np

from .buckets import BucketMap
from .hamming import ball_size, mih_bucket_sizes, mih_build, mih_cost, mih_split, mih_table_bits

__all__ = ["METHODS", "METHOD_CODE", "SCAN", "ENUMERATE", "MIH", "SearchIndex", "prepare_index", "adopt_index", "cached_indexes",
           "choose_method", "mih_substrings", "no_tables"]

logger = logging.getLogger(__name__)

METHODS = ("auto", "scan", "enumerate", "mih")
SCAN, ENUMERATE, MIH = 0, 1, 2
METHOD_CODE = {"scan": SCAN, "enumerate": ENUMERATE, "mih": MIH}
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


@dataclass(frozen=True, eq=False)
class SearchIndex:
    """Multi-index-hashing tables over the keys of one bucket map, one set per key group.

    Built by :func:`prepare_index` (which caches it on the map) and used by
    :func:`pipeline.seed.seed_search` (position-free maps: one key group) and
    :func:`pipeline.rerank.rerank_search` (positional maps: one key group per grid position)
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
        [m, n_keys]: the tables of key group ``b`` are the columns
        ``key_bounds[b]:key_bounds[b + 1]`` of the map (:func:`pipeline.hamming.mih_build`
        of that group's keys: positions within the group); 8 bytes per key per substring
        for 32-bit keys (12 for 64-bit ones).
    starts : numpy.ndarray
        ``int32`` [B, m, 2**max(table_bits) + 1]: bucket starts of each key group's tables.
    sizes : numpy.ndarray
        ``uint8`` [m, n_keys]: the size of the map's bucket of each table entry, saturated at
        255 (:func:`pipeline.hamming.mih_bucket_sizes`), so that a search reads a matching
        key's bucket size beside the key instead of at a random place of the map's offsets.
    """

    bits: int
    n_keys: int
    shifts: np.ndarray
    widths: np.ndarray
    table_bits: np.ndarray
    order: np.ndarray
    table_keys: np.ndarray
    starts: np.ndarray
    sizes: np.ndarray

    @property
    def n_substrings(self) -> int:
        return int(self.shifts.size)

    @property
    def n_groups(self) -> int:
        return int(self.starts.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.order.nbytes + self.table_keys.nbytes + self.starts.nbytes + self.sizes.nbytes)


# Indexes built by prepare_index, per bucket map (a map is immutable once built; partitions
# are cached per worker process, so each map's index is built once). Values must not refer
# to their map, or the map would never be collected.
_index_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_index_cache_lock = threading.Lock()


def cached_indexes(bmap: BucketMap) -> list[SearchIndex]:
    """The multi-index tables cached on ``bmap`` (built by :func:`prepare_index` or adopted)."""
    with _index_cache_lock:
        return list(_index_cache.get(bmap, {}).values())


def adopt_index(bmap: BucketMap, index: SearchIndex, replace: bool = False) -> SearchIndex:
    """Cache ``index`` (tables saved earlier for the same keys, e.g. memory-mapped) on ``bmap``,
    so that :func:`prepare_index` returns it instead of building the tables again; with
    ``replace``, instead of tables cached already (the build a saved copy was made of)."""
    if (index.n_keys != bmap.keys.size or index.n_groups != bmap.n_groups or index.table_keys.dtype != bmap.keys.dtype
            or index.sizes.shape != index.order.shape):
        raise ValueError("the multi-index tables were not built for this bucket map")
    with _index_cache_lock:
        cached = _index_cache.setdefault(bmap, {})
        if replace:
            cached[(index.bits, index.n_substrings)] = index
        return cached.setdefault((index.bits, index.n_substrings), index)


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
        Code width (8..64), as for :func:`pipeline.seed.seed_search`.
    threshold : int
        The search radius to plan the substrings for.
    n_substrings : int, optional
        Force the number of substrings (1..bits) instead of the cost model's choice (made
        for the mean number of keys per key group).

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
    per_group = keys.size // max(bmap.n_groups, 1)
    m = (mih_substrings(per_group, bits, threshold) if n_substrings is None
         else operator.index(n_substrings))
    with _index_cache_lock:
        cached = _index_cache.get(bmap, {}).get((bits, m))
    if cached is not None:
        return cached
    shifts, widths = mih_split(bits, m)
    # one table width for every key group (the mean group's), so that the starts stack
    table_bits = mih_table_bits(widths, per_group)
    order = np.empty((m, keys.size), np.int32)
    table_keys = np.empty((m, keys.size), keys.dtype)
    starts = np.empty((bmap.n_groups, m, (1 << int(table_bits.max())) + 1), np.int32)
    for b in range(bmap.n_groups):
        lo, hi = int(bmap.key_bounds[b]), int(bmap.key_bounds[b + 1])
        order[:, lo:hi], table_keys[:, lo:hi], starts[b] = mih_build(keys[lo:hi], shifts, widths, table_bits)
    index = SearchIndex(bits, int(keys.size), shifts, widths, table_bits, order, table_keys,
                        starts, mih_bucket_sizes(order, bmap.key_bounds, bmap.offsets))
    logger.debug("built a %d-substring index of %d keys in %d key group(s) (%d bits): %.1f MB",
                 m, keys.size, bmap.n_groups, bits, index.nbytes / 1e6)
    with _index_cache_lock:
        # Two threads may race to build the same index: keep the first.
        return _index_cache.setdefault(bmap, {}).setdefault((bits, m), index)


def choose_method(n_keys: int, bits: int, threshold: int) -> str:
    """Pick ``"scan"``, ``"enumerate"`` or ``"mih"`` for a key group by a cost model.

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


_NO_TABLES: dict = {}


def no_tables(dtype) -> tuple:
    """Placeholder multi-index tables (of the right types, for keys of ``dtype``) that the
    search kernels take with the other methods; made once per dtype."""
    tables = _NO_TABLES.get(dtype)
    if tables is None:
        empty = np.zeros(1, np.int64)
        tables = (empty, empty, empty, np.zeros((1, 1), np.int32), np.zeros((1, 1), dtype),
                  np.zeros((1, 2), np.int32), np.zeros((1, 1), np.uint8))
        _NO_TABLES[dtype] = tables
    return tables

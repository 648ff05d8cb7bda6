"""Bucket maps: for one partition of the index, the image ids holding each patch code.

A :class:`BucketMap` is a compact CSR structure (sorted distinct keys, offsets, ids). It is
built from the codes of a set of images by a stable LSD radix sort (numba), so that building costs a few
linear passes over the codes and memory stays a small multiple of them; maps built
separately over disjoint sets of images (shards) can be merged into the map that one build
over all their rows would give.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

__all__ = ["BucketMap", "build_bucket_map", "merge_bucket_maps", "drop_ids", "compact_dtypes"]

logger = logging.getLogger(__name__)

_RADIX_BITS = 8
_RADIX = 1 << _RADIX_BITS
_KEY_DTYPES = (np.dtype(np.uint32), np.dtype(np.uint64))
_INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


@dataclass(frozen=True, eq=False)
class BucketMap:
    """Compact CSR bucket map of one partition.

    Attributes
    ----------
    keys : numpy.ndarray
        ``uint32`` or ``uint64`` [K]: the distinct codes, sorted within each key group.
    offsets : numpy.ndarray
        ``int32`` or ``int64`` [K+1]; ``ids[offsets[i]:offsets[i+1]]`` hold ``keys[i]``.
    ids : numpy.ndarray
        ``int32`` or ``int64`` [P]: image ids minus ``id_base``; ascending and de-duplicated
        within each bucket.
    key_bounds : numpy.ndarray
        ``int64`` [B+1]; key group ``b`` is ``keys[key_bounds[b]:key_bounds[b+1]]``. A
        position-free map has one group of all codes (B = 1); a positional map has B = G,
        group ``g`` holding the distinct codes seen at grid position ``g`` (the key is
        ``(position, code)``).
    id_base : int
        The image id of ``ids == 0``.

    Notes
    -----
    A positional map of a 1-position grid is the same structure as a position-free map
    and reports ``positional == False``; both mean the same thing.

    Maps are built *compact*: 4-byte ids relative to the first image and 4-byte offsets
    wherever they fit (:func:`compact_dtypes`), half the memory of 8-byte ones, and the
    search kernels read fewer bytes per vote.
    """

    keys: np.ndarray
    offsets: np.ndarray
    ids: np.ndarray
    key_bounds: np.ndarray
    id_base: int = 0

    def __post_init__(self):
        _check_arrays(self.keys, self.offsets, self.ids, self.key_bounds)
        object.__setattr__(self, "id_base", int(self.id_base))

    @property
    def positional(self) -> bool:
        """Whether keys are ``(grid position, code)`` pairs (more than one key group)."""
        return self.key_bounds.size > 2

    @property
    def n_groups(self) -> int:
        """Number of key groups B (1 for a position-free map, G for a positional one)."""
        return self.key_bounds.size - 1

    def group_keys(self, group: int = 0) -> np.ndarray:
        """The sorted distinct codes of key group ``group`` (a view)."""
        return self.keys[self.key_bounds[group] : self.key_bounds[group + 1]]

    def bucket(self, key, group: int = 0) -> np.ndarray:
        """Image ids (ascending) holding code ``key`` in key group ``group``.

        Parameters
        ----------
        key : int
            The code; codes outside the map's dtype range simply have no bucket.
        group : int
            Key group: 0 for a position-free map, the grid position for a positional one.

        Returns
        -------
        numpy.ndarray
            ``int64`` image ids (a new array); empty if no image holds the key.
        """
        if not 0 <= group < self.n_groups:
            raise IndexError(f"key group {group} out of range for a map of {self.n_groups} groups")
        info = np.iinfo(self.keys.dtype)
        if not info.min <= int(key) <= info.max:
            return np.empty(0, np.int64)
        lo = int(self.key_bounds[group])
        keys = self.group_keys(group)
        i = int(np.searchsorted(keys, self.keys.dtype.type(key)))
        if i == keys.size or keys[i] != key:
            return np.empty(0, np.int64)
        return self.ids[self.offsets[lo + i] : self.offsets[lo + i + 1]].astype(np.int64) + self.id_base

    def stats(self) -> dict:
        """Bucket statistics, as seed 000's ``describe()`` reported them.

        Returns
        -------
        dict
            ``distinct_codes`` (number of keys), ``pairs`` (number of (key, image) pairs),
            and the ``min``/``median``/``mean``/``max`` ``_density`` of the bucket sizes,
            as plain Python numbers (all zero for an empty map).
        """
        sizes = np.diff(self.offsets)
        if sizes.size == 0:
            return dict(distinct_codes=0, pairs=0, min_density=0, median_density=0.0,
                        mean_density=0.0, max_density=0)
        return dict(
            distinct_codes=int(self.keys.size),
            pairs=int(self.ids.size),
            min_density=int(sizes.min()),
            median_density=float(np.median(sizes)),
            mean_density=float(sizes.mean()),
            max_density=int(sizes.max()),
        )

    @property
    def n_images(self) -> int:
        """Images in a positional map (each is in one bucket per position); for a
        position-free map, the (key, image) pairs of its first key group."""
        return int(self.offsets[self.key_bounds[1]] - self.offsets[0]) if self.keys.size else 0

    @functools.cached_property
    def id_span(self) -> tuple[int, int]:
        """``(min id, max id + 1)`` over all buckets; ``(0, 0)`` for an empty map."""
        if self.ids.size == 0:
            return (0, 0)
        return (int(self.ids.min()) + self.id_base, int(self.ids.max()) + 1 + self.id_base)

    def image_ids(self) -> np.ndarray:
        """Every bucket entry as an ``int64`` image id (``ids + id_base``)."""
        return self.ids.astype(np.int64) + self.id_base

    def rebased(self, id_base: int) -> "BucketMap":
        """The same map with its ids relative to ``id_base`` (at most the smallest id), in the
        compact dtypes where they fit."""
        lo, hi = self.id_span
        if self.ids.size and id_base > lo:
            raise ValueError(f"id_base {id_base} is above the map's smallest id {lo}")
        id_dtype, offset_dtype = compact_dtypes(hi - id_base, self.ids.size)
        ids = self.ids.astype(np.int64) + (self.id_base - id_base) if id_base != self.id_base else self.ids
        return BucketMap(self.keys, self.offsets.astype(offset_dtype, copy=False), ids.astype(id_dtype, copy=False),
                         self.key_bounds, id_base)


def compact_dtypes(id_span: int, n_pairs: int) -> tuple[np.dtype, np.dtype]:
    """The dtypes of a map's relative ids (``id_span``: its largest id + 1 - its id base) and of
    its offsets (``n_pairs`` bucket entries): ``int32`` where the values fit, else ``int64``."""
    small = np.dtype(np.int32)
    return (small if id_span < 2**31 else np.dtype(np.int64)), (small if n_pairs < 2**31 else np.dtype(np.int64))


def _check_arrays(keys, offsets, ids, key_bounds) -> None:
    """Raise ``ValueError`` unless the arrays have a bucket map's dtypes and sizes."""
    if keys.ndim != 1 or keys.dtype not in _KEY_DTYPES:
        raise ValueError(
            f"bucket map keys must be 1-d uint32 or uint64, got {keys.dtype}{keys.shape}"
        )
    for name, arr in (("offsets", offsets), ("ids", ids)):
        if arr.ndim != 1 or arr.dtype not in _INDEX_DTYPES:
            raise ValueError(f"bucket map {name} must be 1-d int32 or int64, got {arr.dtype}{arr.shape}")
    if key_bounds.ndim != 1 or key_bounds.dtype != np.int64:
        raise ValueError(f"bucket map key_bounds must be 1-d int64, got {key_bounds.dtype}{key_bounds.shape}")
    if offsets.size != keys.size + 1 or offsets[0] != 0 or offsets[-1] != ids.size:
        raise ValueError(
            f"bucket map offsets do not fit: {offsets.size} offsets for {keys.size} keys "
            f"and {ids.size} ids"
        )
    if key_bounds.size < 2 or key_bounds[0] != 0 or key_bounds[-1] != keys.size:
        raise ValueError(f"bucket map key_bounds do not span the {keys.size} keys")
    if np.any(np.diff(key_bounds) < 0):
        raise ValueError("bucket map key_bounds must be non-decreasing")


def build_bucket_map(codes: np.ndarray, ids: np.ndarray, positional: bool) -> BucketMap:
    """Build the bucket map of a set of images.

    Parameters
    ----------
    codes : numpy.ndarray
        ``uint32`` or ``uint64`` [m, G]: row ``i`` holds the G patch codes (grid flattened
        row-major) of image ``ids[i]``.
    ids : numpy.ndarray
        Integer [m], strictly ascending; need not be contiguous (images that failed to read
        are simply absent).
    positional : bool
        Key buckets by ``(grid position, code)`` (B = G key groups) instead of by code
        alone (B = 1).

    Returns
    -------
    BucketMap
        Bucket ids ascending, each image at most once per bucket; compact (ids relative to
        ``ids[0]``). An empty ``codes`` gives an empty map (with G empty key groups if
        positional).
    """
    codes, ids = _check_build_inputs(codes, ids)
    id_base = int(ids[0]) if ids.size else 0
    relative = ids - id_base
    if positional:
        bmap = _build_positional(codes, relative, id_base)
    else:
        keys, offsets, bucket_ids = _build_position_free(codes, relative)
        bmap = BucketMap(keys, offsets, bucket_ids, np.array([0, keys.size], np.int64), id_base)
    logger.debug("built %s bucket map of %d images: %d keys, %d pairs",
                 "positional" if positional else "position-free", codes.shape[0],
                 bmap.keys.size, bmap.ids.size)
    return bmap


def _check_build_inputs(codes, ids) -> tuple[np.ndarray, np.ndarray]:
    codes = np.asarray(codes)
    ids = np.asarray(ids)
    if codes.ndim != 2 or codes.dtype not in _KEY_DTYPES:
        raise ValueError(
            f"codes must be a 2-d uint32 or uint64 array, got {codes.dtype}{codes.shape}"
        )
    if codes.shape[1] == 0:
        raise ValueError("codes must have at least one grid position (column)")
    if ids.ndim != 1 or ids.size != codes.shape[0] or (ids.size and ids.dtype.kind not in "iu"):
        raise ValueError(
            f"ids must be 1-d integers, one per row of codes; got {ids.dtype}{ids.shape} "
            f"for {codes.shape[0]} rows"
        )
    if codes.shape[0] >= 2**32:
        raise ValueError(f"a bucket map holds fewer than 2**32 images, got {codes.shape[0]}")
    ids = ids.astype(np.int64, copy=False)
    if np.any(ids[1:] <= ids[:-1]):
        raise ValueError("ids must be strictly ascending")
    return codes, ids


def _build_position_free(codes, ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keys, offsets and bucket ids of all the codes of ``codes`` [m, G], position-free."""
    sorted_codes, sorted_rows = _sort_codes(codes)
    n_keys, n_pairs = _count_buckets(sorted_codes, sorted_rows)
    id_dtype, offset_dtype = compact_dtypes(int(ids[-1]) + 1 if ids.size else 0, n_pairs)
    keys = np.empty(n_keys, codes.dtype)
    offsets = np.empty(n_keys + 1, offset_dtype)
    bucket_ids = np.empty(n_pairs, id_dtype)
    _fill_buckets(sorted_codes, sorted_rows, ids, 0, keys, offsets, bucket_ids)
    return keys, offsets, bucket_ids


def _build_positional(codes, ids, id_base: int) -> BucketMap:
    """Bucket map keyed by (grid position, code): one key group per column (``ids`` relative
    to ``id_base``)."""
    m, n_positions = codes.shape
    id_dtype, offset_dtype = compact_dtypes(int(ids[-1]) + 1 if ids.size else 0, m * n_positions)
    # Column g holds each image once, so its group has exactly m (code, image) pairs and
    # its ids can go straight to their final place.
    bucket_ids = np.empty(m * n_positions, id_dtype)
    keys, offsets = [], []
    columns = _transpose(codes)
    for g in range(n_positions):
        sorted_codes, sorted_rows = _sort_codes(columns[g].reshape(m, 1))
        n_keys, _ = _count_buckets(sorted_codes, sorted_rows)
        group_keys = np.empty(n_keys, codes.dtype)
        group_offsets = np.empty(n_keys + 1, offset_dtype)
        _fill_buckets(sorted_codes, sorted_rows, ids, g * m, group_keys, group_offsets,
                     bucket_ids[g * m : (g + 1) * m])
        keys.append(group_keys)
        offsets.append(group_offsets[:-1])
    offsets.append(np.array([m * n_positions], offset_dtype))
    key_bounds = np.zeros(n_positions + 1, np.int64)
    np.cumsum([k.size for k in keys], out=key_bounds[1:])
    return BucketMap(np.concatenate(keys), np.concatenate(offsets), bucket_ids, key_bounds, id_base)


@njit(nogil=True, cache=True)
def _transpose(codes):
    """Contiguous transpose, 256 rows at a time so that reads and writes both stay cached."""
    m, n_cols = codes.shape
    out = np.empty((n_cols, m), codes.dtype)
    for r0 in range(0, m, 256):
        r1 = min(m, r0 + 256)
        for g in range(n_cols):
            for r in range(r0, r1):
                out[g, r] = codes[r, g]
    return out


def _sort_codes(codes) -> tuple[np.ndarray, np.ndarray]:
    """Stable sort of the codes of ``codes`` [m, G], read row-major, by value.

    Returns the sorted codes and, for each, its row in ``codes`` (``uint32``). Digits that
    are the same in every code (e.g. the unused high bytes of short codes) cost no pass.
    """
    n_digits = codes.dtype.itemsize * 8 // _RADIX_BITS
    hist = _digit_histograms(codes, n_digits)
    n = codes.size
    passes = [p for p in range(n_digits) if np.count_nonzero(hist[p]) > 1]
    # The first pass also copies the grid out; with no varying digit it is a plain copy.
    first = passes[0] if passes else 0
    src_codes = np.empty(n, codes.dtype)
    src_rows = np.empty(n, np.uint32)
    _scatter_grid(codes, first * _RADIX_BITS, _exclusive_cumsum(hist[first]), src_codes, src_rows)
    if len(passes) > 1:
        dst_codes = np.empty_like(src_codes)
        dst_rows = np.empty_like(src_rows)
        for p in passes[1:]:
            _scatter(src_codes, src_rows, p * _RADIX_BITS, _exclusive_cumsum(hist[p]),
                     dst_codes, dst_rows)
            src_codes, dst_codes = dst_codes, src_codes
            src_rows, dst_rows = dst_rows, src_rows
    return src_codes, src_rows


def _exclusive_cumsum(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(counts.size, np.int64)
    np.cumsum(counts[:-1], out=out[1:])
    return out


@njit(nogil=True, cache=True)
def _digit_histograms(codes, n_digits):
    hist = np.zeros((n_digits, _RADIX), np.int64)
    for r in range(codes.shape[0]):
        for g in range(codes.shape[1]):
            c = codes[r, g]
            for p in range(n_digits):
                hist[p, (c >> (p * _RADIX_BITS)) & (_RADIX - 1)] += 1
    return hist


@njit(nogil=True, cache=True)
def _scatter_grid(codes, shift, starts, dst_codes, dst_rows):
    """First radix pass: read the grid row-major, scatter codes and rows by one digit."""
    cursor = starts.copy()
    for r in range(codes.shape[0]):
        for g in range(codes.shape[1]):
            c = codes[r, g]
            digit = (c >> shift) & (_RADIX - 1)
            i = cursor[digit]
            dst_codes[i] = c
            dst_rows[i] = r
            cursor[digit] = i + 1


@njit(nogil=True, cache=True)
def _scatter(src_codes, src_rows, shift, starts, dst_codes, dst_rows):
    """One stable radix pass from ``src`` to ``dst`` on the digit at ``shift``."""
    cursor = starts.copy()
    for j in range(src_codes.size):
        c = src_codes[j]
        digit = (c >> shift) & (_RADIX - 1)
        i = cursor[digit]
        dst_codes[i] = c
        dst_rows[i] = src_rows[j]
        cursor[digit] = i + 1


@njit(nogil=True, cache=True)
def _count_buckets(sorted_codes, sorted_rows):
    """Number of distinct codes and of distinct (code, row) pairs in sorted input."""
    n_keys = 0
    n_pairs = 0
    for j in range(sorted_codes.size):
        new_key = j == 0 or sorted_codes[j] != sorted_codes[j - 1]
        n_keys += new_key
        n_pairs += new_key or sorted_rows[j] != sorted_rows[j - 1]
    return n_keys, n_pairs


@njit(nogil=True, cache=True)
def _fill_buckets(sorted_codes, sorted_rows, row_ids, pair_base, keys, offsets, bucket_ids):
    """Write the CSR arrays of sorted (code, row) pairs.

    Rows are ascending within a code since the sort is stable, so ids are too. Offsets
    are shifted by ``pair_base`` (where ``bucket_ids`` starts in the map's ids).
    """
    # Rows come in random order: looking their ids up misses the cache on large inputs,
    # and the common case of a gap-free id range needs no lookup at all.
    contiguous = row_ids.size > 0 and row_ids[-1] - row_ids[0] == row_ids.size - 1
    first_id = row_ids[0] if contiguous else 0
    k = -1
    p = 0
    for j in range(sorted_codes.size):
        new_key = j == 0 or sorted_codes[j] != sorted_codes[j - 1]
        if new_key:
            k += 1
            keys[k] = sorted_codes[j]
            offsets[k] = pair_base + p
        if new_key or sorted_rows[j] != sorted_rows[j - 1]:
            row = sorted_rows[j]
            bucket_ids[p] = first_id + row if contiguous else row_ids[row]
            p += 1
    offsets[k + 1] = pair_base + p


def merge_bucket_maps(maps: Sequence[BucketMap]) -> BucketMap:
    """Merge bucket maps over disjoint sets of images into one.

    The result equals :func:`build_bucket_map` over all the rows of all the maps at once.

    Parameters
    ----------
    maps : sequence of BucketMap
        At least one map; all of one key dtype and one number of key groups, no image id
        in two maps.

    Returns
    -------
    BucketMap
    """
    maps = list(maps)
    if not maps:
        raise ValueError("merge_bucket_maps needs at least one map")
    dtype, n_groups = maps[0].keys.dtype, maps[0].n_groups
    for bmap in maps[1:]:
        if bmap.keys.dtype != dtype or bmap.n_groups != n_groups:
            raise ValueError(
                f"cannot merge bucket maps of different layouts: {dtype} with {n_groups} "
                f"key groups and {bmap.keys.dtype} with {bmap.n_groups} key groups"
            )
    # Maps in id order make every merged bucket ascending already unless their id ranges
    # interleave (shards do not); buckets are sorted afterwards in that rare case.
    maps.sort(key=lambda bmap: bmap.id_span)
    keys, sizes, destinations = [], [], [[] for _ in maps]
    n_keys_before = 0
    for group in range(n_groups):
        union, union_sizes, where = _merge_group(maps, group)
        keys.append(union)
        sizes.append(union_sizes)
        for dest, w in zip(destinations, where):
            dest.append(w + n_keys_before)
        n_keys_before += union.size
    key_bounds = np.concatenate([[0], np.cumsum([k.size for k in keys])]).astype(np.int64)
    spans = [bmap.id_span for bmap in maps if bmap.ids.size]
    id_base = min((lo for lo, _ in spans), default=0)
    id_dtype, offset_dtype = compact_dtypes(max((hi for _, hi in spans), default=0) - id_base, int(sum(s.sum() for s in sizes)))
    offsets = np.zeros(n_keys_before + 1, np.int64)
    np.cumsum(np.concatenate(sizes), out=offsets[1:])
    ids = np.empty(int(offsets[-1]), id_dtype)
    cursor = offsets[:-1].copy()
    for bmap, dest in zip(maps, destinations):
        _copy_buckets(bmap.offsets, bmap.ids, bmap.id_base - id_base, np.concatenate(dest), cursor, ids)
    if not _buckets_ascending(offsets, ids):
        bucket_of = np.repeat(np.arange(n_keys_before), np.diff(offsets))
        ids = ids[np.lexsort((ids, bucket_of))]
        if not _buckets_ascending(offsets, ids):
            raise ValueError("merge_bucket_maps: the maps share image ids")
    return BucketMap(np.concatenate(keys), offsets.astype(offset_dtype, copy=False), ids, key_bounds, id_base)


def _merge_group(maps, group) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Merge one key group of several maps.

    Returns
    -------
    union : numpy.ndarray
        The sorted distinct keys of the group over all maps.
    sizes : numpy.ndarray
        ``int64``: the merged bucket size of each key of ``union``.
    where : list of numpy.ndarray
        Per map, the position in ``union`` of each of its keys in the group.
    """
    parts = [bmap.group_keys(group) for bmap in maps]
    union = _sorted_unique(np.concatenate(parts))
    sizes = np.zeros(union.size, np.int64)
    where = []
    for bmap, part in zip(maps, parts):
        w = np.searchsorted(union, part)
        lo, hi = bmap.key_bounds[group], bmap.key_bounds[group + 1]
        sizes[w] += np.diff(bmap.offsets[lo : hi + 1])  # no repeats in w: keys are distinct
        where.append(w)
    return union, sizes, where


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values.

    Not ``np.unique``: since NumPy 2.3 it hashes, which took 50x longer than sorting on
    ~15M distinct uint32 codes.
    """
    values = np.sort(values)
    keep = np.empty(values.size, bool)
    keep[:1] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


@njit(nogil=True, cache=True)
def _copy_buckets(src_offsets, src_ids, shift, dest_keys, cursor, ids):
    """Append each source bucket ``i``, its ids plus ``shift``, at ``cursor[dest_keys[i]]`` in ``ids``."""
    for i in range(dest_keys.size):
        d = dest_keys[i]
        c = cursor[d]
        for p in range(src_offsets[i], src_offsets[i + 1]):
            ids[c] = src_ids[p] + shift
            c += 1
        cursor[d] = c


@njit(nogil=True, cache=True)
def _buckets_ascending(offsets, ids):
    """Whether the ids of every bucket are strictly ascending."""
    for k in range(offsets.size - 1):
        for p in range(offsets[k] + 1, offsets[k + 1]):
            if ids[p] <= ids[p - 1]:
                return False
    return True


def drop_ids(bmap: BucketMap, dead: np.ndarray) -> BucketMap:
    """The map without the image ids in ``dead``; buckets left empty are dropped.

    The result equals :func:`build_bucket_map` over the rows of the other images.

    Parameters
    ----------
    bmap : BucketMap
    dead : numpy.ndarray
        Integer image ids; ids the map does not hold are ignored.
    """
    lo, hi = bmap.id_span
    dead = np.asarray(dead, np.int64)
    dead = dead[(dead >= lo) & (dead < hi)]
    if dead.size == 0:
        return bmap
    is_dead = np.zeros(hi - lo, np.bool_)
    is_dead[dead - lo] = True
    keys, offsets, ids, key_bounds = _filter_ids(bmap.keys, bmap.offsets, bmap.ids, bmap.key_bounds, is_dead,
                                                 lo - bmap.id_base)
    return BucketMap(keys, offsets, ids, key_bounds, bmap.id_base)


@njit(nogil=True, cache=True)
def _filter_ids(keys, offsets, ids, key_bounds, is_dead, lo):
    n_keys = 0
    n_ids = 0
    for k in range(keys.size):
        kept = 0
        for p in range(offsets[k], offsets[k + 1]):
            kept += not is_dead[ids[p] - lo]
        n_keys += kept > 0
        n_ids += kept
    out_keys = np.empty(n_keys, keys.dtype)
    out_offsets = np.empty(n_keys + 1, offsets.dtype)
    out_ids = np.empty(n_ids, ids.dtype)
    out_bounds = np.zeros(key_bounds.size, np.int64)
    k_out = 0
    p_out = 0
    for b in range(key_bounds.size - 1):
        for k in range(key_bounds[b], key_bounds[b + 1]):
            first = p_out
            for p in range(offsets[k], offsets[k + 1]):
                if not is_dead[ids[p] - lo]:
                    out_ids[p_out] = ids[p]
                    p_out += 1
            if p_out > first:
                out_keys[k_out] = keys[k]
                out_offsets[k_out] = first
                k_out += 1
        out_bounds[b + 1] = k_out
    out_offsets[k_out] = p_out
    return out_keys, out_offsets, out_ids, out_bounds

"""What a worker process keeps between query tasks: the bucket maps and codes it searches.

:class:`WorkerCache` is a least-recently-used cache bounded in bytes, one per worker process
(:func:`load_partition` and :func:`load_codes` fill it). Every object a partition is made of
is immutable once committed, so a worker loads each partition once per job, or once per
cluster when it stays warm.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import numpy as np

from storage import ConfigError
from storage.location import IndexLocation

__all__ = ["WorkerCache", "cache_budget", "entry_nbytes", "load_partition", "load_codes", "trim_worker_cache"]


class WorkerCache:
    """Least-recently-used cache of index arrays in a worker process, bounded in bytes.

    Holds bucket maps (with the multi-index tables built on them) and rows of codes: both are
    immutable once committed, so a worker loads each partition once per job, or once per
    cluster when it stays warm. The budget is ``PATCHHASH_CACHE_BYTES`` (e.g. ``2GiB``), else
    40% of the worker's memory limit, else 2 GiB; the most recent entry is always kept, even
    alone over the budget. Loading runs outside the lock (two threads may both load a key).
    """

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, key: tuple, load):
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        value = load()
        with self._lock:
            self.loads += 1
            self._entries[key] = value
            self._entries.move_to_end(key)
        self.trim()
        return value

    def trim(self) -> None:
        """Evict least recently used entries until the cache fits its budget (sizes are taken
        now: a bucket map grows when its multi-index tables are built)."""
        budget = cache_budget()
        with self._lock:
            sizes = {key: entry_nbytes(value) for key, value in self._entries.items()}
            total = sum(sizes.values())
            while total > budget and len(self._entries) > 1:
                key, _ = self._entries.popitem(last=False)
                total -= sizes[key]

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(entry_nbytes(v) for v in self._entries.values())


def cache_budget() -> int:
    """Bytes a worker's :class:`WorkerCache` may hold (see there)."""
    from dask.utils import parse_bytes

    if value := os.environ.get("PATCHHASH_CACHE_BYTES"):
        try:
            return parse_bytes(value)
        except (ValueError, TypeError):
            raise ConfigError(f"PATCHHASH_CACHE_BYTES={value!r} is not a size; set it to e.g. 2GiB or 2000000000") from None
    try:
        from distributed import get_worker

        limit = get_worker().memory_manager.memory_limit
    except (ImportError, ValueError, AttributeError):
        limit = None
    return int(0.4 * limit) if limit else 2 * 2**30


def entry_nbytes(value) -> int:
    """Bytes of a cached bucket map (its multi-index tables included) or array."""
    from pipeline.buckets import BucketMap
    from pipeline.mih import index_nbytes

    if isinstance(value, BucketMap):
        return value.keys.nbytes + value.offsets.nbytes + value.ids.nbytes + value.key_bounds.nbytes + index_nbytes(value)
    return value.nbytes


_cache = WorkerCache()


def trim_worker_cache() -> None:
    """Fit this process's cache to its budget again (a search may have built multi-index tables on a map)."""
    _cache.trim()


def load_partition(index: "IndexLocation | str", partition, storage_options=None):
    """The live bucket map of a :class:`~storage.manifest.SearchPartition`: its base map merged
    with its deltas, tombstoned ids dropped. Every object it is made of is immutable once
    committed, so the result is cached per worker process under the partition's key."""
    from pipeline.buckets import BucketMap, drop_ids, merge_bucket_maps
    from storage.arrays import read_array_group
    from storage.tables import read_parquet

    index = IndexLocation.of(index, storage_options)

    def read_map(path: str) -> BucketMap:
        arrays, _ = read_array_group(index.resolve(path), index.storage_options)
        return BucketMap(arrays["keys"], arrays["offsets"], arrays["ids"], arrays["key_bounds"])

    def load():
        maps = [read_map(path) for path in partition.maps]
        bmap = maps[0] if len(maps) == 1 else merge_bucket_maps(maps)
        if partition.tombstones:
            dead = read_parquet(index.resolve(partition.tombstones), index.storage_options, ["image_id"]).column("image_id")
            bmap = drop_ids(bmap, dead.to_numpy())
        return bmap

    return _cache.get(("partition", index.url, partition.key), load)


def load_codes(index: "IndexLocation | str", codes: str, start: int, stop: int, storage_options=None) -> np.ndarray:
    """Flattened ``[stop - start, G]`` codes of images ``start..stop`` from the codes array
    ``codes`` (committed rows never change), cached per worker process like the bucket maps."""
    from storage.arrays import read_rows

    index = IndexLocation.of(index, storage_options)

    def load():
        return read_rows(index.resolve(codes), start, stop, index.storage_options).reshape(stop - start, -1)

    return _cache.get(("codes", index.url, codes, start, stop), load)

"""What a worker process keeps between query tasks: the bucket maps and codes it searches.

:class:`WorkerCache` is a least-recently-used cache bounded in bytes, one per worker process
(:func:`load_partition` and :func:`load_codes` fill it). Every object a partition is made of
is immutable once committed, so a worker loads each partition once per job, or once per
cluster when it stays warm. Where the machine keeps local copies of partitions
(:mod:`workflows.partition_files`, the default), the cache holds memory-mapped arrays that
cost it nothing: the page cache serves them across blocks, jobs and worker processes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from storage.environment import env_bytes
from storage.location import IndexLocation

__all__ = ["WorkerCache", "cache_budget", "entry_nbytes", "load_partition", "load_codes", "save_tables", "trim_worker_cache"]


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
    if (budget := env_bytes("PATCHHASH_CACHE_BYTES", "2GiB or 2000000000")) is not None:
        return budget
    try:
        from distributed import get_worker

        limit = get_worker().memory_manager.memory_limit
    except (ImportError, ValueError, AttributeError):
        limit = None
    return int(0.4 * limit) if limit else 2 * 2**30


def entry_nbytes(value) -> int:
    """Bytes of a cached bucket map (its multi-index tables included) or array held in this
    process's memory; memory-mapped arrays count nothing (the page cache holds them)."""
    from pipeline.buckets import BucketMap
    from pipeline.mih import cached_indexes

    if isinstance(value, BucketMap):
        arrays = [value.keys, value.offsets, value.ids, value.key_bounds]
        arrays += [a for index in cached_indexes(value) for a in (index.order, index.table_keys, index.starts, index.sizes)]
        return sum(_resident(a) for a in arrays)
    return _resident(value)


def _resident(array: np.ndarray) -> int:
    return 0 if isinstance(array, np.memmap) else array.nbytes


_cache = WorkerCache()


def trim_worker_cache() -> None:
    """Fit this process's cache to its budget again (a search may have built multi-index tables on a map)."""
    _cache.trim()


def load_partition(index: "IndexLocation | str", partition, storage_options=None):
    """The live bucket map of a :class:`~storage.manifest.SearchPartition`: its base map merged
    with its deltas, tombstoned ids dropped, ids relative to the partition's start. Every
    object it is made of is immutable once committed, so the result is cached per worker
    process under the partition's key, and memory-mapped from a local copy where the machine
    keeps them (:mod:`workflows.partition_files`), with the multi-index tables saved there."""
    from pipeline.buckets import BucketMap, drop_ids, merge_bucket_maps
    from storage.arrays import read_array_group
    from storage.tables import read_parquet

    index = IndexLocation.of(index, storage_options)

    def read_map(path: str) -> BucketMap:
        arrays, attrs = read_array_group(index.resolve(path), index.storage_options)
        # format 2 maps hold 8-byte image ids (no id_base)
        return BucketMap(arrays["keys"], arrays["offsets"], arrays["ids"], arrays["key_bounds"], attrs.get("id_base", 0))

    def build():
        maps = [read_map(path) for path in partition.maps]
        bmap = maps[0] if len(maps) == 1 else merge_bucket_maps(maps)
        if partition.tombstones:
            dead = read_parquet(index.resolve(partition.tombstones), index.storage_options, ["image_id"]).column("image_id")
            bmap = drop_ids(bmap, dead.to_numpy())
        return bmap.rebased(partition.start)

    def load():
        files, folder = _local(index, partition)
        if folder is None:
            return build()
        bmap = files.bucket_map(folder, build)
        files.adopt_tables(folder, bmap)
        return bmap

    return _cache.get(("partition", index.url, partition.key), load)


def save_tables(index: "IndexLocation | str", partition, bmap) -> None:
    """Keep in the partition's local copy the multi-index tables a search just built on ``bmap``."""
    files, folder = _local(IndexLocation.of(index), partition)
    if folder is not None:
        files.save_tables(folder, bmap)


def load_codes(index: "IndexLocation | str", partition, storage_options=None) -> np.ndarray:
    """Flattened ``[stop - start, G]`` codes of a partition's images ``start..stop`` (committed
    rows never change), cached per worker process like the bucket maps, and memory-mapped from
    the partition's local copy where the machine keeps them."""
    from storage.arrays import read_rows

    index = IndexLocation.of(index, storage_options)
    start, stop = partition.start, partition.stop

    def read():
        return read_rows(index.resolve(partition.codes), start, stop, index.storage_options).reshape(stop - start, -1)

    def load():
        files, folder = _local(index, partition)
        return read() if folder is None else files.codes(folder, read)

    return _cache.get(("codes", index.url, partition.codes, start, stop), load)


_folders: dict = {}


def _local(index: IndexLocation, partition):
    """``(files, folder)`` of the partition's local copy, or ``(None, None)`` when there is none."""
    from workflows.partition_files import local_files

    files = local_files()
    if files is None:
        return None, None
    key = (files.root, index.url, partition.key)
    if key not in _folders:
        _folders[key] = files.folder(index, partition)
    return files, _folders[key]

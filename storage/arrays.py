"""Zarr v3 arrays on any fsspec URL: the codes array and groups of named arrays.

Remote stores are wrapped in :class:`RetryingStore`, so each object read or write is retried
on its own when the store fails for a moment (:mod:`storage.retry`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import zarr
from zarr.storage import FsspecStore, LocalStore, WrapperStore

from storage.fs import display_url, is_local, url_to_fs
from storage.retry import retry_async

__all__ = [
    "RetryingStore",
    "zarr_store",
    "create_codes_array",
    "open_array",
    "read_rows",
    "write_rows",
    "write_array_group",
    "read_array_group",
]

# Large flat arrays (bucket ids) are cut into chunks of this many elements.
FLAT_CHUNK = 1 << 22


class RetryingStore(WrapperStore):
    """A Zarr store whose single-object requests are retried on transient errors.

    Chunk and metadata writes are whole objects at fixed keys, so repeating one is harmless.
    """

    def _what(self, verb: str, key: str) -> str:
        store = self._store
        if isinstance(store, FsspecStore):
            return f"{verb} {display_url(store.fs, store.path.rstrip('/') + '/' + key)}"
        return f"{verb} {key} in {store}"

    async def get(self, key, prototype, byte_range=None):
        return await retry_async(self._what("reading", key), self._store.get, key, prototype, byte_range)

    async def get_partial_values(self, prototype, key_ranges):
        key_ranges = list(key_ranges)
        what = self._what("reading", key_ranges[0][0] if key_ranges else "")
        return await retry_async(what, self._store.get_partial_values, prototype, key_ranges)

    async def exists(self, key):
        return await retry_async(self._what("checking", key), self._store.exists, key)

    async def set(self, key, value):
        await retry_async(self._what("writing", key), self._store.set, key, value)

    async def set_if_not_exists(self, key, value):
        await retry_async(self._what("writing", key), self._store.set_if_not_exists, key, value)

    async def delete(self, key):
        await retry_async(self._what("deleting", key), self._store.delete, key)

    async def delete_dir(self, prefix):
        await retry_async(self._what("deleting", prefix), self._store.delete_dir, prefix)

    async def is_empty(self, prefix):
        return await retry_async(self._what("listing", prefix), self._store.is_empty, prefix)


def zarr_store(url: str, storage_options: Mapping | None = None, read_only: bool = True):
    """A Zarr store for ``url``: ``LocalStore`` for local paths, a retrying ``FsspecStore`` otherwise."""
    fs, path = url_to_fs(url, storage_options)
    if is_local(fs):
        return LocalStore(path, read_only=read_only)
    return RetryingStore(FsspecStore.from_url(url, storage_options=dict(storage_options or {}), read_only=read_only))


def create_codes_array(
    url: str, n_images: int, grid: tuple[int, int], dtype: np.dtype, shard_size: int, storage_options=None
) -> zarr.Array:
    """Create (or overwrite the metadata of) ``[n_images, grid_h, grid_w]`` codes, one chunk per shard."""
    return zarr.create_array(
        store=zarr_store(url, storage_options, read_only=False),
        shape=(n_images, *grid),
        chunks=(shard_size, *grid),
        dtype=np.dtype(dtype),
        fill_value=0,
        dimension_names=("image", "grid_y", "grid_x"),
        overwrite=True,
    )


def open_array(url: str, storage_options=None, mode: str = "r") -> zarr.Array:
    return zarr.open_array(store=zarr_store(url, storage_options, read_only=mode == "r"), mode=mode)


def read_rows(url: str, start: int, stop: int, storage_options=None) -> np.ndarray:
    """Rows ``[start, stop)`` of the array at ``url``."""
    return np.asarray(open_array(url, storage_options)[start:stop])


def write_rows(url: str, start: int, values: np.ndarray, storage_options=None) -> None:
    """Write ``values`` at rows ``[start, start + len(values))``; whole chunks are written atomically
    by the store, so repeating the write (a retry, a task run twice) is harmless."""
    open_array(url, storage_options, mode="r+")[start : start + len(values)] = values


def write_array_group(url: str, arrays: Mapping[str, np.ndarray], attrs: Mapping, storage_options=None) -> None:
    """Write named 1-D arrays (and JSON ``attrs``) as one Zarr group, replacing what was there.

    Compressed with Blosc's zstd after a byte shuffle: the sorted keys, offsets and ascending
    ids of a bucket map shuffle into long runs of equal bytes (with 4-byte ids, a 1M-image
    synthetic index went from 636 to 474 bytes per image; docs/SCALE.md).
    """
    from zarr.codecs import BloscCodec

    group = zarr.open_group(store=zarr_store(url, storage_options, read_only=False), mode="w")
    for name, values in arrays.items():
        values = np.ascontiguousarray(values)
        arr = group.create_array(
            name, shape=values.shape, dtype=values.dtype,
            chunks=(max(1, min(len(values), FLAT_CHUNK)),) if values.ndim == 1 else values.shape or (1,),
            fill_value=0, compressors=BloscCodec(cname="zstd", clevel=5, shuffle="shuffle", typesize=values.dtype.itemsize),
        )
        if values.size:
            arr[...] = values
    group.attrs.update(dict(attrs))


def read_array_group(url: str, storage_options=None) -> tuple[dict[str, np.ndarray], dict]:
    """All arrays of a group written by :func:`write_array_group`, and its attributes."""
    group = zarr.open_group(store=zarr_store(url, storage_options, read_only=True), mode="r")
    arrays = {name: np.asarray(arr[...]) for name, arr in group.arrays()}
    return arrays, dict(group.attrs)

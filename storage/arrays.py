"""Zarr v3 arrays on any fsspec URL: the codes array and groups of named arrays."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import zarr
from zarr.storage import FsspecStore, LocalStore

from storage.fs import is_local, url_to_fs

__all__ = ["zarr_store", "create_codes_array", "open_array", "write_array_group", "read_array_group"]

# Large flat arrays (bucket ids) are cut into chunks of this many elements.
FLAT_CHUNK = 1 << 22


def zarr_store(url: str, storage_options: Mapping | None = None, read_only: bool = True):
    """A Zarr store for ``url``: ``LocalStore`` for local paths, ``FsspecStore`` otherwise."""
    fs, path = url_to_fs(url, storage_options)
    if is_local(fs):
        return LocalStore(path, read_only=read_only)
    return FsspecStore.from_url(url, storage_options=dict(storage_options or {}), read_only=read_only)


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


def write_array_group(url: str, arrays: Mapping[str, np.ndarray], attrs: Mapping, storage_options=None) -> None:
    """Write named 1-D arrays (and JSON ``attrs``) as one Zarr group, replacing what was there."""
    group = zarr.open_group(store=zarr_store(url, storage_options, read_only=False), mode="w")
    for name, values in arrays.items():
        values = np.ascontiguousarray(values)
        arr = group.create_array(
            name, shape=values.shape, dtype=values.dtype,
            chunks=(max(1, min(len(values), FLAT_CHUNK)),) if values.ndim == 1 else values.shape or (1,),
            fill_value=0,
        )
        if values.size:
            arr[...] = values
    group.attrs.update(dict(attrs))


def read_array_group(url: str, storage_options=None) -> tuple[dict[str, np.ndarray], dict]:
    """All arrays of a group written by :func:`write_array_group`, and its attributes."""
    group = zarr.open_group(store=zarr_store(url, storage_options, read_only=True), mode="r")
    arrays = {name: np.asarray(arr[...]) for name, arr in group.arrays()}
    return arrays, dict(group.attrs)

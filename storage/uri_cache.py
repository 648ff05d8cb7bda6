"""The uris of image tables, kept by the process between query jobs.

A query job writes each hit's uri, so it reads the uri of every image id of the index
(:func:`storage.image_tables.read_image_uris`): 0.9 to 1.7 CPU seconds at 10M images, taken
from the workers' cores while they answer the job's first block. A process that runs several
jobs against an index (the Python API, ``patchhash bench``, a service) reads each table once:
its uris are kept, least recently used first out, up to ``PATCHHASH_URI_CACHE_BYTES`` (default
512 MiB; ``0`` keeps none).

A table is known by its URL and by what its file system says of the file
(:func:`storage.fs.file_identity`: its size and its ETag, checksum or time), listed once per
folder and job: a table rewritten in place, or an index deleted and built again at the same
URL, is read again. A table whose listing gives less is never kept.
"""

from __future__ import annotations

import posixpath
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable

import pyarrow as pa

from storage.environment import env_bytes
from storage.fs import file_identity
from storage.location import IndexLocation
from storage.retry import retry_call

__all__ = ["uri_cache_budget", "cached_uris", "table_stamps", "clear_uri_cache"]

DEFAULT_BYTES = 512 * 2**20

_cache: OrderedDict[tuple, pa.Array] = OrderedDict()
_cached_bytes = 0
_lock = threading.Lock()


def uri_cache_budget() -> int:
    """Bytes of uris the process keeps: ``PATCHHASH_URI_CACHE_BYTES`` (e.g. ``1GiB``) or 512 MiB."""
    return env_bytes("PATCHHASH_URI_CACHE_BYTES", "1GiB, or 0 to keep no uris", DEFAULT_BYTES)


def table_stamps(index: IndexLocation, relatives: Iterable[str]) -> dict[str, tuple]:
    """What the file system says of each table ``relatives`` names (paths in the manifest),
    one listing per folder (:func:`storage.fs.file_identity`); a table whose folder cannot be
    listed (a store without listings), or whose listing says too little, is left out: it is
    read, never kept."""
    stamps: dict[str, tuple] = {}
    for folder in sorted({posixpath.dirname(r) for r in relatives}):
        try:
            infos = retry_call(f"listing {index.join(folder)}", index.fs.ls, index.fs_path(folder), detail=True)
        except (OSError, NotImplementedError):
            continue
        for info in infos:
            identity = file_identity(info)
            if identity is not None:
                stamps[posixpath.join(folder, posixpath.basename(str(info["name"]).rstrip("/")))] = tuple(sorted(identity.items()))
    return stamps


def cached_uris(url: str, stamp: tuple | None, read: Callable[[], pa.Array], budget: int) -> pa.Array:
    """The uris of the table at ``url`` whose file is ``stamp`` (:func:`table_stamps`): kept
    ones, else ``read()``'s, kept if they fit ``budget`` (:func:`uri_cache_budget`, read once
    per job). ``None``: read, never kept."""
    global _cached_bytes
    key = (url, stamp)
    if stamp is not None:
        with _lock:
            if key in _cache:
                _cache.move_to_end(key)
                return _cache[key]
    uris = read()
    if stamp is None or uris.nbytes > budget:
        return uris
    with _lock:
        if key not in _cache:
            _cache[key] = uris
            _cached_bytes += uris.nbytes
        while _cached_bytes > budget:
            _, dropped = _cache.popitem(last=False)
            _cached_bytes -= dropped.nbytes
    return uris


def clear_uri_cache() -> None:
    """Forget every kept uri."""
    global _cached_bytes
    with _lock:
        _cache.clear()
        _cached_bytes = 0

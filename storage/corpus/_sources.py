"""Array sources: the IDX, ``.npy`` and Zarr arrays behind ``idx``, ``npy`` and ``zarr``
corpora and ``<url>#<row>`` references, opened once per process.

``.npy`` files and local uncompressed IDX files are read by byte ranges (a shard reads its own
rows only); IDX files that are gzip-compressed or remote are decoded in full on first use;
Zarr arrays read the chunks holding the rows asked. Opened arrays are kept in a process-wide
LRU cache of the two most recently used ones (:data:`SOURCES`).
"""

from __future__ import annotations

import io
import json
import math
import os
import threading
import zlib
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from fsspec.spec import AbstractFileSystem

from storage.corpus._shard_data import ReadError, ShardData
from storage.corpus.formats import DAMAGED, brief, check_size, open_idx_stream, read_idx_file, read_idx_header, read_npy_header, reading
from storage.errors import CorpusError, PatchhashError
from storage.fs import is_local, url_to_fs
from storage.images import ImageSpec, convert_batch
from storage.retry import retry_call

if TYPE_CHECKING:
    from storage.corpus._corpus import Shard

__all__ = [
    "IDX_IMAGES_MAGIC",
    "SOURCES",
    "SourceCache",
    "clear_source_cache",
    "consecutive_runs",
    "open_source",
    "read_array_rows",
]

IDX_IMAGES_MAGIC = 0x00000803


def read_array_rows(shard: Shard, spec: ImageSpec) -> ShardData:
    """Read and convert the rows of an ``idx``, ``npy`` or ``zarr`` shard.

    Raises
    ------
    CorpusError
        The array cannot be read, or holds fewer rows than the shard covers.
    """
    source = open_source(shard.kind, shard.url, shard.storage_options)
    if shard.stop > source.shape[0]:
        raise CorpusError(
            f"{shard.url} has {source.shape[0]} images but the shard covers rows "
            f"[{shard.start}, {shard.stop}); was the array changed after the corpus was opened?"
        )
    try:
        rows = source.get(slice(shard.start, shard.stop))
    except PatchhashError:
        raise
    except (OSError, EOFError, zlib.error, ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise CorpusError(
            f"cannot read rows [{shard.start}, {shard.stop}) of {shard.url}: {brief(exc)}; {DAMAGED}"
        ) from None
    pixels, ok = convert_batch(rows, spec, shard.url)
    ids = np.arange(shard.start, shard.stop, dtype=np.int64)
    uris = [f"{shard.url}#{image_id}" for image_id in ids]
    errors = [
        ReadError(int(image_id), uri, "all pixel values are NaN")
        for image_id, uri, good in zip(ids, uris, ok, strict=True)
        if not good
    ]
    good_uris = [uri for uri, good in zip(uris, ok, strict=True) if good]
    return ShardData(ids[ok], good_uris, pixels, errors)


class _ArraySource(ABC):
    """An opened array of images: shape, dtype and row access."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @abstractmethod
    def get(self, rows: slice | np.ndarray) -> np.ndarray:
        """Rows selected by a slice or an ascending array of unique indices."""


class _LazyArray(_ArraySource):
    """An array loaded (decoded, memory-mapped...) on first access, once, thread-safely."""

    def __init__(
        self, shape: tuple[int, ...], dtype: np.dtype, load: Callable[[], np.ndarray]
    ) -> None:
        self.shape, self.dtype = shape, dtype
        self._load = load
        self._array: np.ndarray | None = None
        self._lock = threading.Lock()

    def get(self, rows: slice | np.ndarray) -> np.ndarray:
        with self._lock:
            if self._array is None:
                self._array = self._load()
        return np.asarray(self._array[rows])


class _RowRanges(_ArraySource):
    """A C-ordered array stored raw at a byte offset of a file (``.npy``, uncompressed IDX),
    read by byte ranges: a shard reads its own rows only (runs of consecutive rows in one
    request). Local files are read with ``pread``, not memory-mapped: the pages of a query
    file a worker has read would otherwise stay in its resident memory until the end of the job.
    """

    def __init__(
        self, fs: AbstractFileSystem, path: str, offset: int, shape: tuple[int, ...],
        dtype: np.dtype,
    ) -> None:
        self.shape, self.dtype = shape, dtype
        self._fs, self._path, self._offset = fs, path, offset
        self._row_bytes = dtype.itemsize * math.prod(shape[1:])

    def get(self, rows: slice | np.ndarray) -> np.ndarray:
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(self.shape[0])
            runs = [(start, max(start, stop))]
        else:
            runs = consecutive_runs(np.asarray(rows, dtype=np.int64))
        out = np.empty((sum(b - a for a, b in runs), *self.shape[1:]), dtype=self.dtype)
        buffer = memoryview(out.reshape(-1).view(np.uint8))
        ranges = [(self._offset + a * self._row_bytes, self._offset + b * self._row_bytes) for a, b in runs]
        filled = self._read_local(ranges, buffer) if is_local(self._fs) else self._read_remote(ranges, buffer)
        if filled < len(buffer):
            raise CorpusError(
                f"{self._fs.unstrip_protocol(self._path)} is truncated: a read of whole rows returned "
                f"{filled} of {len(buffer)} bytes; {DAMAGED}"
            )
        return out

    def _read_local(self, ranges: list[tuple[int, int]], buffer: memoryview) -> int:
        filled = 0
        with open(self._path, "rb") as file:
            for begin, end in ranges:
                while begin < end:  # pread may return less than asked (2 GiB per call on Linux)
                    got = os.preadv(file.fileno(), [buffer[filled:filled + end - begin]], begin)
                    if not got:
                        return filled
                    begin, filled = begin + got, filled + got
        return filled

    def _read_remote(self, ranges: list[tuple[int, int]], buffer: memoryview) -> int:
        what = f"reading {self._path}"
        if len(ranges) == 1:
            parts = [retry_call(what, self._fs.cat_file, self._path, start=ranges[0][0], end=ranges[0][1])]
        else:
            starts, ends = zip(*ranges)
            parts = retry_call(what, self._fs.cat_ranges, [self._path] * len(ranges), list(starts), list(ends), on_error="raise")
        filled = 0
        for part, (begin, end) in zip(parts, ranges):
            got = min(len(part), end - begin)
            buffer[filled:filled + got] = part[:got]
            filled += got
            if got < end - begin:
                break
        return filled


def consecutive_runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering the ascending unique ``rows`` with consecutive rows merged."""
    if not len(rows):
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = rows[np.r_[0, breaks]]
    stops = rows[np.r_[breaks - 1, len(rows) - 1]] + 1
    return list(zip(starts.tolist(), stops.tolist()))


class _ZarrArray(_ArraySource):
    def __init__(self, array: Any) -> None:
        self._array = array
        self.shape, self.dtype = tuple(array.shape), np.dtype(array.dtype)

    def get(self, rows: slice | np.ndarray) -> np.ndarray:
        if isinstance(rows, slice):
            return np.asarray(self._array[rows])
        return np.asarray(self._array.get_orthogonal_selection((rows,)))


class SourceCache:
    """Process-wide LRU of opened arrays, so that the shards one worker reads decode once.

    Attributes
    ----------
    maxsize : int
        Arrays kept; the least recently used one is dropped beyond.
    hits, misses : int
        Lookups that found their array, and those that opened it.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[str, str, str], _ArraySource] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self, key: tuple[str, str, str], open_array: Callable[[], _ArraySource]
    ) -> _ArraySource:
        with self._lock:
            if key in self._entries:
                self.hits += 1
                self._entries.move_to_end(key)
                return self._entries[key]
            self.misses += 1
            source = self._entries[key] = open_array()
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)
            return source

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0


SOURCES = SourceCache(maxsize=2)


def clear_source_cache() -> None:
    """Forget the arrays this process has opened (and the cache's counts): the next read of
    an array opens it again, e.g. after the file was replaced."""
    SOURCES.clear()


def open_source(kind: str, url: str, options: Mapping[str, Any]) -> _ArraySource:
    """The array at ``url`` (``kind`` ``"idx"``, ``"npy"`` or ``"zarr"``), from the process cache.

    Raises
    ------
    CorpusError
        The array cannot be opened, or its header, shape or dtype cannot be read as images.
    """
    openers = {"idx": _open_idx, "npy": _open_npy, "zarr": _open_zarr}
    key = (kind, url, json.dumps(dict(options), sort_keys=True, default=repr))
    return SOURCES.get(key, lambda: openers[kind](url, options))


def _check_array(url: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3, 4)):
        raise CorpusError(
            f"{url}: array of shape {shape} cannot be read as images; expected [n, h, w] "
            "(grey) or [n, h, w, c] with c = 1 (grey), 3 (RGB) or 4 (RGBA)"
        )
    if dtype.kind not in "biuf":
        raise CorpusError(
            f"{url}: array of dtype {dtype} cannot be read as images; expected a numeric "
            "dtype (bool, integer or float)"
        )
    if any(d < 0 for d in shape):
        raise CorpusError(f"{url}: array header gives a negative shape {shape}; {DAMAGED}")
    if 0 in shape:
        raise CorpusError(f"{url}: array of shape {shape} holds no pixels; pass an array of at least one image")


_IDX_IMAGES = "uint8 images [n, h, w]"
_IDX_IMAGES_HINT = "If this is a labels file (idx1), pass it as --labels."


def _open_idx(url: str, options: Mapping[str, Any]) -> _ArraySource:
    fs, path = url_to_fs(url, options)
    with reading(url, "IDX file"), open_idx_stream(fs, path) as stream:
        shape = read_idx_header(stream, url, IDX_IMAGES_MAGIC, _IDX_IMAGES, _IDX_IMAGES_HINT)
    dtype = np.dtype(np.uint8)
    _check_array(url, shape, dtype)
    if not path.lower().endswith(".gz"):
        with reading(url, "IDX file"):
            check_size(fs, path, url, 4 + 4 * len(shape), shape, 1)
    if is_local(fs) and not path.lower().endswith(".gz"):
        return _RowRanges(fs, path, 4 + 4 * len(shape), shape, dtype)
    return _LazyArray(
        shape, dtype,
        lambda: read_idx_file(url, options, IDX_IMAGES_MAGIC, _IDX_IMAGES, _IDX_IMAGES_HINT),
    )


def _open_npy(url: str, options: Mapping[str, Any]) -> _ArraySource:
    fs, path = url_to_fs(url, options)
    with reading(url, ".npy file"), fs.open(path, "rb") as stream:
        shape, fortran_order, dtype, offset = read_npy_header(stream, url)
    _check_array(url, shape, dtype)
    with reading(url, ".npy file"):
        check_size(fs, path, url, offset, shape, dtype.itemsize)
    if not fortran_order:
        return _RowRanges(fs, path, offset, shape, dtype)
    if is_local(fs):  # rare: a row of a Fortran-ordered array is spread over the whole file
        return _LazyArray(shape, dtype, lambda: _load_local_npy(path, url))
    return _LazyArray(shape, dtype, lambda: _load_remote_npy(fs, path, url))


def _load_local_npy(path: str, url: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # changed since it was opened
        raise CorpusError(f"cannot read .npy file {url}: {brief(exc)}; {DAMAGED}") from None


def _load_remote_npy(fs: AbstractFileSystem, path: str, url: str) -> np.ndarray:
    with reading(url, ".npy file"):
        return np.load(io.BytesIO(fs.cat_file(path)), allow_pickle=False)


def _open_zarr(url: str, options: Mapping[str, Any]) -> _ArraySource:
    # Imported here: zarr is slow to import and only needed for this format.
    import zarr

    fs, path = url_to_fs(url, options)
    local = is_local(fs)
    try:
        source = _ZarrArray(
            zarr.open_array(
                store=path if local else url, mode="r",
                storage_options=None if local else dict(options) or None,
            )
        )
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CorpusError(f"cannot open Zarr array {url}: {brief(exc)}; {DAMAGED}") from None
    _check_array(url, source.shape, source.dtype)
    return source

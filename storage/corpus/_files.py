"""Reading the rows of ``images`` and ``urilist`` shards: image files fetched in batches,
retried when a fetch fails transiently, and decoded no larger than the model's input needs
(:func:`storage.images.decode_and_convert`); ``<array url>#<row>`` references read from their
arrays."""

from __future__ import annotations

import os
import posixpath
import re
import stat
import zlib
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np
from fsspec.spec import AbstractFileSystem

from storage.corpus._shard_data import ReadError, ShardData
from storage.corpus._sources import open_source
from storage.corpus.formats import IDX_NAME_PATTERN, file_error_reason
from storage.errors import ImageReadError, StorageUnavailableError
from storage.fs import is_local, url_to_fs
from storage.images import ImageSpec, convert_batch, decode_and_convert
from storage.retry import is_transient, retry_call

__all__ = ["MAX_IMAGE_FILE_BYTES", "read_uri_rows"]

_ROW_REF = re.compile(r"^(?P<url>.+)#(?P<row>\d+)$")
# What opening or reading one URL of a list may raise (unknown protocol, missing fsspec
# backend, I/O errors, CorpusError): it makes a ReadError for its rows, not a failed shard.
_UNREADABLE_URL = (ValueError, ImportError, OSError, EOFError, zlib.error)
MAX_IMAGE_FILE_BYTES = 1 << 30  # a larger "image" file is refused unread
_FETCH_BATCH = 256  # image files fetched per fs call: bounds the memory held by raw bytes


def read_uri_rows(
    start: int, uris: tuple[str, ...], options: Mapping[str, Any], spec: ImageSpec
) -> ShardData:
    """Read the rows of an ``images`` or ``urilist`` shard for :meth:`Shard.read`.

    ``uris`` (image files, ``<array url>#<row>`` references, or ``""``) are those of the ids
    from ``start``. Unreadable images become :class:`ReadError` rows; a fetch that still fails
    transiently after its retries raises :class:`StorageUnavailableError`.
    """
    results: dict[int, np.ndarray | str] = {}
    files: list[tuple[int, str]] = []
    refs: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for image_id, uri in enumerate(uris, start):
        ref = _ROW_REF.match(uri)
        if not uri:
            results[image_id] = "empty uri"
        elif ref:
            refs[ref["url"]].append((image_id, int(ref["row"])))
        else:
            files.append((image_id, uri))
    _read_files(files, options, spec, results)
    for array_url, rows in refs.items():
        _read_row_refs(array_url, rows, options, spec, results)
    return _assemble(start, uris, results, spec)


def _read_files(
    files: list[tuple[int, str]],
    options: Mapping[str, Any],
    spec: ImageSpec,
    results: dict[int, np.ndarray | str],
) -> None:
    by_fs: dict[AbstractFileSystem, list[tuple[int, str, str]]] = defaultdict(list)
    for image_id, uri in files:
        try:
            fs, path = url_to_fs(uri, options)
        except _UNREADABLE_URL as exc:
            results[image_id] = f"cannot open uri ({exc})"
            continue
        by_fs[fs].append((image_id, uri, path))
    for fs, group in by_fs.items():
        if is_local(fs):
            group = _regular_files(group, results)
        for low in range(0, len(group), _FETCH_BATCH):
            batch = group[low : low + _FETCH_BATCH]
            # cat_ranges rather than cat: cat expands glob characters in file names and
            # returns a dict; cat_ranges keeps order and is batched the same way on s3.
            blobs = fs.cat_ranges([path for _, _, path in batch], None, None, on_error="return")
            for (image_id, uri, path), blob in zip(batch, blobs, strict=True):
                if isinstance(blob, Exception) and is_transient(blob):
                    blob = _fetch_again(fs, path, uri)
                results[image_id] = _decode_file(blob, uri, spec)


def _regular_files(
    group: list[tuple[int, str, str]], results: dict[int, np.ndarray | str]
) -> list[tuple[int, str, str]]:
    """The local files of ``group`` that are safe to read whole; the others get their reason.

    A device, pipe or socket (``/dev/zero``, a FIFO named ``x.png``) would block or never end,
    and a file above :data:`MAX_IMAGE_FILE_BYTES` would only exhaust memory.
    """
    kept = []
    for image_id, uri, path in group:
        try:
            info = os.stat(path)
        except (OSError, ValueError):  # missing, forbidden, embedded NUL...: fetched for its reason
            kept.append((image_id, uri, path))
            continue
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
            results[image_id] = "not a regular file (a device, pipe or socket)"
        elif info.st_size > MAX_IMAGE_FILE_BYTES:
            results[image_id] = f"file too large for an image ({info.st_size} bytes)"
        else:
            kept.append((image_id, uri, path))
    return kept


def _fetch_again(fs: AbstractFileSystem, path: str, uri: str) -> bytes | Exception:
    """Retry a file whose batched fetch failed transiently: a storage hiccup must not mark an
    image unreadable for good (errors count as seen). A lasting outage fails the job."""
    try:
        return retry_call(f"reading {uri}", fs.cat_file, path)
    except StorageUnavailableError:
        raise
    except Exception as exc:  # a permanent error now (e.g. deleted meanwhile): the image's reason
        return exc


def _decode_file(blob: bytes | Exception, uri: str, spec: ImageSpec) -> np.ndarray | str:
    if isinstance(blob, Exception):
        return _io_reason(blob)
    try:
        return decode_and_convert(blob, uri, spec)  # decoded no larger than spec needs
    except ImageReadError as exc:
        return getattr(exc, "reason", str(exc))


def _io_reason(exc: Exception) -> str:
    return file_error_reason(exc) or f"cannot read file ({type(exc).__name__}: {exc})"


def _read_row_refs(
    array_url: str,
    rows: list[tuple[int, int]],
    options: Mapping[str, Any],
    spec: ImageSpec,
    results: dict[int, np.ndarray | str],
) -> None:
    """Read ``<array_url>#<row>`` entries, given as ``(image_id, row)`` pairs."""
    try:
        source = open_source(_array_kind(array_url), array_url, options)
        count = source.shape[0]
        wanted = np.unique([row for _, row in rows if row < count]).astype(np.int64)
        images = source.get(wanted)
    except _UNREADABLE_URL as exc:
        for image_id, _ in rows:
            results[image_id] = f"cannot read array ({exc})"
        return
    for image_id, row in rows:
        if row >= count:
            results[image_id] = f"row {row} out of range (the array has {count} rows)"
    if not len(wanted):
        return
    pixels, ok = convert_batch(images, spec, array_url)
    position = np.cumsum(ok) - 1
    for image_id, row in rows:
        if row < count:
            k = int(np.searchsorted(wanted, row))
            results[image_id] = pixels[position[k]] if ok[k] else "all pixel values are NaN"


def _array_kind(url: str) -> str:
    name = posixpath.basename(url).lower()
    if IDX_NAME_PATTERN.search(name):
        return "idx"
    return "npy" if name.endswith(".npy") else "zarr"


def _assemble(
    start: int, uris: tuple[str, ...], results: dict[int, np.ndarray | str], spec: ImageSpec
) -> ShardData:
    ids: list[int] = []
    read_uris: list[str] = []
    pixels: list[np.ndarray] = []
    errors: list[ReadError] = []
    for image_id, uri in enumerate(uris, start):
        value = results[image_id]
        if isinstance(value, str):
            errors.append(ReadError(image_id, uri, value))
        else:
            ids.append(image_id)
            read_uris.append(uri)
            pixels.append(value)
    stacked = np.stack(pixels) if pixels else np.empty((0, *spec.shape), dtype=np.uint8)
    return ShardData(np.asarray(ids, dtype=np.int64), read_uris, stacked, errors)

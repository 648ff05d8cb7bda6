"""Corpus readers: every way of pointing patchhash at a set of images.

:func:`open_corpus` looks at a URL (a local path or any fsspec URL, with optional storage
options) and returns a :class:`Corpus`. The image id of an image is its position in the
corpus, fixed when the corpus is opened:

======================  ==============================================  ==================
URL                     images, in id order                             uri of image ``i``
======================  ==============================================  ==================
folder                  image files below it, recursively, sorted by    the file's URL
                        full path
glob (``*``, ``?``,     matching image files, sorted by full path       the file's URL
``[``)
image file              that image alone                                the file's URL
``*-idx3-ubyte[.gz]``,  rows of an IDX file of uint8 images             ``<url>#<i>``
``*.idx3[.gz]``
``*.npy``               rows of an ``[n, h, w]`` or ``[n, h, w, c]``    ``<url>#<i>``
                        array, c in 1, 3, 4
Zarr array folder       rows of an array shaped as for ``.npy``         ``<url>#<i>``
``.txt``, ``.lst``      one uri per line; blank lines and lines         the listed uri
                        starting with ``#`` are skipped
``.csv``                the ``uri`` column, else the first column (the  the listed uri
                        first row is always a header)
``.parquet``            the ``uri`` column                              the listed uri
======================  ==============================================  ==================

Image files are recognised by their extension: png, jpg, jpeg, bmp, tif, tiff, gif, webp
(any case). URLs are shown as the user would type them: absolute paths for local files,
``protocol://path`` otherwise.

In a uri list, a uri without a protocol is taken on the list's filesystem, relative to the
list's folder. A uri ending in ``#<row>`` designates a row of an IDX, npy or Zarr array, so
that the uris of search results can be fed back as queries. In CSV and Parquet lists the
image id is the data row number (an empty uri cell is reported as an unreadable image), so
that ids stay aligned with the other columns.

Images that cannot be read (missing, empty, truncated, not an image...) never fail a read:
they are reported as :class:`ReadError` rows of the :class:`ShardData`. A URL that cannot be
read as a whole (unknown format, bad header, wrong array shape) raises :class:`CorpusError`.

Work is cut into :class:`Shard` objects: small and picklable, they carry everything a Dask
worker needs to read their rows without listing the corpus again. Arrays are opened once per
process: IDX files that are gzip-compressed or remote are decoded in full on first use and
kept in a process-wide LRU cache of the two most recently used arrays.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import posixpath
import re
import stat
import threading
import tokenize
import zlib
from abc import ABC, abstractmethod
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any, BinaryIO, ClassVar

import numpy as np
from fsspec.spec import AbstractFileSystem

from storage.errors import ConfigError, CorpusError, ImageReadError, PatchhashError, StorageUnavailableError
from storage.fs import display_url, is_local, resolve_url, url_to_fs
from storage.images import ImageSpec, convert, convert_batch, decode_image
from storage.retry import is_transient, retry_call

__all__ = [
    "IMAGE_EXTENSIONS",
    "ReadError",
    "ShardData",
    "Shard",
    "Corpus",
    "ImageFilesCorpus",
    "UriListCorpus",
    "ArrayCorpus",
    "IdxCorpus",
    "NpyCorpus",
    "ZarrCorpus",
    "open_corpus",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
IDX_IMAGES_MAGIC = 0x00000803
_ARRAY_KINDS = frozenset({"idx", "npy", "zarr"})
_LIST_SUFFIXES = (".txt", ".lst", ".csv", ".parquet")
IDX_NAME_PATTERN = re.compile(r"[.-]idx\d([-_.]ubyte)?(\.gz)?$", re.IGNORECASE)
_GLOB_CHARS = re.compile(r"[*?\[]")
_ROW_REF = re.compile(r"^(?P<url>.+)#(?P<row>\d+)$")
# What opening or reading one URL of a list may raise (unknown protocol, missing fsspec
# backend, I/O errors, CorpusError): it makes a ReadError for its rows, not a failed shard.
_UNREADABLE_URL = (ValueError, ImportError, OSError, EOFError, zlib.error)
MAX_IMAGE_FILE_BYTES = 1 << 30  # a larger "image" file is refused unread
_FETCH_BATCH = 256  # image files fetched per fs call: bounds the memory held by raw bytes
_DAMAGED = "the file is damaged or incomplete: write or download it again"
_FORMATS_HELP = (
    "expected a folder or glob of images (png, jpg, jpeg, bmp, tif, tiff, gif, webp), "
    "a single image file, an IDX file (*-idx3-ubyte[.gz]), a .npy array, a Zarr array, "
    "or a list of uris (.txt, .lst, .csv, .parquet)"
)


@dataclass(frozen=True)
class ReadError:
    """An image of a corpus that could not be read.

    Attributes
    ----------
    image_id : int
        Id of the image in its corpus.
    uri : str
        Its uri.
    reason : str
        Short reason, e.g. ``"file not found"``, ``"truncated image"``.
    """

    image_id: int
    uri: str
    reason: str


@dataclass
class ShardData:
    """Pixels of the rows of a shard that could be read, and the rows that could not.

    Attributes
    ----------
    ids : numpy.ndarray
        ``int64 [m]`` ids of the images read, ascending.
    uris : list of str
        Their uris.
    pixels : numpy.ndarray
        ``uint8 [m, height, width, channels]`` images converted to the requested spec.
    errors : list of ReadError
        The other rows of the shard, ascending by id.
    """

    ids: np.ndarray
    uris: list[str]
    pixels: np.ndarray
    errors: list[ReadError]


@dataclass(frozen=True)
class Shard:
    """The rows ``[start, stop)`` of a corpus: small and picklable, read by Dask workers.

    Attributes
    ----------
    index : int
        Position of the shard in the list returned by :meth:`Corpus.shards`.
    start, stop : int
        First (inclusive) and last (exclusive) image id.
    kind : str
        Kind of the corpus (see :attr:`Corpus.kind`).
    url : str
        URL of the corpus.
    storage_options : Mapping
        fsspec options used for every URL read.
    uris : tuple of str
        For ``images`` and ``urilist`` corpora, the uris of the rows of this shard; empty for
        array corpora.
    """

    index: int
    start: int
    stop: int
    kind: str
    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict, hash=False, repr=False)
    uris: tuple[str, ...] = field(default=(), repr=False)

    def __len__(self) -> int:
        return self.stop - self.start

    def read(self, spec: ImageSpec) -> ShardData:
        """Read and convert the rows of this shard.

        Parameters
        ----------
        spec : ImageSpec
            Geometry to convert every image to.

        Returns
        -------
        ShardData
            Unreadable images are reported in ``errors``, never raised.

        Raises
        ------
        CorpusError
            The array behind an ``idx``/``npy``/``zarr`` shard cannot be read at all.
        """
        if self.kind in _ARRAY_KINDS:
            data = _read_array_rows(self, spec)
        else:
            data = _read_uri_rows(self.start, self.uris, self.storage_options, spec)
        if data.errors:
            first = data.errors[0]
            log.warning(
                "%s rows [%d, %d): %d of %d images could not be read (first: %s: %s)",
                self.url, self.start, self.stop, len(data.errors), len(self),
                first.uri, first.reason,
            )
        return data


class Corpus(ABC):
    """A set of images with fixed ids ``0 .. len - 1``; one subclass per format.

    Attributes
    ----------
    url : str
        The corpus URL (absolute path for local files).
    kind : str
        ``"images"``, ``"idx"``, ``"npy"``, ``"zarr"`` or ``"urilist"``.
    storage_options : dict
        fsspec options used for every URL read.
    """

    kind: ClassVar[str]

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.storage_options = dict(storage_options or {})

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def uris(self) -> list[str]:
        """Uri of every image; the list index is the image id."""

    def native_spec(self) -> ImageSpec | None:
        """Geometry of the stored images when it is uniform (arrays), else None."""
        return None

    def shards(self, shard_size: int, start: int = 0) -> list[Shard]:
        """Cut the ids ``[start, len)`` into consecutive shards of ``shard_size`` rows.

        Parameters
        ----------
        shard_size : int
            Rows per shard (the last one may be shorter), >= 1.
        start : int, optional
            First id to cover, e.g. the number of images already indexed.

        Returns
        -------
        list of Shard
            Deterministic: the same corpus and arguments give the same shards. Their
            ``index`` counts from 0 in this list.
        """
        if not _is_int(shard_size) or shard_size < 1:
            raise ConfigError(f"shard_size must be an integer >= 1, got {shard_size!r}")
        if not _is_int(start) or not 0 <= start <= len(self):
            raise ConfigError(f"start must be an integer in [0, {len(self)}], got {start!r}")
        size, count = int(shard_size), len(self)
        return [
            self._shard(index, low, min(low + size, count))
            for index, low in enumerate(range(int(start), count, size))
        ]

    def read(self, spec: ImageSpec, start: int = 0, stop: int | None = None) -> ShardData:
        """Read the images ``[start, stop)`` (all by default) in this process."""
        stop = len(self) if stop is None else stop
        if not 0 <= start <= stop <= len(self):
            raise ConfigError(
                f"cannot read rows [{start}, {stop}) of {self.url}: it has {len(self)} images"
            )
        return self._shard(0, int(start), int(stop)).read(spec)

    def _shard(self, index: int, start: int, stop: int) -> Shard:
        return Shard(index, start, stop, self.kind, self.url, self.storage_options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, images={len(self)})"


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


class _ListedCorpus(Corpus):
    """A corpus whose images are listed by uri when it is opened."""

    def __init__(
        self, url: str, storage_options: Mapping[str, Any] | None, uris: list[str]
    ) -> None:
        super().__init__(url, storage_options)
        self._uris = list(uris)

    def __len__(self) -> int:
        return len(self._uris)

    def uris(self) -> list[str]:
        return list(self._uris)

    def _shard(self, index: int, start: int, stop: int) -> Shard:
        return Shard(
            index, start, stop, self.kind, self.url, self.storage_options,
            tuple(self._uris[start:stop]),
        )


class ImageFilesCorpus(_ListedCorpus):
    """Image files found in a folder, by a glob, or a single image file."""

    kind = "images"


class UriListCorpus(_ListedCorpus):
    """Images listed in a ``.txt``, ``.lst``, ``.csv`` or ``.parquet`` file."""

    kind = "urilist"


class ArrayCorpus(Corpus):
    """The rows of an ``[n, h, w]`` or ``[n, h, w, c]`` array; uris are ``<url>#<row>``."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, storage_options)
        source = _open_source(self.kind, url, self.storage_options)
        self.shape: tuple[int, ...] = source.shape
        self.dtype: np.dtype = source.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def uris(self) -> list[str]:
        return [f"{self.url}#{row}" for row in range(len(self))]

    def native_spec(self) -> ImageSpec:
        """``(h, w, 1)`` for grey arrays, ``(h, w, 3)`` for RGB and RGBA ones."""
        channels = 1 if len(self.shape) == 3 or self.shape[3] == 1 else 3
        return ImageSpec(self.shape[1], self.shape[2], channels)


class IdxCorpus(ArrayCorpus):
    """An IDX file of uint8 images (magic 0x00000803), optionally gzip-compressed."""

    kind = "idx"


class NpyCorpus(ArrayCorpus):
    """A ``.npy`` array, read by byte ranges (local files with ``pread``, others by range requests)."""

    kind = "npy"


class ZarrCorpus(ArrayCorpus):
    """A Zarr (v2 or v3) array; a shard reads only the chunks holding its rows."""

    kind = "zarr"


def open_corpus(url: str, storage_options: Mapping[str, Any] | None = None) -> Corpus:
    """Open the images at ``url``; see the module docstring for the accepted URLs.

    Parameters
    ----------
    url : str
        Local path or fsspec URL (``s3://``, ``memory://``...).
    storage_options : dict, optional
        fsspec options (credentials, endpoint...), used for every URL the corpus reads.

    Returns
    -------
    Corpus

    Raises
    ------
    CorpusError
        Nothing readable at ``url``, or a file of a known format with a bad header or shape.
    """
    url = str(url)
    options = dict(storage_options or {})
    fs, path = url_to_fs(url, options)
    if _GLOB_CHARS.search(path):
        return _open_glob(fs, path, url, options)
    shown = display_url(fs, path.rstrip("/") or path)
    name = posixpath.basename(path.rstrip("/")).lower()
    if IDX_NAME_PATTERN.search(name):
        return IdxCorpus(shown, options)
    if name.endswith(".npy"):
        return NpyCorpus(shown, options)
    if name.endswith(_LIST_SUFFIXES):
        return UriListCorpus(shown, options, _read_uri_list(fs, path, shown))
    with reading(shown, "corpus"):
        if fs.isdir(path):
            return _open_folder(fs, path, shown, options)
        if fs.isfile(path) and _is_image_name(name):
            return ImageFilesCorpus(shown, options, [shown])
        exists = fs.exists(path)
    if not exists:
        raise CorpusError(
            f"no images found at {url}: nothing exists at that path (check it"
            f"{'' if is_local(fs) else ', and --storage-options'}); {_FORMATS_HELP}"
        )
    raise CorpusError(f"no images found at {url}; {_FORMATS_HELP}")


def _is_image_name(path: str) -> bool:
    return posixpath.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def _open_folder(
    fs: AbstractFileSystem, path: str, shown: str, options: dict[str, Any]
) -> Corpus:
    node_type = _zarr_node_type(fs, path)
    if node_type == "array":
        return ZarrCorpus(shown, options)
    if node_type == "group":
        raise CorpusError(
            f"{shown} is a Zarr group, not an array; pass the URL of the image array "
            f"inside it (e.g. {shown}/<array name>)"
        )
    files = sorted(p for p in retry_call(f"listing {shown}", fs.find, path) if _is_image_name(p))
    if not files:
        raise CorpusError(f"no images found at {shown} (searched recursively); {_FORMATS_HELP}")
    return ImageFilesCorpus(shown, options, [display_url(fs, p) for p in files])


def _open_glob(
    fs: AbstractFileSystem, pattern: str, url: str, options: dict[str, Any]
) -> Corpus:
    matches = retry_call(f"listing {url}", fs.glob, pattern, detail=True)
    files = sorted(
        p for p, info in matches.items() if info.get("type") == "file" and _is_image_name(p)
    )
    if not files:
        raise CorpusError(
            f"no images found at {url}: the glob matched {len(matches)} paths, none of them "
            f"an image file; {_FORMATS_HELP}"
        )
    return ImageFilesCorpus(display_url(fs, pattern), options, [display_url(fs, p) for p in files])


def _zarr_node_type(fs: AbstractFileSystem, path: str) -> str | None:
    """``"array"``, ``"group"`` or None when ``path`` is not a Zarr node."""
    try:
        metadata = json.loads(fs.cat_file(posixpath.join(path, "zarr.json")))
    except (FileNotFoundError, ValueError):
        pass
    else:
        if not isinstance(metadata, dict):
            raise CorpusError(f"{display_url(fs, path)}/zarr.json is not Zarr metadata (not a JSON object); {_DAMAGED}")
        return metadata.get("node_type")
    for name, node_type in ((".zarray", "array"), (".zgroup", "group")):
        if fs.isfile(posixpath.join(path, name)):
            return node_type
    return None


# --- uri lists -------------------------------------------------------------------------


def _read_uri_list(fs: AbstractFileSystem, path: str, shown: str) -> list[str]:
    with reading(shown, "uri list"):
        if path.lower().endswith(".parquet"):
            entries = _parquet_uris(fs, path, shown)
        else:
            text = read_text(fs, path, shown)
            entries = _csv_uris(text, shown) if path.lower().endswith(".csv") else _text_uris(text)
    if not entries:
        raise CorpusError(
            f"{shown} lists no uris; write one image URL (or <array url>#<row>) per "
            "line/row, with a 'uri' header for CSV and Parquet files"
        )
    base = display_url(fs, posixpath.dirname(path))
    return [resolve_url(entry, base) if entry else "" for entry in entries]


def read_text(fs: AbstractFileSystem, path: str, shown: str) -> str:
    """Content of a UTF-8 text file (a byte-order mark is dropped); ``shown`` names it in errors."""
    try:
        return fs.cat_file(path).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{shown} is not a UTF-8 text file ({exc}); save it as UTF-8") from None


def _text_uris(text: str) -> list[str]:
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def read_csv_rows(text: str, shown: str) -> list[list[str]]:
    """The non-blank rows of a CSV text; a malformed line raises :class:`CorpusError` naming it."""
    reader = csv.reader(io.StringIO(text))
    try:
        return [row for row in reader if any(c.strip() for c in row)]
    except csv.Error as exc:
        raise CorpusError(f"{shown}, line {reader.line_num}: not valid CSV ({brief(exc)}); fix that line") from None


def _csv_uris(text: str, shown: str) -> list[str]:
    rows = read_csv_rows(text, shown)
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    if "uri" in header:
        column = header.index("uri")
    else:
        column = 0
        log.info("%s has no 'uri' column; reading uris from its first column %r", shown, rows[0][0])
    return [row[column].strip() if column < len(row) else "" for row in rows[1:]]


def _parquet_uris(fs: AbstractFileSystem, path: str, shown: str) -> list[str]:
    # Imported here: pyarrow is heavy and only needed for this format.
    import pyarrow as pa
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as stream:
        try:
            parquet = pq.ParquetFile(stream)
        except pa.ArrowException as exc:
            raise CorpusError(f"{shown} is not a Parquet file ({brief(exc)}); {_DAMAGED}") from None
        columns = parquet.schema_arrow.names
        if "uri" not in columns:
            raise CorpusError(
                f"{shown} has no 'uri' column (columns: {', '.join(columns) or 'none'}); "
                "store the image URLs in a string column named 'uri'"
            )
        values = parquet.read(columns=["uri"]).column("uri").to_pylist()
    return ["" if value is None else str(value).strip() for value in values]


def brief(exc: BaseException, limit: int = 300) -> str:
    """``exc``'s message on one line, at most ``limit`` characters (for one-line errors)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextmanager
def reading(url: str, what: str) -> Iterator[None]:
    """Turn I/O errors raised while reading ``url`` as a whole into :class:`CorpusError`."""
    try:
        yield
    except PatchhashError:
        raise
    except FileNotFoundError:
        raise CorpusError(f"{what} not found: {url}; check the path") from None
    except IsADirectoryError:
        raise CorpusError(f"{what} {url} is a directory; expected a file") from None
    except PermissionError as exc:
        raise CorpusError(
            f"cannot read {what} {url}: permission denied ({brief(exc)}); check its permissions "
            "(and --storage-options for a remote URL)"
        ) from None
    except (OSError, EOFError, zlib.error) as exc:
        hint = _DAMAGED
        if "gzip" in str(exc).lower() and url.lower().endswith(".gz"):
            hint = "it is not a complete gzip file: download it again, or drop the .gz suffix if it is not compressed"
        raise CorpusError(f"cannot read {what} {url}: {brief(exc)}; {hint}") from None


# --- reading image files and row references -------------------------------------------


def _read_uri_rows(
    start: int, uris: tuple[str, ...], options: Mapping[str, Any], spec: ImageSpec
) -> ShardData:
    """Read the rows of an ``images`` or ``urilist`` shard."""
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
        return convert(decode_image(blob, uri), spec, uri)
    except ImageReadError as exc:
        return getattr(exc, "reason", str(exc))


def _io_reason(exc: Exception) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return f"cannot read file ({type(exc).__name__}: {exc})"


def _read_row_refs(
    array_url: str,
    rows: list[tuple[int, int]],
    options: Mapping[str, Any],
    spec: ImageSpec,
    results: dict[int, np.ndarray | str],
) -> None:
    """Read ``<array_url>#<row>`` entries, given as ``(image_id, row)`` pairs."""
    try:
        source = _open_source(_array_kind(array_url), array_url, options)
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


def _read_array_rows(shard: Shard, spec: ImageSpec) -> ShardData:
    source = _open_source(shard.kind, shard.url, shard.storage_options)
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
            f"cannot read rows [{shard.start}, {shard.stop}) of {shard.url}: {brief(exc)}; {_DAMAGED}"
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


# --- array sources -----------------------------------------------------------------------


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
            runs = _consecutive_runs(np.asarray(rows, dtype=np.int64))
        out = np.empty((sum(b - a for a, b in runs), *self.shape[1:]), dtype=self.dtype)
        buffer = memoryview(out.reshape(-1).view(np.uint8))
        ranges = [(self._offset + a * self._row_bytes, self._offset + b * self._row_bytes) for a, b in runs]
        filled = self._read_local(ranges, buffer) if is_local(self._fs) else self._read_remote(ranges, buffer)
        if filled < len(buffer):
            raise CorpusError(
                f"{self._fs.unstrip_protocol(self._path)} is truncated: a read of whole rows returned "
                f"{filled} of {len(buffer)} bytes; {_DAMAGED}"
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


def _consecutive_runs(rows: np.ndarray) -> list[tuple[int, int]]:
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


class _SourceCache:
    """Process-wide LRU of opened arrays, so that the shards one worker reads decode once."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[str, str, str], _ArraySource] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self, key: tuple[str, str, str], open_source: Callable[[], _ArraySource]
    ) -> _ArraySource:
        with self._lock:
            if key in self._entries:
                self.hits += 1
                self._entries.move_to_end(key)
                return self._entries[key]
            self.misses += 1
            source = self._entries[key] = open_source()
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)
            return source

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0


_SOURCES = _SourceCache(maxsize=2)


def _open_source(kind: str, url: str, options: Mapping[str, Any]) -> _ArraySource:
    openers = {"idx": _open_idx, "npy": _open_npy, "zarr": _open_zarr}
    key = (kind, url, json.dumps(dict(options), sort_keys=True, default=repr))
    return _SOURCES.get(key, lambda: openers[kind](url, options))


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
        raise CorpusError(f"{url}: array header gives a negative shape {shape}; {_DAMAGED}")
    if 0 in shape:
        raise CorpusError(f"{url}: array of shape {shape} holds no pixels; pass an array of at least one image")


def check_size(fs: AbstractFileSystem, path: str, url: str, offset: int, shape: tuple[int, ...], itemsize: int) -> None:
    """Refuse a file shorter than its header says (``offset`` bytes of header, then the data)."""
    expected = offset + math.prod(shape) * itemsize
    size = fs.size(path)
    if size is not None and size < expected:
        raise CorpusError(
            f"{url} is truncated: {size} bytes, but its header announces shape {shape} "
            f"({expected} bytes); {_DAMAGED}"
        )


# --- IDX ---------------------------------------------------------------------------------


def read_idx_header(
    stream: BinaryIO, url: str, magic: int, expected: str, hint: str
) -> tuple[int, ...]:
    """Check the magic number of an IDX stream and return its dimensions.

    Parameters
    ----------
    stream : file-like
        Positioned at the start of the (decompressed) file; left at the start of the data.
    url : str
        For error messages.
    magic : int
        The magic number required, e.g. ``0x00000803`` (uint8, 3 dimensions).
    expected, hint : str
        What the magic number means and how to fix a mismatch, for the error message.

    Raises
    ------
    CorpusError
        Another magic number, or a truncated header.
    """
    head = stream.read(4)
    if len(head) < 4 or int.from_bytes(head, "big") != magic:
        found_magic = int.from_bytes(head, "big") if len(head) == 4 else None
        found = f"magic number 0x{found_magic:08x}" if found_magic is not None else f"a file of {len(head)} bytes"
        if found_magic is None or found_magic >> 8 != 0x08 or found_magic & 0xFF not in (1, 3):
            # not the other kind of uint8 IDX file: another format, or a damaged file
            hint = f"patchhash reads IDX files of {expected} only: check that this is the right file; if it is, {_DAMAGED}"
        raise CorpusError(
            f"{url} is not an IDX file of {expected}: found {found}, expected magic number "
            f"0x{magic:08x}. {hint}"
        )
    ndim = magic & 0xFF
    raw = stream.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise CorpusError(f"{url}: truncated IDX header ({4 + len(raw)} bytes); {_DAMAGED}")
    return tuple(int.from_bytes(raw[i : i + 4], "big") for i in range(0, 4 * ndim, 4))


def read_idx_file(
    url: str, options: Mapping[str, Any] | None, magic: int, expected: str, hint: str
) -> np.ndarray:
    """Whole content of a uint8 IDX file (gzip-compressed when its name ends in ``.gz``).

    See :func:`read_idx_header` for the parameters.
    """
    fs, path = url_to_fs(url, options)
    with reading(url, "IDX file"), _open_idx_stream(fs, path) as stream:
        shape = read_idx_header(stream, url, magic, expected, hint)
        data = stream.read()
    size = math.prod(shape)
    if len(data) < size:
        raise CorpusError(
            f"{url} is truncated: {len(data)} bytes of data, {size} expected for shape {shape}; {_DAMAGED}"
        )
    return np.frombuffer(data, dtype=np.uint8, count=size).reshape(shape)


def _open_idx_stream(fs: AbstractFileSystem, path: str) -> BinaryIO:
    compression = "gzip" if path.lower().endswith(".gz") else None
    return fs.open(path, "rb", compression=compression)


_IDX_IMAGES = "uint8 images [n, h, w]"
_IDX_IMAGES_HINT = "If this is a labels file (idx1), pass it as --labels."


def _open_idx(url: str, options: Mapping[str, Any]) -> _ArraySource:
    fs, path = url_to_fs(url, options)
    with reading(url, "IDX file"), _open_idx_stream(fs, path) as stream:
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


# --- npy ---------------------------------------------------------------------------------


_NPY_VERSIONS = ((1, 0), (2, 0), (3, 0))
# What numpy's header parser may raise on malformed input (it wraps most, not all, in ValueError;
# its fallback for headers written by Python 2 lets tokenize.TokenError out).
_NPY_HEADER_ERRORS = (
    ValueError, TypeError, SyntaxError, OverflowError, RecursionError, MemoryError, KeyError, tokenize.TokenError,
)


def read_npy_header(stream: BinaryIO, url: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, data offset)`` of a ``.npy`` stream; nothing is unpickled.

    Raises
    ------
    CorpusError
        Not a ``.npy`` file, an unknown version, or a malformed header.
    """
    try:
        version = np.lib.format.read_magic(stream)
        if version not in _NPY_VERSIONS:
            raise ValueError(f"unknown .npy format version {version[0]}.{version[1]}")
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, fortran_order, dtype = read_header(stream)
    except _NPY_HEADER_ERRORS as exc:
        raise CorpusError(
            f"{url} is not a valid .npy file ({brief(exc)}); write it with numpy.save"
        ) from None
    return tuple(shape), bool(fortran_order), dtype, stream.tell()


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
        raise CorpusError(f"cannot read .npy file {url}: {brief(exc)}; {_DAMAGED}") from None


def _load_remote_npy(fs: AbstractFileSystem, path: str, url: str) -> np.ndarray:
    with reading(url, ".npy file"):
        return np.load(io.BytesIO(fs.cat_file(path)), allow_pickle=False)


# --- Zarr --------------------------------------------------------------------------------


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
        raise CorpusError(f"cannot open Zarr array {url}: {brief(exc)}; {_DAMAGED}") from None
    _check_array(url, source.shape, source.dtype)
    return source

"""The corpus types: :class:`Corpus` and its subclasses, one per format, and the
:class:`Shard` that a Dask worker reads."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any, ClassVar

import numpy as np

from storage.corpus._files import read_uri_rows
from storage.corpus._shard_data import ShardData
from storage.corpus._sources import open_source, read_array_rows
from storage.errors import ConfigError
from storage.images import ImageSpec

__all__ = [
    "ArrayCorpus",
    "Corpus",
    "IdxCorpus",
    "ImageFilesCorpus",
    "NpyCorpus",
    "Shard",
    "UriListCorpus",
    "ZarrCorpus",
]

# Records are named after the package, storage.corpus, as before it was split into modules:
# log filters and worker logs match on that name.
log = logging.getLogger(__package__)

_ARRAY_KINDS = frozenset({"idx", "npy", "zarr"})


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
            data = read_array_rows(self, spec)
        else:
            data = read_uri_rows(self.start, self.uris, self.storage_options, spec)
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
        source = open_source(self.kind, url, self.storage_options)
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

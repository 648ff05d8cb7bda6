"""Where an index lives: its URL and the fsspec options that reach it, as one small value.

Every function that reads or writes an index takes an :class:`IndexLocation` instead of an
``(index_url, storage_options)`` pair; the public entry points build one at the boundary from
the URL and options a user gives (:meth:`IndexLocation.of`). A location is frozen and
picklable (Dask ships it to the workers), and its ``repr`` never shows the storage options,
which hold credentials.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fsspec.spec import AbstractFileSystem

from storage.fs import join_url, url_to_fs
from storage.layout import check_relative
from storage.retry import retry_call

__all__ = ["IndexLocation"]


@dataclass(frozen=True)
class IndexLocation:
    """An index (or a folder inside one) at ``url``, reached with ``storage_options``.

    >>> index = IndexLocation("s3://bucket/photos.index", {"key": "...", "secret": "..."})
    >>> index
    IndexLocation('s3://bucket/photos.index', storage_options=<hidden>)
    >>> index.join("versions", "v000002.json")
    's3://bucket/photos.index/versions/v000002.json'
    >>> index.child("model").url
    's3://bucket/photos.index/model'
    """

    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.url, IndexLocation):
            raise TypeError("IndexLocation(url, ...) takes a URL; use IndexLocation.of() to accept either")
        object.__setattr__(self, "url", os.fspath(self.url) if isinstance(self.url, os.PathLike) else str(self.url))
        object.__setattr__(self, "storage_options", dict(self.storage_options or {}))

    @classmethod
    def of(cls, index: "IndexLocation | str | os.PathLike", storage_options: Mapping[str, Any] | None = None) -> "IndexLocation":
        """``index`` as a location: a URL (or path) with ``storage_options``, or a location as it is.

        Raises
        ------
        ValueError
            For a location together with other ``storage_options`` than its own.
        """
        if isinstance(index, IndexLocation):
            if storage_options is not None and dict(storage_options) != index.storage_options:
                raise ValueError("pass the storage options in the IndexLocation, or a URL with storage_options, not both")
            return index
        return cls(index, storage_options)

    def __repr__(self) -> str:  # never the options: they hold credentials
        return f"IndexLocation({self.url!r}{', storage_options=<hidden>' if self.storage_options else ''})"

    def __str__(self) -> str:
        return self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __getstate__(self) -> dict:
        return {"url": self.url, "storage_options": self.storage_options}  # not the file system resolved in this process

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    # ------------------------------------------------------------------ paths

    def join(self, *parts: str) -> str:
        """The URL of ``parts`` under this location (``s3://b/idx`` + ``versions`` -> ``s3://b/idx/versions``)."""
        return join_url(self.url, *parts)

    def resolve(self, relative: str) -> str:
        """The URL of a path read from a manifest, refused if it could leave the index
        (:func:`storage.layout.check_relative`)."""
        return join_url(self.url, check_relative(relative))

    def child(self, relative: str) -> "IndexLocation":
        """The location of ``relative`` (a folder inside this one), with the same options."""
        return IndexLocation(self.join(relative), self.storage_options)

    # ------------------------------------------------------------------ file system

    def _resolved(self) -> tuple[AbstractFileSystem, str]:
        """``url_to_fs`` of the location, once per process (a forked or unpickled copy resolves again)."""
        cached = self.__dict__.get("_fs")
        if cached is None or cached[0] != os.getpid():
            fs, path = url_to_fs(self.url, self.storage_options)
            cached = (os.getpid(), fs, path.rstrip("/") or path)
            self.__dict__["_fs"] = cached
        return cached[1], cached[2]

    @property
    def fs(self) -> AbstractFileSystem:
        """The fsspec file system of the location."""
        return self._resolved()[0]

    @property
    def path(self) -> str:
        """The location's path on :attr:`fs` (no trailing ``/``)."""
        return self._resolved()[1]

    def fs_path(self, *parts: str) -> str:
        """The path on :attr:`fs` of ``parts`` under the location."""
        return "/".join([self.path, *parts]) if parts else self.path

    def exists(self, *parts: str) -> bool:
        """Whether ``parts`` under the location (the location itself without them) exists."""
        return bool(retry_call(f"checking {self.join(*parts)}", self.fs.exists, self.fs_path(*parts)))

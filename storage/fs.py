"""fsspec helpers: every path in patchhash is a URL with optional storage options."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from typing import Any

from fsspec.core import url_to_fs as _url_to_fs
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractFileSystem

from storage.errors import MissingExtraError

__all__ = ["url_to_fs", "join_url", "display_url", "is_local", "resolve_url", "file_identity", "EXTRAS"]

EXTRAS = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3")}
"""URL protocols served by a package of a patchhash extra: protocol -> (package, extra)."""


def url_to_fs(
    url: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[AbstractFileSystem, str]:
    """Return ``(filesystem, path)`` for any fsspec URL or local path.

    Raises
    ------
    MissingExtraError
        The URL's protocol needs a package that is not installed: for ``s3://``, the message
        names ``pip install 'patchhash[s3]'`` (instead of fsspec's ``ImportError``).
    """
    try:
        return _url_to_fs(str(url), **dict(storage_options or {}))
    except ImportError as exc:
        raise MissingExtraError(_missing_package(str(url), exc)) from exc


def _missing_package(url: str, exc: ImportError) -> str:
    protocol = url.partition("://")[0].lower() if "://" in url else "file"
    protocol = protocol.split("::")[-1]  # chained URLs (simplecache::s3://...) name the last one
    if protocol in EXTRAS:
        package, extra = EXTRAS[protocol]
        return (f"{url}: {protocol}:// URLs need {package}, which is not installed: "
                f"pip install 'patchhash[{extra}]' (from a checkout: pip install '.[{extra}]')")
    return f"{url}: {protocol}:// URLs need a package that is not installed ({' '.join(str(exc).split())})"


def join_url(url: str, *parts: str) -> str:
    """Join path components onto a URL, keeping its protocol (``s3://b/x`` + ``y`` -> ``s3://b/x/y``)."""
    url = str(url).rstrip("/")
    protocol, sep, rest = url.partition("://")
    if not sep:
        return posixpath.join(url or "/", *parts) if url else posixpath.join(*parts)
    return f"{protocol}://" + posixpath.join(rest, *parts)


def display_url(fs: AbstractFileSystem, path: str) -> str:
    """The URL a user would type for ``path`` on ``fs`` (plain path for local files)."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return path
    return fs.unstrip_protocol(path)


def is_local(fs: AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def resolve_url(ref: str, base_dir: str) -> str:
    """Resolve ``ref``, read from a list file, against the list's folder ``base_dir``.

    A ``ref`` with a protocol (``s3://...``, ``file://...``) is returned unchanged; a path,
    relative or absolute, is taken on the list's filesystem, keeping ``base_dir``'s protocol
    (``s3://b/lists`` + ``../img/a.png`` -> ``s3://b/img/a.png``). ``..`` and ``.`` are
    normalised away so that the result compares equal to listed URLs.
    """
    if "://" in ref:
        return ref
    protocol, sep, rest = base_dir.partition("://")
    if not sep:
        return os.path.normpath(os.path.join(base_dir, ref))
    path = posixpath.normpath(posixpath.join(rest, ref))
    if not rest.startswith("/"):
        path = path.lstrip("/")
    return f"{protocol}://{path}"


# What fsspec file systems report of a file (``info``, ``ls(detail=True)``) that changes when it
# is written again: its size, and the ETag, checksum or time each store gives.
_IDENTITY_KEYS = ("size", "ETag", "etag", "md5Hash", "crc32c", "mtime", "LastModified", "last_modified", "updated", "created")


def file_identity(info: Mapping[str, Any]) -> dict[str, str] | None:
    """What a file system's ``info`` of a file says of its content, as strings: its size and
    at least one of an ETag, a checksum or a time; None when it gives less (nothing then tells
    a file written again apart)."""
    seen = {key: str(info[key]) for key in _IDENTITY_KEYS if info.get(key) is not None}
    return seen if "size" in seen and len(seen) >= 2 else None

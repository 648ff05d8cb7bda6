"""fsspec helpers: every path in patchhash is a URL with optional storage options."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from typing import Any

from fsspec.core import url_to_fs as _url_to_fs
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractFileSystem

__all__ = ["url_to_fs", "join_url", "display_url", "is_local", "resolve_url"]


def url_to_fs(
    url: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[AbstractFileSystem, str]:
    """Return ``(filesystem, path)`` for any fsspec URL or local path."""
    return _url_to_fs(str(url), **dict(storage_options or {}))


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

"""Where each part of an index lives, relative to the index root (see docs/FORMAT.md)."""

from __future__ import annotations

import posixpath
import re

from storage.errors import IndexFormatError
from storage.fs import join_url

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "MODEL_DIR",
    "CODES",
    "shard_table_path",
    "partition_path",
    "version_path",
    "staging_dir",
    "check_relative",
    "resolve",
]

FORMAT = "patchhash-index"
FORMAT_VERSION = 1

MANIFEST = "manifest.json"
MODEL_DIR = "model"
CODES = "codes"
VERSIONS = "versions"
STAGING = "_staging"

_SAFE_PART = re.compile(r"^[A-Za-z0-9_.=-]+$")


def _range(start: int, stop: int) -> str:
    return f"{start:012d}-{stop:012d}"


def shard_table_path(table: str, start: int, stop: int) -> str:
    """``images/000000000000-000000010000.parquet`` (``table`` is ``images`` or ``errors``)."""
    return f"{table}/{_range(start, stop)}.parquet"


def partition_path(kind: str, start: int, stop: int, version: int) -> str:
    """``buckets/any/000000000000-000000010000.v000002`` - a partition built by ``version``."""
    return f"buckets/{kind}/{_range(start, stop)}.v{version:06d}"


def version_path(version: int) -> str:
    return f"{VERSIONS}/v{version:06d}.json"


def staging_dir(version: int) -> str:
    """Done-markers and the plan of a version being built (ignored by readers)."""
    return f"{STAGING}/v{version:06d}"


def check_relative(path: str, what: str = "path", source: str = "manifest") -> str:
    """Refuse paths that could escape the index root: absolute, ``..``, protocols, odd characters.

    Only ``[A-Za-z0-9_.=-]`` parts joined by ``/`` pass, so ``../x``, ``/abs``,
    ``s3://other/x``, ``file:///etc/passwd``, ``C:\\x``, ``~user`` and ``%2e%2e`` are all refused.
    ``source`` (the manifest's URL) names the file at fault in the error.
    """
    fix = f"{source} was tampered with or corrupted: restore it from versions/ or rebuild the index"
    if not isinstance(path, str) or not path:
        raise IndexFormatError(f"{source}: {what} must be a non-empty relative path, got {path!r}; {fix}")
    parts = path.split("/")
    if (
        "://" in path
        or path.startswith("/")
        or posixpath.normpath(path) != path
        or any(p in ("", ".", "..") or not _SAFE_PART.match(p) for p in parts)
    ):
        raise IndexFormatError(
            f"{source}: {what} {path!r} is not a plain relative path inside the index "
            f"(absolute paths, protocols and '..' are refused); {fix}"
        )
    return path


def resolve(index_url: str, relative: str) -> str:
    """URL of a manifest-relative path (checked)."""
    return join_url(index_url, check_relative(relative))

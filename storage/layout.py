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
    "VERSIONS",
    "STAGING",
    "PROTECTED",
    "shard_table_path",
    "partition_path",
    "partition_codes_path",
    "codes_chunk_path",
    "tombstones_path",
    "excluded_path",
    "version_path",
    "parse_version_path",
    "staging_dir",
    "object_version",
    "check_relative",
    "resolve",
]

FORMAT = "patchhash-index"
FORMAT_VERSION = 2

MANIFEST = "manifest.json"
MODEL_DIR = "model"
CODES = "codes"
VERSIONS = "versions"
STAGING = "_staging"
# Never garbage: what a reader or the next run needs whatever the versions say.
PROTECTED = (MANIFEST, MODEL_DIR, "runs", "_lock.json", STAGING)

_VERSION_SUFFIX = re.compile(r"\.v(\d{6,})(?:\.parquet)?$")

_SAFE_PART = re.compile(r"^[A-Za-z0-9_.=-]+$")


def _range(start: int, stop: int) -> str:
    return f"{start:012d}-{stop:012d}"


def shard_table_path(table: str, start: int, stop: int, version: int | None = None) -> str:
    """``images/000000000000-000000010000.v000002.parquet`` (``table`` is ``images`` or ``errors``).

    ``version`` is the version that wrote the table; format-1 tables have none.
    """
    suffix = "" if version is None else f".v{version:06d}"
    return f"{table}/{_range(start, stop)}{suffix}.parquet"


def partition_path(layout: str, start: int, stop: int, version: int) -> str:
    """``buckets/any/000000000000-000000010000.v000002``: a bucket map of ``layout`` (``any`` or
    ``pos``) of ids ``[start, stop)`` (a partition's base map or one of its deltas) built by ``version``."""
    return f"buckets/{layout}/{_range(start, stop)}.v{version:06d}"


def partition_codes_path(start: int, version: int) -> str:
    """``partition-codes/000000000000.v000002``: the codes array of the partition starting at
    ``start``, written by ``version`` (format 1 kept all codes in ``codes/``)."""
    return f"partition-codes/{start:012d}.v{version:06d}"


def codes_chunk_path(codes: str, chunk: int) -> str:
    """The object holding chunk ``chunk`` (rows ``[chunk * shard_size, ...)``) of a codes array
    (Zarr v3's default chunk keys; a chunk spans the whole code grid)."""
    return f"{codes}/c/{chunk}/0/0"


def tombstones_path(start: int, version: int) -> str:
    """``tombstones/000000000000.v000003.parquet``: ids deleted from the partition at ``start``."""
    return f"tombstones/{start:012d}.v{version:06d}.parquet"


def excluded_path(version: int) -> str:
    """``excluded/v000004.parquet``: uris that ``patchhash delete`` keeps out of later syncs."""
    return f"excluded/v{version:06d}.parquet"


def version_path(version: int) -> str:
    return f"{VERSIONS}/v{version:06d}.json"


def parse_version_path(name: str) -> int | None:
    """The version of ``versions/vNNNNNN.json`` (or its base name), else None."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    if base.startswith("v") and base.endswith(".json") and base[1:-5].isdigit():
        return int(base[1:-5])
    return None


def object_version(relative: str) -> int | None:
    """The version that wrote an index object, from its top-level name's ``.vNNNNNN`` suffix.

    ``buckets/pos/000000000000-000000000100.v000003/ids/c/0`` -> 3; None for objects whose
    name carries no version (format-1 tables, ``codes/``).
    """
    parts = relative.split("/")
    for depth in range(min(len(parts), 3)):
        match = _VERSION_SUFFIX.search(parts[depth])
        if match:
            return int(match.group(1))
    return None


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

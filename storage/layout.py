"""Where each part of an index lives, relative to the index root (see docs/FORMAT.md).

Every name of an object inside an index is made here, and only here: readers, writers, gc and
the jobs' staging areas all take their paths from these constants and functions.
"""

from __future__ import annotations

import posixpath
import re
from datetime import datetime, timezone

from storage.errors import IndexFormatError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "MODEL_DIR",
    "MODEL_FILE",
    "CARD_FILE",
    "MODEL_FILES",
    "MODEL_CARD",
    "CODES",
    "VERSIONS",
    "STAGING",
    "RUNS",
    "LOCK_FILE",
    "PROTECTED",
    "shard_table_path",
    "partition_path",
    "partition_codes_path",
    "codes_chunk_path",
    "parse_codes_chunk",
    "array_metadata_path",
    "tombstones_path",
    "excluded_path",
    "version_path",
    "parse_version_path",
    "staging_dir",
    "staging_plan_path",
    "done_dir",
    "done_marker_path",
    "shard_done_marker",
    "map_done_marker",
    "compact_done_marker",
    "run_record_path",
    "lock_takeover_path",
    "object_version",
    "check_relative",
]

FORMAT = "patchhash-index"
FORMAT_VERSION = 3

MANIFEST = "manifest.json"
VERSIONS = "versions"
CODES = "codes"
STAGING = "_staging"
RUNS = "runs"
LOCK_FILE = "_lock.json"
# The model folder an index carries (a copy of the model it was built with). A model folder
# anywhere holds these two files (pipeline.modelcard reads them); they are written model
# first, card last, so that a folder with a card is complete.
MODEL_DIR = "model"
MODEL_FILE = "model.keras"
CARD_FILE = "card.json"
MODEL_FILES = (MODEL_FILE, CARD_FILE)
MODEL_CARD = f"{MODEL_DIR}/{CARD_FILE}"
# Never garbage: what a reader or the next run needs whatever the versions say.
PROTECTED = (MANIFEST, MODEL_DIR, RUNS, LOCK_FILE, STAGING)

_VERSION_SUFFIX = re.compile(r"\.v(\d{6,})(?:\.parquet)?$")
_CODES_CHUNK = re.compile(r"/c/(\d+)/0/0$")

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


def parse_codes_chunk(relative: str) -> int | None:
    """The chunk number of an object written by :func:`codes_chunk_path`, else None."""
    match = _CODES_CHUNK.search(relative)
    return int(match.group(1)) if match else None


def array_metadata_path(array: str) -> str:
    """``codes/zarr.json``: the metadata object of a Zarr v3 array or group (present once it exists)."""
    return f"{array}/zarr.json"


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


def staging_plan_path(version: int) -> str:
    """``_staging/v000003/plan.json``: the plan a job building ``version`` resumes only if unchanged."""
    return f"{staging_dir(version)}/plan.json"


def done_dir(version: int) -> str:
    """``_staging/v000003/done``: the done-markers of the work finished for ``version``."""
    return f"{staging_dir(version)}/done"


def done_marker_path(version: int, marker: str) -> str:
    """``_staging/v000003/done/<marker>``, ``marker`` one of the names below."""
    return f"{done_dir(version)}/{marker}"


def shard_done_marker(start: int) -> str:
    """``000000000000.done.json``: the encode task of the shard of new ids at ``start`` is done."""
    return f"{start:012d}.done.json"


def map_done_marker(layout: str, start: int) -> str:
    """``pos-000000000000.done.json``: the ``layout`` bucket map of the new ids at ``start`` is built."""
    return f"{layout}-{start:012d}.done.json"


def compact_done_marker(start: int) -> str:
    """``compact-000000000000.done.json``: the compaction of the group of partitions at ``start`` is done."""
    return f"compact-{start:012d}.done.json"


def run_record_path(started: datetime, token: str) -> str:
    """``runs/20260101T010203.000000Z-<token>.json``: the run log record of one run (names sort by start)."""
    stamp = started.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{RUNS}/{stamp}-{token[:16]}.json"


def lock_takeover_path(token: str) -> str:
    """``_lock.json.takeover-<token>``: the guard of the take-over of the stale lock ``token``."""
    return f"{LOCK_FILE}.takeover-{token}"


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

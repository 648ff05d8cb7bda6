"""Fingerprints: what identifies the content of an image file, recorded when it is encoded.

A sync re-encodes an image when its fingerprint changed, so the fingerprint must change
whenever the content does, and should cost no read of the file. In order of preference:

* a checksum the store keeps (``etag:...`` on S3 and HTTP, ``md5hash:...``, ``crc32c:...`` on
  GCS): exact, free with the listing;
* ``size:<bytes>:mtime:<ns>`` (local files, ``memory://``): free with the listing, as rsync
  uses it. A file modified within :data:`RACY_SECONDS` of the listing could change again
  within the same clock tick without changing its mtime (git's "racy" files), so such files
  get a content hash instead;
* ``sha256:<hex>`` of the bytes: for racy files and where the store gives neither.

Rows of an array corpus (``file.npy#12``) are fingerprinted by the hash of their pixels
(``row:<hex>``), computed only when the array file's own fingerprint changed.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np

from storage.fs import url_to_fs
from storage.retry import retry_call

__all__ = ["RACY_SECONDS", "timestamp_of", "info_fingerprint", "fingerprint_uris", "fingerprint_file", "fingerprint_rows",
           "pixel_fingerprints", "is_content_hash"]

log = logging.getLogger(__name__)

RACY_SECONDS = 2.0
_CHECKSUM_KEYS = ("ETag", "etag", "md5Hash", "md5", "crc32c", "checksum", "sha256")
_TIME_KEYS = ("mtime", "LastModified", "last_modified", "updated", "created")
_ROWS_PER_READ = 65_536


def timestamp_of(value: Any) -> float | None:
    """Seconds since the epoch of a time as fsspec's ``info`` gives it (float, datetime, ISO text)."""
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def info_fingerprint(info: Mapping[str, Any], now: float | None = None) -> str | None:
    """The fingerprint fsspec's ``info`` of a file gives, or None if it needs a content hash.

    ``now`` (seconds since the epoch, default the current time) decides which files are racy.
    """
    for key in _CHECKSUM_KEYS:
        value = info.get(key)
        if value:
            return f"{key.lower()}:{str(value).strip(chr(34))}"
    size = info.get("size")
    stamp = next((t for t in map(timestamp_of, (info.get(k) for k in _TIME_KEYS)) if t is not None), None)
    if size is None or stamp is None:
        return None
    if stamp >= (time.time() if now is None else now) - RACY_SECONDS:
        return None
    return f"size:{int(size)}:mtime:{round(stamp * 1e9)}"


def is_content_hash(fingerprint: str | None) -> bool:
    return bool(fingerprint) and fingerprint.startswith("sha256:")


def _content_hash(fs, path: str, uri: str) -> str | None:
    try:
        data = retry_call(f"reading {uri}", fs.cat_file, path)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _split_row_ref(uri: str) -> tuple[str, str]:
    file, sep, row = uri.rpartition("#")
    return (file, f"#{row}") if sep and row.isdigit() else (uri, "")


def fingerprint_uris(uris: Sequence[str], storage_options: Mapping | None = None,
                     recorded: Sequence[str | None] | None = None, now: float | None = None) -> list[str | None]:
    """The current fingerprint of each uri (None for a uri that does not exist).

    One listing per folder gives the metadata of every file in it. Where the fingerprint
    recorded for a uri is a content hash, the content is hashed again to compare like with
    like. ``file#row`` uris take the fingerprint of their file.
    """
    now = time.time() if now is None else now
    by_folder: dict[str, list[int]] = defaultdict(list)
    for i, uri in enumerate(uris):
        by_folder[_split_row_ref(uri)[0].rpartition("/")[0]].append(i)
    out: list[str | None] = [None] * len(uris)
    for folder, positions in by_folder.items():
        fs, folder_path = url_to_fs(folder or ".", storage_options)
        try:
            listed = {str(info["name"]).rstrip("/"): info for info in retry_call(f"listing {folder}", fs.ls, folder_path, detail=True)}
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            listed = {}
        for i in positions:
            file, suffix = _split_row_ref(uris[i])
            path = f"{folder_path.rstrip('/')}/{file.rpartition('/')[2]}"
            info = listed.get(path)
            if info is None or info.get("type") not in (None, "file"):
                continue
            wanted_hash = recorded is not None and is_content_hash(recorded[i])
            fingerprint = None if wanted_hash else info_fingerprint(info, now)
            if fingerprint is None:
                fingerprint = _content_hash(fs, path, file)
            out[i] = fingerprint and fingerprint + suffix
    return out


def fingerprint_file(url: str, storage_options: Mapping | None = None, now: float | None = None) -> str | None:
    """The fingerprint of one file (an array corpus), or None if it does not exist."""
    return fingerprint_uris([url], storage_options, now=now)[0]


def pixel_fingerprints(pixels: np.ndarray) -> list[str]:
    """``row:<hash>`` of each image of ``pixels`` ``[n, ...]``."""
    flat = np.ascontiguousarray(pixels).reshape(len(pixels), -1)
    return ["row:" + hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest() for row in flat]


def fingerprint_rows(corpus, spec) -> list[str | None]:
    """:func:`pixel_fingerprints` of every row of an array ``corpus``, read at ``spec`` (the
    model's input, as the indexing tasks read them)."""
    out: list[str | None] = [None] * len(corpus)
    for start in range(0, len(corpus), _ROWS_PER_READ):
        data = corpus.read(spec, start, min(len(corpus), start + _ROWS_PER_READ))
        for row, fingerprint in zip(data.ids.tolist(), pixel_fingerprints(data.pixels)):
            out[row] = fingerprint
    return out

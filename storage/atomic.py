"""Whole-object writes that readers see either entirely or not at all."""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

from storage.fs import is_local, url_to_fs
from storage.retry import retry_call

__all__ = ["write_bytes_atomic", "write_json_atomic", "read_json", "temporary_sibling"]


def temporary_sibling(path: str) -> str:
    """A unique temporary name beside the local file ``path``, hidden (``.name.tmp-<id>``).

    A process killed between writing it and renaming it leaves it behind. Hidden, it is
    skipped by the readers of a results dataset folder (pyarrow, Dask, Spark and pandas
    ignore names starting with ``.`` or ``_``); ``name.tmp-<id>`` was read as one more part.
    """
    parent, _, name = path.rpartition("/")
    return f"{parent}/.{name}.tmp-{uuid.uuid4().hex}" if parent else f".{name}.tmp-{uuid.uuid4().hex}"


def write_bytes_atomic(url: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write ``data`` to ``url`` so that no reader ever sees a partial object.

    Local files: write a temporary sibling, fsync, then ``os.replace`` (atomic on POSIX).
    Object stores (s3, gcs, memory...): a single PUT, which those stores make atomic.
    Transient storage errors are retried (:mod:`storage.retry`).
    """
    retry_call(f"writing {url}", _write_bytes_atomic, url, data, storage_options)


def _write_bytes_atomic(url: str, data: bytes, storage_options: dict | None) -> None:
    fs, path = url_to_fs(url, storage_options)
    parent = path.rsplit("/", 1)[0]
    if is_local(fs):
        os.makedirs(parent, exist_ok=True)
        tmp = temporary_sibling(path)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def write_json_atomic(url: str, value: Any, storage_options: dict | None = None) -> None:
    write_bytes_atomic(url, json.dumps(value, indent=1, sort_keys=True).encode(), storage_options)


def read_json(url: str, storage_options: dict | None = None) -> Any:
    """Parse the JSON object at ``url``; ``FileNotFoundError`` if absent."""
    fs, path = url_to_fs(url, storage_options)
    return json.loads(retry_call(f"reading {url}", fs.cat_file, path))

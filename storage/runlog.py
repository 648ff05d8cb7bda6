"""The run log of an index: one small JSON object per run of a command that writes it.

Each run writes ``<index>/runs/<start>-<token>.json`` once, when it ends (whole-object
writes, never appends, so it works the same on object stores). ``<start>`` is the UTC start
time ``YYYYmmddTHHMMSS.ffffffZ``, so names sort by start time.
"""

from __future__ import annotations

import json
import logging
import socket
from datetime import datetime, timezone
from typing import Any

from storage.atomic import write_json_atomic
from storage.layout import RUNS, run_record_path
from storage.location import IndexLocation
from storage.retry import retry_call

__all__ = ["RUN_STATUSES", "write_run", "read_runs"]

log = logging.getLogger(__name__)

RUN_STATUSES = ("ok", "no-op", "failed")


def write_run(index: "IndexLocation | str", started: datetime, ended: datetime, token: str, status: str, *,
              corpus: str | None = None, images_added: int = 0, errors: int = 0, version: int | None = None,
              error: str | None = None, command: str = "index", counts: dict[str, int] | None = None) -> str:
    """Write one run's record; returns its path relative to the index.

    ``command`` is the writer (``index``, ``delete``, ``compact``, ``gc``, ``upgrade``);
    ``version`` is the version the run committed (None when it committed none); ``errors``
    counts the images it found unreadable; ``counts`` what it did (``added``, ``removed``,
    ``changed``, ``retried`` for a sync; ``deleted``, ``compacted``, ``objects``, ``bytes``
    for the others); ``error`` is the failure message of a failed run.
    """
    if status not in RUN_STATUSES:
        raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
    record = {
        "start": started.astimezone(timezone.utc).isoformat(), "end": ended.astimezone(timezone.utc).isoformat(),
        "seconds": round((ended - started).total_seconds(), 3), "status": status, "command": command, "corpus": corpus,
        "images_added": int(images_added), "errors": int(errors), "version": version,
        **{key: int(value) for key, value in (counts or {}).items()},
        "host": socket.gethostname(), "token": token, "error": error,
    }
    index = IndexLocation.of(index)
    path = run_record_path(started, token)
    write_json_atomic(index.join(path), record, index.storage_options)
    return path


def read_runs(index: "IndexLocation | str", last: int | None = 10) -> list[dict[str, Any]]:
    """The records of the ``last`` runs (all with None), oldest first; unreadable ones are skipped."""
    index = IndexLocation.of(index)
    fs, path = index.fs, index.fs_path(RUNS)
    fs.invalidate_cache(path)  # other processes add records
    try:
        names = sorted(n for n in retry_call(f"listing {index.url}/{RUNS}", fs.ls, path, detail=False) if n.endswith(".json"))
    except FileNotFoundError:
        return []
    runs = []
    for name in names if last is None else names[-last:] if last > 0 else []:
        try:
            runs.append(json.loads(retry_call(f"reading {name}", fs.cat_file, name)))
        except (FileNotFoundError, ValueError) as exc:
            log.warning("skipping unreadable run record %s: %s", name, exc)
    return runs

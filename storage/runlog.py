"""The run log of an index: one small JSON object per run of a command that writes it.

Each run writes ``<index>/runs/<start>-<token>.json`` once, when it ends (whole-object
writes, never appends, so it works the same on object stores). ``<start>`` is the UTC start
time ``YYYYmmddTHHMMSS.ffffffZ``, so names sort by start time.

A record holds ``start``, ``end``, ``seconds``, ``status`` (:data:`RUN_STATUSES`),
``command``, ``corpus``, ``images_added``, ``errors``, ``version``, the run's counts, ``host``,
``token`` (the run id) and ``error``. A run refused before it started (another run held the
lock, ``refused-locked``; the cluster failed its preflight checks, ``refused-preflight``) has
the same keys, ``error`` saying why, and ``holder``, ``holder_host``, ``holder_pid`` naming
the run that held the lock (:func:`record_refused`).
"""

from __future__ import annotations

import json
import logging
import socket
import uuid
from datetime import datetime, timezone
from typing import Any

from storage.atomic import write_json_atomic
from storage.layout import RUNS, run_record_path
from storage.location import IndexLocation
from storage.retry import retry_call

__all__ = ["RUN_STATUSES", "REFUSED_STATUSES", "write_run", "record_refused", "read_runs"]

log = logging.getLogger(__name__)

REFUSED_STATUSES = ("refused-locked", "refused-preflight")
"""Statuses of runs that were refused before they changed anything: another run held the
index's lock; the cluster failed the job's preflight checks."""
RUN_STATUSES = ("ok", "no-op", "failed", *REFUSED_STATUSES)


def write_run(index: "IndexLocation | str", started: datetime, ended: datetime, token: str, status: str, *,
              corpus: str | None = None, images_added: int = 0, errors: int = 0, version: int | None = None,
              error: str | None = None, command: str = "index", counts: dict[str, int] | None = None,
              holder: dict[str, Any] | None = None) -> str:
    """Write one run's record; returns its path relative to the index.

    ``command`` is the writer (``index``, ``delete``, ``compact``, ``gc``, ``upgrade``);
    ``version`` is the version the run committed (None when it committed none); ``errors``
    counts the images it found unreadable; ``counts`` what it did (``added``, ``removed``,
    ``changed``, ``retried`` for a sync; ``deleted``, ``compacted``, ``objects``, ``bytes``
    for the others); ``error`` is the failure message of a failed run; ``holder`` (refused
    runs) adds ``holder``, ``holder_host`` and ``holder_pid``.
    """
    if status not in RUN_STATUSES:
        raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
    record = {
        "start": started.astimezone(timezone.utc).isoformat(), "end": ended.astimezone(timezone.utc).isoformat(),
        "seconds": round((ended - started).total_seconds(), 3), "status": status, "command": command, "corpus": corpus,
        "images_added": int(images_added), "errors": int(errors), "version": version,
        **{key: int(value) for key, value in (counts or {}).items()},
        "host": socket.gethostname(), "token": token, "error": error, **(holder or {}),
    }
    index = IndexLocation.of(index)
    path = run_record_path(started, token)
    write_json_atomic(index.join(path), record, index.storage_options)
    return path


def record_refused(index: "IndexLocation | str", command: str, reason: str, status: str = "refused-locked", *,
                   corpus: str | None = None, token: str | None = None, started: datetime | None = None,
                   holder: str | None = None, holder_host: str | None = None, holder_pid: int | None = None) -> str | None:
    """Record a run of ``command`` that was refused before it changed anything; never raises.

    Parameters
    ----------
    index
        The index the run was for (an :class:`~storage.location.IndexLocation`, or a URL that
        needs no storage options).
    command
        ``index``, ``delete``, ``compact``, ``gc``, ``upgrade``...
    reason
        The message the user got (the record's ``error``).
    status
        ``refused-locked`` (another run held the lock) or ``refused-preflight`` (the cluster
        failed the job's checks before it started).
    corpus
        The corpus of an ``index`` run.
    token
        The refused run's id (default: a fresh one).
    started
        When the run started (default: now); the record ends now.
    holder, holder_host, holder_pid
        The run id (lock token), host and pid of the run holding the lock, if known.

    Returns
    -------
    str or None
        The record's path relative to the index; None if it could not be written (a warning is
        logged: the refusal itself is what the user must see).
    """
    if status not in REFUSED_STATUSES:
        raise ValueError(f"status must be one of {REFUSED_STATUSES}, got {status!r}")
    ended = datetime.now(timezone.utc)
    try:
        return write_run(index, started or ended, ended, token or uuid.uuid4().hex, status, corpus=corpus, error=reason,
                         command=command, holder={"holder": holder, "holder_host": holder_host, "holder_pid": holder_pid})
    except Exception as exc:  # noqa: BLE001 - a refused run's log entry must not hide why it was refused
        log.warning("could not record the refused %s run in the run log of %s: %s", command,
                    getattr(index, "url", index), exc)
        return None


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

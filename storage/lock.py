"""The writer's lock of an index: one ``patchhash index`` run at a time.

``<index>/_lock.json`` names its holder (host, pid, a unique token, start time, heartbeat).
It is created with create-exclusive semantics: locally a complete temporary file is
hard-linked into place (``os.link`` fails if the name exists, and readers never see a
partial lock); on object stores ``pipe_file(..., mode="create")`` (a conditional PUT on
s3fs and most backends; a check-then-write elsewhere), always followed by a read-back of the
token, so a backend without a real conditional write still never lets two writers both
believe they won.

A background thread rewrites the heartbeat every ``heartbeat_s`` seconds while the job runs.
A lock is *stale*, and taken over, when its heartbeat is older than ``stale_after_s``
(default ten heartbeats; clocks of the machines are assumed roughly in step) or when its
holder ran on this host, in this pid namespace, and that pid no longer exists. A take-over
first creates ``_lock.json.takeover-<stale token>`` exclusively, so of several waiting runs
only one deletes the stale lock, and only if it still carries the stale token; then every
run competes for a fresh create-exclusive as usual.

Only writers take the lock; queries read committed manifests and never need it. Before its
commit a job calls :meth:`IndexLock.verify`, so a run that lost its lock (a heartbeat stalled
past the stale timeout and another run took over) commits nothing. A run refused because a
live run holds the lock leaves a ``refused-locked`` record in the run log
(:func:`storage.runlog.record_refused`) naming the holder's run id (its token).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from storage.atomic import temporary_sibling
from storage.errors import PatchhashError
from storage.fs import is_local
from storage.layout import LOCK_FILE, lock_takeover_path
from storage.location import IndexLocation
from storage.retry import retry_call

__all__ = ["LOCK_FILE", "LockHeldError", "LockInfo", "IndexLock", "read_lock", "lock_status", "run_id_as_token"]

log = logging.getLogger(__name__)

# A command's run id (set by the CLI for the command's thread): its locks carry it as their
# token, so the lock, the run log record (``runs/<start>-<token>``) and the log lines agree.
_RUN_ID: ContextVar[str | None] = ContextVar("patchhash_run_id", default=None)


@contextmanager
def run_id_as_token(run_id: str | None) -> Iterator[None]:
    """Locks taken in the ``with`` body (in this thread) carry ``run_id`` as their token
    instead of a fresh uuid. For a command's own run id only: tokens must be unique among the
    runs that may hold an index's lock."""
    reset = _RUN_ID.set(run_id)
    try:
        yield
    finally:
        _RUN_ID.reset(reset)


HEARTBEAT_S = 10.0
STALE_HEARTBEATS = 10


class LockHeldError(PatchhashError, RuntimeError):
    """Another run holds the index's lock (or this run lost it).

    ``holder`` is the holder's :class:`LockInfo` when it could be read (None otherwise).
    """

    def __init__(self, message: str, holder: "LockInfo | None" = None):
        super().__init__(message)
        self.holder = holder


def _pid_namespace() -> str:
    """Identifies the pid namespace, so containers sharing a host name are not confused."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class LockInfo:
    """What ``_lock.json`` holds."""

    host: str
    pid: int
    token: str
    started: float
    heartbeat: float
    heartbeat_s: float = HEARTBEAT_S
    pid_namespace: str = ""
    command: str = "index"
    corpus: str | None = None

    @classmethod
    def mine(cls, heartbeat_s: float, command: str, corpus: str | None = None) -> "LockInfo":
        now = time.time()
        return cls(socket.gethostname(), os.getpid(), _RUN_ID.get() or uuid.uuid4().hex, now, now, heartbeat_s, _pid_namespace(), command,
                   corpus)

    @classmethod
    def from_bytes(cls, raw: bytes) -> "LockInfo | None":
        """The lock's content, or None if it is not a lock record (unreadable or partial)."""
        try:
            doc = json.loads(raw)
            return cls(
                str(doc["host"]), int(doc["pid"]), str(doc["token"]), float(doc["started"]),
                float(doc["heartbeat"]), float(doc.get("heartbeat_s", HEARTBEAT_S)),
                str(doc.get("pid_namespace", "")), str(doc.get("command", "index")),
                None if doc.get("corpus") is None else str(doc["corpus"]),
            )
        except (ValueError, KeyError, TypeError):
            return None

    def to_bytes(self) -> bytes:
        return json.dumps({**asdict(self), "started_utc": _iso(self.started), "heartbeat_utc": _iso(self.heartbeat)}, indent=1).encode()

    def beat(self) -> "LockInfo":
        return LockInfo(**{**asdict(self), "heartbeat": time.time()})

    @property
    def run_id(self) -> str:
        """The holder's run id: its token, which also names its run log record (``runs/<start>-<token>``)."""
        return self.token

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, since {_iso(self.started)} (last heartbeat {max(0.0, time.time() - self.heartbeat):.0f} s ago)"

    def stale_reason(self, stale_after_s: float | None = None) -> str | None:
        """Why this lock is stale, or None if its holder may still be running.

        ``stale_after_s`` defaults to what :class:`IndexLock` uses (``STALE_HEARTBEATS`` of the
        holder's heartbeats): the rule by which a waiting run would take the lock over.
        """
        age = time.time() - self.heartbeat
        limit = max(stale_after_s or 0.0, STALE_HEARTBEATS * self.heartbeat_s)
        if age > limit:
            return f"its last heartbeat is {age:.0f} s old (limit {limit:.0f} s)"
        if self.host == socket.gethostname() and self.pid_namespace == _pid_namespace() and not _pid_alive(self.pid):
            return f"process {self.pid} on this host no longer exists"
        return None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def read_lock(index: "IndexLocation | str") -> LockInfo | None:
    """The current holder of the lock of ``index``, or None if it is free."""
    return _Store(IndexLocation.of(index)).read()[0]


def lock_status(holder: LockInfo, stale_after_s: float | None = None) -> dict:
    """The lock ``holder`` as ``patchhash info`` shows it (JSON-ready).

    Keys: ``run_id`` (the holder's token), ``command``, ``corpus``, ``host``, ``pid``,
    ``since`` and ``last_heartbeat`` (UTC, ISO 8601), ``heartbeat_age_s``, ``live`` and
    ``stale_reason``: whether a run starting now would take the lock over, by the rule of
    :meth:`LockInfo.stale_reason` (a heartbeat older than ``stale_after_s``, default ten
    heartbeats; or a holder on this host, in this pid namespace, whose pid is gone).
    """
    reason = holder.stale_reason(stale_after_s)
    return {
        "run_id": holder.run_id, "command": holder.command, "corpus": holder.corpus, "host": holder.host, "pid": holder.pid,
        "since": _iso(holder.started), "last_heartbeat": _iso(holder.heartbeat),
        "heartbeat_age_s": round(max(0.0, time.time() - holder.heartbeat), 1), "live": reason is None, "stale_reason": reason,
    }


class _Store:
    """Create-exclusive, read, replace and delete of the lock of ``index`` (and of its take-over guards)."""

    def __init__(self, index: IndexLocation):
        self.index = index
        self.url = index.join(LOCK_FILE)
        self.fs, self.path = index.fs, index.fs_path(LOCK_FILE)
        self.local = is_local(self.fs)

    def create(self, data: bytes, path: str | None = None) -> bool:
        """Write ``data`` at ``path`` (default: the lock) only if nothing is there; True if written."""
        path = path or self.path
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = temporary_sibling(path)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        try:
            retry_call(f"creating {self.url}", self.fs.pipe_file, path, data, mode="create")
        except FileExistsError:
            return False
        except (ValueError, TypeError, NotImplementedError):  # a backend without mode="create"
            if retry_call(f"checking {self.url}", self.fs.exists, path):
                return False
            retry_call(f"writing {self.url}", self.fs.pipe_file, path, data)
        return self._read_bytes(path) == data

    def _read_bytes(self, path: str) -> bytes | None:
        try:
            return retry_call(f"reading {self.url}", self.fs.cat_file, path)
        except FileNotFoundError:
            return None

    def read(self, path: str | None = None) -> tuple[LockInfo | None, bool]:
        """``(lock, exists)``: an object that exists but is no lock record reads as ``(None, True)``."""
        raw = self._read_bytes(path or self.path)
        return (None, False) if raw is None else (LockInfo.from_bytes(raw), True)

    def age(self, path: str | None = None) -> float:
        """Seconds since the object was last modified (0 if unknown)."""
        try:
            modified = self.fs.modified(path or self.path)
        except (NotImplementedError, OSError):  # incl. FileNotFoundError
            return 0.0
        if modified.tzinfo is None:
            modified = modified.replace(tzinfo=timezone.utc) if not self.local else modified.astimezone()
        return max(0.0, time.time() - modified.timestamp())

    def replace(self, data: bytes) -> None:
        from storage.atomic import write_bytes_atomic

        write_bytes_atomic(self.url, data, self.index.storage_options) if self.local else retry_call(f"writing {self.url}", self.fs.pipe_file, self.path, data)

    def delete(self, path: str | None = None) -> None:
        try:
            if self.local:
                os.unlink(path or self.path)
            else:
                retry_call(f"removing {self.url}", self.fs.rm_file, path or self.path)
        except FileNotFoundError:
            pass


class IndexLock:
    """The writer's lock of one index, as a context manager.

    Parameters
    ----------
    index
        The index (an :class:`~storage.location.IndexLocation`, or a URL that needs no
        storage options); the lock is ``<index>/_lock.json``.
    wait_s
        How long to wait for a live holder to finish; 0 (the default) fails at once.
    heartbeat_s
        Interval of the heartbeat rewrites.
    stale_after_s
        Heartbeat age after which a lock is stale (default ``10 * heartbeat_s``).
    poll_s
        Interval of the checks while waiting.
    command, corpus
        What this run is (``index``, ``delete``, ``gc``...; the corpus of an ``index`` run), as
        the lock file and the run log record them.
    log_refusal
        When refused (:class:`LockHeldError` on entry), leave a ``refused-locked`` record in the
        run log naming the holder (:func:`storage.runlog.record_refused`); default True.

    Raises
    ------
    LockHeldError
        On entry, when a live run holds the lock past ``wait_s``.
    """

    def __init__(self, index: "IndexLocation | str", *, wait_s: float = 0.0, heartbeat_s: float = HEARTBEAT_S,
                 stale_after_s: float | None = None, poll_s: float = 1.0, command: str = "index",
                 corpus: str | None = None, log_refusal: bool = True):
        if wait_s < 0 or heartbeat_s <= 0 or poll_s <= 0:
            raise ValueError("wait_s must be >= 0, heartbeat_s and poll_s > 0")
        self.index = IndexLocation.of(index)
        self.wait_s, self.heartbeat_s, self.poll_s = float(wait_s), float(heartbeat_s), float(poll_s)
        self.stale_after_s = float(stale_after_s if stale_after_s is not None else STALE_HEARTBEATS * heartbeat_s)
        self.command, self.corpus, self.log_refusal = command, corpus, log_refusal
        self._store = _Store(self.index)
        self.info: LockInfo | None = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def token(self) -> str | None:
        return self.info.token if self.info else None

    def __enter__(self) -> "IndexLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        started = time.time()
        deadline = time.monotonic() + self.wait_s
        mine = LockInfo.mine(self.heartbeat_s, self.command, self.corpus)
        announced = False
        while True:
            if self._store.create(mine.to_bytes()):
                self.info, self._lost = mine, None
                self._stop.clear()
                self._thread = threading.Thread(target=self._heartbeat, name=f"patchhash-lock-{mine.token[:8]}", daemon=True)
                self._thread.start()
                log.debug("locked %s (token %s)", self.index.url, mine.token)
                return
            holder, exists = self._store.read()
            if not exists:
                continue  # released between our create and read: try again at once
            if holder is None:
                if self._store.age() > self.stale_after_s:
                    log.warning("%s: unreadable lock older than %.0f s, removing it", self._store.url, self.stale_after_s)
                    self._store.delete()
                    continue
            else:
                reason = holder.stale_reason(self.stale_after_s)
                if reason and self._take_over(holder, reason):
                    continue
            if time.monotonic() >= deadline:
                message = self._held_message(holder)
                if self.log_refusal:
                    self._record_refusal(mine, started, message, holder)
                raise LockHeldError(message, holder)
            if not announced:
                log.info("%s is locked by %s; waiting up to %.0f s", self.index.url, holder.describe() if holder else "another run", self.wait_s)
                announced = True
            time.sleep(min(self.poll_s, max(0.0, deadline - time.monotonic())) or 0.01)

    def _held_message(self, holder: LockInfo | None) -> str:
        who = f"another {holder.command} run ({holder.describe()})" if holder else "another run"
        stale = max(self.stale_after_s, STALE_HEARTBEATS * holder.heartbeat_s) if holder else self.stale_after_s
        return (
            f"{self.index.url} is locked by {who}; let it finish, or rerun with --wait-for-lock SECONDS to wait for it. "
            f"A lock whose run died is taken over automatically ({stale:.0f} s after its last heartbeat, or at once on the same host)."
        )

    def _record_refusal(self, mine: LockInfo, started: float, message: str, holder: LockInfo | None) -> None:
        from storage.runlog import record_refused

        record_refused(self.index, self.command, message, "refused-locked", corpus=self.corpus, token=mine.token,
                       started=datetime.fromtimestamp(started, timezone.utc), holder=holder.run_id if holder else None,
                       holder_host=holder.host if holder else None, holder_pid=holder.pid if holder else None)

    def _take_over(self, stale: LockInfo, reason: str) -> bool:
        """Delete ``stale`` if it is still the lock, under a guard only one run can create.

        Returns False if another run is taking it over right now (the caller then treats the
        lock as held), True otherwise (the caller tries to create the lock again).
        """
        guard = self.index.fs_path(lock_takeover_path(stale.token))
        if not self._store.create(json.dumps({"by": socket.gethostname(), "pid": os.getpid()}).encode(), guard):
            if self._store.age(guard) > self.stale_after_s:  # a run died mid-take-over
                self._store.delete(guard)
                return True
            time.sleep(min(self.poll_s, 0.2))  # give the other run time to create its lock
            return False
        try:
            current, _ = self._store.read()
            if current is not None and current.token == stale.token:
                log.warning("taking over the stale lock of %s held by %s: %s", self.index.url, stale.describe(), reason)
                self._store.delete()
        finally:
            self._store.delete(guard)
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                current, _ = self._store.read()
                if current is None or current.token != self.info.token:
                    self._lost = f"taken over by {current.describe() if current else 'nobody (the lock vanished)'}"
                    log.error("lost the lock of %s: %s", self.index.url, self._lost)
                    return
                self.info = self.info.beat()
                self._store.replace(self.info.to_bytes())
            except Exception as exc:  # keep beating: one failed heartbeat is not a lost lock
                log.warning("heartbeat of the lock of %s failed: %s", self.index.url, exc)

    def verify(self) -> None:
        """Raise :class:`LockHeldError` unless this run still holds the lock (call before a commit)."""
        if self.info is None:
            raise LockHeldError(f"{self.index.url}: not locked by this run")
        if self._lost is None:
            current, _ = self._store.read()
            if current is None or current.token != self.info.token:
                self._lost = f"taken over by {current.describe() if current else 'nobody (the lock vanished)'}"
        if self._lost:
            raise LockHeldError(
                f"this run lost the lock of {self.index.url} ({self._lost}); nothing was committed. "
                "Rerun the same command once the other run has finished: finished shards are kept."
            )

    def release(self) -> None:
        """Stop the heartbeat and delete the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.info is None:
            return
        try:
            current, _ = self._store.read()
            if current is not None and current.token == self.info.token:
                self._store.delete()
            else:
                log.warning("%s: the lock was no longer this run's at release; left it alone", self.index.url)
        finally:
            self.info = None

"""Retrying storage calls that fail for a moment (throttling, dropped connections, timeouts).

Object stores fail transiently under load (S3 ``SlowDown``/503, connection resets). Every
storage call patchhash makes goes through :func:`retry_call`: a transient error is retried
with exponential backoff and jitter; an error that persists becomes a
:class:`StorageUnavailableError` naming what was being done. Because each write is a
whole object at a deterministic path, repeating a call is always safe.

``PATCHHASH_STORAGE_ATTEMPTS`` (default 6) and ``PATCHHASH_STORAGE_BACKOFF`` (seconds before
the first retry, default 0.5, doubled each time up to 20 s) tune it; both are read at each
call, so worker processes started with the variables follow them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from storage.environment import env_number
from storage.errors import PatchhashError, StorageUnavailableError

__all__ = ["RetryPolicy", "is_transient", "retry_call", "retry_async"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Errors that say something about the object, not the connection: retrying cannot help.
_PERMANENT = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; the n-th retry waits ``backoff * 2**(n-1)`` s (at most ``max_backoff``), +-25% jitter."""

    attempts: int = 6
    backoff: float = 0.5
    max_backoff: float = 20.0

    @classmethod
    def from_env(cls) -> "RetryPolicy":
        return cls(
            attempts=int(env_number("PATCHHASH_STORAGE_ATTEMPTS", int, cls.attempts, minimum=1)),
            backoff=env_number("PATCHHASH_STORAGE_BACKOFF", float, cls.backoff, minimum=0.0),
        )

    def delay(self, retry: int) -> float:
        return min(self.max_backoff, self.backoff * 2 ** (retry - 1)) * random.uniform(0.75, 1.25)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is worth retrying: an ``OSError`` (incl. timeouts and connection errors)
    that does not say the object is missing, present, a directory, or forbidden."""
    if isinstance(exc, (PatchhashError, *_PERMANENT)):
        return False
    return isinstance(exc, (OSError, TimeoutError, ConnectionError))


def retry_call(what: str, fn: Callable[..., T], *args, policy: RetryPolicy | None = None, **kwargs) -> T:
    """``fn(*args, **kwargs)``, retried on transient errors; ``what`` names the operation in
    logs and in the final error (it must not hold credentials: pass a URL, never options).

    ``fn`` should be one storage request (or an idempotent few): retrying a long compound
    operation multiplies its chance of meeting another fault.
    """
    policy = policy or RetryPolicy.from_env()
    started = time.monotonic()
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            wait = _next_wait(what, exc, attempt, policy, started)
        time.sleep(wait)
    raise AssertionError("unreachable")


async def retry_async(what: str, fn: Callable[..., Awaitable[T]], *args, policy: RetryPolicy | None = None, **kwargs) -> T:
    """:func:`retry_call` for coroutine functions (the Zarr store wrapper in :mod:`storage.arrays`)."""
    policy = policy or RetryPolicy.from_env()
    started = time.monotonic()
    for attempt in range(1, policy.attempts + 1):
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            wait = _next_wait(what, exc, attempt, policy, started)
        await asyncio.sleep(wait)
    raise AssertionError("unreachable")


def _next_wait(what: str, exc: Exception, attempt: int, policy: RetryPolicy, started: float) -> float:
    """Seconds to wait before retrying after ``exc``; re-raises what must not be retried."""
    if not is_transient(exc):
        raise exc
    if attempt == policy.attempts:
        raise StorageUnavailableError(
            f"{what}: storage still failing after {attempt} attempts over {time.monotonic() - started:.1f} s "
            f"({type(exc).__name__}: {exc}). Nothing was committed; check the storage and rerun the same "
            "command to resume."
        ) from exc
    wait = policy.delay(attempt)
    log.warning("%s: %s: %s; retry %d of %d in %.1f s", what, type(exc).__name__, exc, attempt, policy.attempts - 1, wait)
    return wait

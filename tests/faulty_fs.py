"""A fault-injecting fsspec filesystem for the storage fault tests (``flaky://``).

An in-memory store (like ``memory://``, but its own) whose reads and writes fail on demand
with the ``OSError`` an object store's client raises for throttling or a dropped connection:

- ``FlakyFileSystem.reset(rate=p)``: each data operation (``cat_file``, ``pipe_file``,
  ``open``) fails with probability ``p`` (seeded): transient errors, which retries must absorb;
- ``FlakyFileSystem.reset(broken=("buckets/",))``: every operation on a path containing one of
  these strings fails: a lasting outage of part of the store.

Like ``memory://`` it lives in one process, so tests use an in-process Dask cluster.
"""

from __future__ import annotations

import errno
import random
import threading

import fsspec
from fsspec.implementations.memory import MemoryFileSystem

__all__ = ["FlakyFileSystem", "install"]


class FlakyFileSystem(MemoryFileSystem):
    protocol = ("flaky",)
    store: dict = {}
    pseudo_dirs = [""]

    rate = 0.0
    broken: tuple[str, ...] = ()
    _random = random.Random(0)
    calls = 0
    injected = 0
    _lock = threading.Lock()

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, str) and path.startswith("flaky://"):
            path = path[len("flaky://"):]
        return super()._strip_protocol(path)

    @classmethod
    def reset(cls, rate: float = 0.0, broken: tuple[str, ...] = (), seed: int = 0) -> None:
        with cls._lock:
            cls.rate, cls.broken, cls.calls, cls.injected = rate, broken, 0, 0
            cls._random = random.Random(seed)

    def _maybe_fail(self, op: str, path: str) -> None:
        cls = type(self)
        with cls._lock:
            cls.calls += 1
            fail = any(part in str(path) for part in cls.broken) or cls._random.random() < cls.rate
            if fail:
                cls.injected += 1
        if fail:
            raise OSError(errno.EAGAIN, f"injected storage fault (SlowDown: please reduce your request rate) in {op}", str(path))

    def cat_file(self, path, start=None, end=None, **kwargs):
        self._maybe_fail("cat_file", path)
        return super().cat_file(path, start=start, end=end, **kwargs)

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        self._maybe_fail("pipe_file", path)
        return super().pipe_file(path, value, mode=mode, **kwargs)

    def _open(self, path, mode="rb", **kwargs):
        self._maybe_fail("open", path)
        return super()._open(path, mode=mode, **kwargs)


def install() -> type[FlakyFileSystem]:
    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
    return FlakyFileSystem

"""Never wait forever on a cluster without workers.

Dask keeps a task whose workers are gone waiting for the next worker, for ever: a job on a
``--scheduler`` cluster whose workers all died (or that never had any) would wait at
"encode 0/1" until killed. :func:`watch` runs, around the job's use of its client, one
watchdog thread that asks the scheduler for its workers every second or so; when none has
been connected for ``timeout`` seconds it cancels the client's futures (and any submitted
later), so every wait of the job (progress bars, ``future.result()``, ``gather``) ends at
once, and the exception that then leaves the block becomes one
:class:`~storage.ClusterUnavailableError` naming the scheduler, the workers that were there
and are gone, and those the preflight refused. The waiting code needs nothing of its own.

The job's commit comes after all its waits, so such a failure commits nothing; what the
finished tasks wrote is kept (done-markers) and a rerun resumes from it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from storage import ClusterUnavailableError

__all__ = ["Watchdog", "watch"]

log = logging.getLogger(__name__)


def _listed(addresses, limit: int = 4) -> str:
    addresses = sorted(addresses)
    shown = ", ".join(addresses[:limit])
    return shown + (f" and {len(addresses) - limit} more" if len(addresses) > limit else "")


class Watchdog:
    """Watches the workers of ``client`` (connected to ``scheduler``) from a daemon thread.

    ``refused`` (address -> why, filled by the preflight) names workers that do not count as
    connected. ``failure`` is the message once no usable worker was connected for ``timeout``
    seconds (from :meth:`start`, or from the moment the last one left); it stays set.
    """

    def __init__(self, client, scheduler: str, timeout: float, refused: dict[str, str] | None = None,
                 interval: float | None = None):
        self.client, self.scheduler, self.timeout = client, scheduler, timeout
        self.refused = refused if refused is not None else {}
        self.interval = interval if interval is not None else min(1.0, max(0.1, timeout / 10))
        self.seen: set[str] = set()
        self.failure: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="patchhash-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _workers(self) -> set[str]:
        try:
            return set(self.client.nthreads()) - set(self.refused)
        except Exception as exc:  # noqa: BLE001 - a scheduler gone counts as no worker
            log.debug("cannot list the workers of %s: %s", self.scheduler, exc)
            return set()

    def _run(self) -> None:
        since = time.monotonic()
        while not self._stop.wait(self.interval):
            if self.failure is not None:
                self._cancel()  # anything submitted since
                continue
            workers = self._workers()
            if workers:
                if not self.seen >= workers:
                    log.debug("workers of %s: %s", self.scheduler, _listed(workers))
                self.seen |= workers
                since = None
                continue
            now = time.monotonic()
            if since is None:
                since = now
                if self.seen:
                    log.warning("every Dask worker of %s is gone (%s); waiting %g s (--no-workers-timeout) for one",
                                self.scheduler, _listed(self.seen), self.timeout)
            elif now - since >= self.timeout:
                self.failure = self._message()
                self._cancel()

    def _message(self) -> str:
        refused = ""
        if self.refused:
            refused = (f"; refused by the preflight: "
                       + "; ".join(f"{w} ({why})" for w, why in sorted(self.refused.items())[:3]))
        seen = self.seen - set(self.refused)  # a refused worker may have been listed before its refusal came
        if seen:
            what = (f"the Dask worker(s) {_listed(seen)} of scheduler {self.scheduler} are gone and no other "
                    f"worker has connected for {self.timeout:g} s (--no-workers-timeout)")
        else:
            what = f"no Dask worker connected to scheduler {self.scheduler} in {self.timeout:g} s (--no-workers-timeout)"
        return (f"{what}{refused}: start workers (`dask worker {self.scheduler}`) that can reach it, then rerun the "
                "same command, which resumes where this one stopped (this run's unfinished work was not committed)")

    def _cancel(self) -> None:
        from distributed import Future

        try:
            keys = list(self.client.futures)
            if keys:
                self.client.cancel([Future(key, self.client) for key in keys], reason="patchhash-no-workers",
                                   msg=self.failure)
        except Exception as exc:  # noqa: BLE001 - tried again at the next tick
            log.debug("cannot cancel the futures: %s", exc)


@contextmanager
def watch(client, scheduler: str, timeout: float, refused: dict[str, str] | None = None) -> Iterator[Watchdog]:
    """Run the block with a :class:`Watchdog` on ``client``; ``timeout`` 0: no watchdog.

    Raises
    ------
    ClusterUnavailableError
        No worker was connected for ``timeout`` seconds while the block ran (whatever
        exception the block's waits then raised is its cause).
    """
    if not timeout:
        yield None
        return
    dog = Watchdog(client, scheduler, timeout, refused).start()
    try:
        yield dog
    except Exception as exc:
        if dog.failure is not None:
            raise ClusterUnavailableError(dog.failure) from exc
        raise
    finally:
        dog.stop()

"""The preflight of an existing Dask cluster's workers: can they run this job's tasks?

A job's tasks are plain functions of the installed package (workers import patchhash; only
URLs, settings and small shard descriptions are pickled), so a worker that cannot import
patchhash, runs another version of it, or reads another model at the index's model URL
would fail every task it takes, or worse, compute other codes. Before a job on a
``--scheduler`` cluster submits anything, :func:`check_workers` asks every connected worker
to import ``storage``, ``pipeline`` and ``workflows``, and to report

* its patchhash version (the installed distribution's, or ``$PATCHHASH_REPORTED_VERSION``:
  a test hook that makes a worker claim another version), and
* the weights hash (``model_sha256`` of ``card.json``, checked against ``model.keras``'s own
  bytes) of the model it will load, when the job names one (the index's ``model/``),

and raises :class:`~storage.WorkerMismatchError`, one line naming the worker, what differs
and the fix, for the first worker that differs. Workers that join later are checked as they
join by :func:`preflight_plugin`, a ``WorkerPlugin`` the job registers on the scheduler for
as long as it runs: a worker that fails pauses (it never starts a task), logs why, tells the
client (event topic :data:`EVENT_TOPIC`) and closes itself and its nanny.

The checking code travels by value (it is made inside :func:`_checker`, which cloudpickle
then pickles whole), so a worker without patchhash can run it and say so.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from collections.abc import Iterator
from dataclasses import dataclass

from storage import WorkerMismatchError

__all__ = ["REPORTED_VERSION_ENV", "EVENT_TOPIC", "PLUGIN_NAME", "Expected", "reported_version", "expected_of",
           "check_workers", "preflight_plugin", "preflight"]

log = logging.getLogger(__name__)

REPORTED_VERSION_ENV = "PATCHHASH_REPORTED_VERSION"
"""Test hook: the patchhash version a process reports to the preflight, instead of the
installed one (a test starts a ``dask worker`` with it to play an outdated install)."""

EVENT_TOPIC = "patchhash-preflight"
"""The Dask event topic on which a refused worker tells the client why."""

PLUGIN_NAME = "patchhash-preflight"
"""The name of the preflight's worker plugin: a job's registration replaces an earlier job's."""


@dataclass(frozen=True)
class Expected:
    """What every worker must report: the client's ``version``; with ``model_url`` (and its
    ``storage_options``), the ``model_sha256`` of the model there as the client reads it."""

    version: str
    model_url: str | None = None
    storage_options: dict | None = None
    model_sha256: str | None = None

    def __repr__(self) -> str:  # never the options: they may hold credentials
        return f"Expected(version={self.version!r}, model_url={self.model_url!r}, model_sha256={self.model_sha256!r})"

    def as_dict(self) -> dict:
        """Plain values for the checking code, which runs where patchhash may not import."""
        return {"version": self.version, "model_url": self.model_url, "storage_options": self.storage_options or {},
                "model_sha256": self.model_sha256}


def reported_version() -> str:
    """This process's patchhash version: ``$PATCHHASH_REPORTED_VERSION`` if set, else the
    installed distribution's (``unknown`` when it is not installed as a distribution)."""
    return _checker()[1]()


def expected_of(model=None) -> Expected:
    """The :class:`Expected` report of a job whose workers load ``model`` (an
    :class:`~storage.location.IndexLocation` of a model folder, or None)."""
    if model is None:
        return Expected(reported_version())
    from pipeline.modelcard import read_card

    card = read_card(model.url, model.storage_options, verify=False)  # the job has verified it already
    return Expected(reported_version(), model.url, dict(model.storage_options or {}), card.model_sha256)


def _checker():
    """``(check, version)``, made inside this function so that they are pickled by value:
    ``check(expected)`` (:meth:`Expected.as_dict`) returns None or ``{"why": ..., "fix": ...}``;
    ``version()`` is :func:`reported_version`."""

    def version() -> str:
        import os
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as installed

        claimed = os.environ.get(REPORTED_VERSION_ENV)
        if claimed:
            return claimed
        try:
            return installed("patchhash")
        except PackageNotFoundError:
            return "unknown"

    def check(expected: dict) -> dict | None:
        import importlib

        reinstall = ("reinstall patchhash on that worker, the client's version, and restart it: `pip install .` from the "
                     "client's checkout, or `pip install -e .` from a current patchhash checkout")
        for name in ("storage", "pipeline", "workflows"):
            try:
                module = importlib.import_module(name)
            except Exception as exc:  # noqa: BLE001 - reported, whatever it is
                return {"why": f"cannot import patchhash ({type(exc).__name__}: {exc})", "fix": reinstall}
            if getattr(module, "__file__", None) is None:
                return {"why": f"cannot import patchhash ('{name}' is the folder {', '.join(module.__path__)}, "
                               "not patchhash's package)",
                        "fix": reinstall + " (an old editable install can come after the worker's `storage/` spill "
                                           "folder on sys.path)"}
        mine = version()
        if mine != expected["version"]:
            return {"why": f"runs patchhash {mine}, the client {expected['version']}", "fix": reinstall}
        url = expected.get("model_url")
        if url is None:
            return None
        fix = ("put the index where every worker reads the same files as the client (a shared file system or an "
               "object store), with the same storage options")
        try:
            from pipeline.modelcard import read_card

            sha = read_card(url, expected["storage_options"], verify=True).model_sha256
        except Exception as exc:  # noqa: BLE001 - reported, whatever it is
            return {"why": f"cannot read the model {url} ({type(exc).__name__}: {exc})", "fix": fix}
        if sha != expected["model_sha256"]:
            return {"why": f"reads the model {url} with weights sha256 {sha[:12]}..., the client "
                           f"{expected['model_sha256'][:12]}...", "fix": fix}
        return None

    return check, version


def _message(worker: str, failure: dict, others: int = 0) -> str:
    more = f" (and {others} other worker(s))" if others else ""
    return f"Dask worker {worker}{more} {failure['why']}: {failure['fix']}"


def check_workers(client, expected: Expected | None = None) -> None:
    """Raise :class:`~storage.WorkerMismatchError` if a worker connected to ``client`` cannot
    import patchhash or differs from ``expected`` (default: this process's version).

    One line: the first such worker (by address), how many others, what differs, the fix.
    """
    expected = expected or Expected(reported_version())
    results = client.run(_checker()[0], expected.as_dict())
    failures = {worker: failure for worker, failure in results.items() if failure}
    if failures:
        worker, failure = min(failures.items())
        raise WorkerMismatchError(_message(worker, failure, len(failures) - 1))


def preflight_plugin(expected: Expected):
    """A ``WorkerPlugin`` that checks each worker as :func:`check_workers` does, when it joins.

    A worker that fails pauses at once (a paused worker starts no task), logs why (error),
    sends ``{"worker", "why", "fix"}`` on :data:`EVENT_TOPIC` and closes itself and its nanny
    (which then does not restart it). The class is made here so that it is pickled by value.
    """
    from distributed import WorkerPlugin

    check = _checker()[0]
    topic = EVENT_TOPIC

    class PatchhashPreflight(WorkerPlugin):
        name = PLUGIN_NAME

        def __init__(self, expected: dict):
            self.expected = expected

        async def setup(self, worker) -> None:
            import asyncio
            import logging

            from distributed.core import Status

            failure = await asyncio.to_thread(check, self.expected)
            if failure is None:
                return
            worker.status = Status.paused  # no task starts here from now on
            logging.getLogger("distributed.worker").error(
                "patchhash preflight: refusing worker %s: it %s: %s", worker.address, failure["why"], failure["fix"])
            worker.log_event(topic, {"worker": worker.address, **failure})
            worker.loop.add_callback(worker.close, nanny=True, reason="patchhash-preflight")

    return PatchhashPreflight(expected.as_dict())


@contextmanager
def preflight(client, expected: Expected) -> Iterator[dict[str, str]]:
    """Check the workers of ``client`` now (:func:`check_workers`) and those that join while
    the block runs (:func:`preflight_plugin`); yield the refused workers (address -> why),
    filled as the refusals come in, each logged as an error.

    The plugin is unregistered when the block ends, so that it never judges workers against
    an ended job's expectations (a job killed outright leaves it until the next job's
    registration replaces it).
    """
    check_workers(client, expected)
    refused: dict[str, str] = {}

    def on_refusal(event) -> None:
        _, msg = event
        if msg.get("worker") not in refused:
            refused[msg["worker"]] = msg["why"]
            log.error("refused %s", _message(msg["worker"], msg))

    client.subscribe_topic(EVENT_TOPIC, on_refusal)
    client.register_plugin(preflight_plugin(expected))
    try:
        yield refused
    finally:
        try:
            client.unregister_worker_plugin(PLUGIN_NAME)
            client.unsubscribe_topic(EVENT_TOPIC)
        except Exception as exc:  # noqa: BLE001 - the scheduler may be gone; nothing to undo there then
            log.debug("could not unregister the preflight plugin: %s", exc)

"""Keep a LocalCluster worker's tracebacks off the job's stderr (the one-line error contract).

A LocalCluster's worker processes share the job's stderr. Two of their log records are
tracebacks that tell the user nothing the job's own error line does not:

- "Compute Failed": the client re-raises the task's exception and prints it as one line.
- "Failed to communicate with scheduler during heartbeat": a LocalCluster's scheduler lives in
  the job's own process, so it is gone only while the job closes the cluster (a worker still busy
  with a task when a failed job closes), and the worker's nanny ends that worker.

``PATCHHASH_TRACEBACK=1`` keeps both (and the client then prints the task's full traceback).
The workers' log lines take the job's format and run id (:func:`workflows.logformat.route_process_logs`).
"""

from __future__ import annotations

import logging
import os

from distributed.diagnostics.plugin import WorkerPlugin

DROPPED = ("Compute Failed", "Failed to communicate with scheduler during heartbeat")


class _DropRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return bool(os.environ.get("PATCHHASH_TRACEBACK")) or not str(record.msg).startswith(DROPPED)


class QuietWorkerLog(WorkerPlugin):
    """Filters ``distributed.worker``'s log in every worker, including the ones a nanny restarts
    after a worker was lost (a plugin is set up on those too, where ``client.run`` is not)."""

    name = "patchhash-quiet-worker-log"

    def __init__(self):
        from workflows.logformat import current_run

        self.run = current_run(create=False)  # the job's run, if a command started one: its lines in the workers too

    def setup(self, worker) -> None:
        if self.run is not None:
            from workflows.logformat import route_process_logs

            route_process_logs(self.run)
        worker_log = logging.getLogger("distributed.worker")
        if not any(isinstance(f, _DropRecords) for f in worker_log.filters):
            worker_log.addFilter(_DropRecords())

"""Log lines for people and for machines: one line per event, each carrying its run's id.

Every command that logs calls :func:`workflows.runtime.setup_logging`, which makes the run's
id (:func:`new_run_id`) and installs :class:`LineHandler` on the root logger. Each record is
one line on stderr, written with one ``write`` of the whole line, so two runs appending to one
log file never splice their lines; newlines inside a message (a traceback) are written ``\\n``.

``--log-format text`` (the default)::

    2026-12-06T05:30:01Z INFO run=76a11c8191d645ed workflows.index: committed version 8 of s3://bucket/photos.idx: ...

``--log-format json``: one JSON object per line, with ``time`` (ISO 8601, UTC), ``level``,
``logger``, ``run_id``, ``command`` and ``message``; progress lines add ``stage``, ``done``,
``total``, ``unit``, ``rate`` (per second), ``eta_s`` and ``elapsed_s``.

Progress (:mod:`workflows.progress`) is a tqdm bar when stderr is a terminal and the format is
text; otherwise :class:`ProgressLog` logs a line every ``--progress-interval`` seconds, and one
when the stage completes.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from workflows.options import check_options, option

__all__ = ["LOG_FORMATS", "MonitorSettings", "new_run_id", "start_run", "current_run", "RunContext", "LineFormatter",
           "LineHandler", "write_line", "route_process_logs", "show_bars", "ProgressLog", "error_line"]

LOG_FORMATS = ("text", "json")
PROGRESS_LOGGER = "patchhash.progress"


@dataclass(frozen=True)
class MonitorSettings:
    """How a run reports to machines: its log lines and, at its end, a metrics file
    (:mod:`workflows.metrics`)."""

    log_format: str = option("text", "Log lines on stderr: text (ISO timestamp, level, run id, logger, message) or json "
                             "(one object per line).", choices=LOG_FORMATS, envvar="PATCHHASH_LOG_FORMAT", example="json")
    progress_interval: float = option(30.0, "When stderr is not a terminal (or with --log-format json): log progress every "
                                      "this many seconds instead of drawing bars (0: at every step).", minimum=0,
                                      envvar="PATCHHASH_PROGRESS_INTERVAL", example="30")
    metrics_file: str | None = option(None, "At the end of the run (success or failure), write Prometheus metrics here "
                                      "(node_exporter textfile collector: a *.prom file), atomically.", type="path",
                                      envvar="PATCHHASH_METRICS_FILE", example="/var/lib/node_exporter/textfile/patchhash-index.prom")

    def __post_init__(self) -> None:
        check_options(self)


@dataclass(frozen=True)
class RunContext:
    """The run this process is: its id, command and log settings."""

    run_id: str
    command: str
    log_format: str = "text"
    progress_interval: float = 30.0
    started: float = 0.0


_current: RunContext | None = None


def new_run_id() -> str:
    """A run id: 16 random hex digits, e.g. ``76a11c8191d645ed``: the shape of the token that
    names a run log record (``runs/<start>-<token[:16]>.json``, :mod:`storage.runlog`)."""
    return secrets.token_hex(8)


def current_run(create: bool = True) -> RunContext | None:
    """The run a command of this process started (:func:`start_run`); if none did, a run with
    a fresh id (None with ``create=False``: library calls outside a command)."""
    global _current
    if _current is None and create:
        _current = RunContext(new_run_id(), "", _wanted_format(), started=time.time())
    return _current


def _wanted_format() -> str:
    """The log format a command line asks for before its options are parsed (a failure there)."""
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        if arg == "--log-format" and i + 1 < len(argv):
            return argv[i + 1] if argv[i + 1] in LOG_FORMATS else "text"
        if arg.startswith("--log-format="):
            return arg.split("=", 1)[1] if arg.split("=", 1)[1] in LOG_FORMATS else "text"
    return os.environ.get("PATCHHASH_LOG_FORMAT", "text") if os.environ.get("PATCHHASH_LOG_FORMAT") in LOG_FORMATS else "text"


def start_run(command: str, settings: MonitorSettings | None = None, verbose: bool = False) -> RunContext:
    """Start a run: a new run id, and this process's logging as ``settings`` say (on stderr)."""
    global _current
    settings = settings or MonitorSettings()
    _current = RunContext(new_run_id(), command, settings.log_format, settings.progress_interval, time.time())
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, LineHandler)]:
        root.removeHandler(handler)
    route_process_logs(_current)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return _current


def route_process_logs(run: RunContext) -> None:
    """Log this process's records as ``run``'s lines: a :class:`LineHandler` on the root logger
    (if it has none), and Dask's own stderr handler (``distributed``) replaced by it. Also
    called in the worker processes of a LocalCluster, which share the job's stderr
    (:class:`workflows.worker_log.QuietWorkerLog`)."""
    root = logging.getLogger()
    if not any(isinstance(h, LineHandler) for h in root.handlers):
        handler = LineHandler()
        handler.setFormatter(LineFormatter(run))
        root.addHandler(handler)
    dask_log = logging.getLogger("distributed")
    for handler in [h for h in dask_log.handlers if type(h) is logging.StreamHandler]:
        dask_log.removeHandler(handler)
    dask_log.propagate = True
    logging.captureWarnings(True)  # Python warnings (e.g. Dask's) as lines of the run too


def _utc(ts: float, spec: str) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec=spec).replace("+00:00", "Z")


class LineFormatter(logging.Formatter):
    """A record as one line, text or JSON, with ``run``'s id; ``record.fields`` (a dict, from
    ``extra={"fields": {...}}``) adds structured fields to a JSON line."""

    def __init__(self, run: RunContext):
        super().__init__()
        self.run = run

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        if self.run.log_format == "json":
            line = {"time": _utc(record.created, "milliseconds"), "level": record.levelname, "logger": record.name,
                    "run_id": self.run.run_id, "command": self.run.command or None, "message": message,
                    **getattr(record, "fields", {})}
            return json.dumps(line, default=str, ensure_ascii=False)
        text = f"{_utc(record.created, 'seconds')} {record.levelname} run={self.run.run_id} {record.name}: {message}"
        return text.replace("\r", "").replace("\n", "\\n")


def write_line(stream, line: str) -> None:
    """Write ``line`` (ending in a newline) to ``stream`` with one write: on its file
    descriptor when it has one (after flushing what its buffer holds), else through it."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd is None:
        stream.write(line)
        stream.flush()
        return
    stream.flush()
    data = memoryview(line.encode("utf-8", "backslashreplace"))
    while data:
        data = data[os.write(fd, data):]


class LineHandler(logging.Handler):
    """Each record as one whole line on ``sys.stderr`` (as it is when the record comes)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            write_line(sys.stderr, self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging must never fail the job
            self.handleError(record)


def show_bars() -> bool:
    """Whether progress is drawn as bars: stderr is a terminal and the log format text."""
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        tty = False
    return tty and current_run().log_format == "text"


def error_line(text: str) -> None:
    """The failure line of a run (``patchhash: error: ...``): plain in text format (scripts
    look for it), a JSON object at level ERROR in json format."""
    if current_run().log_format == "json":
        record = logging.LogRecord("patchhash", logging.ERROR, __file__, 0, text, None, None)
        write_line(sys.stderr, LineFormatter(current_run()).format(record) + "\n")
    else:
        write_line(sys.stderr, text + "\n")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


class ProgressLog:
    """Progress as log lines (``tqdm``'s ``update`` / ``set_postfix`` / context manager):
    one every ``interval`` seconds (default: the run's ``--progress-interval``) and one when
    ``done`` reaches ``total``."""

    def __init__(self, total: int, desc: str, unit: str, interval: float | None = None, **_ignored):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.interval = current_run().progress_interval if interval is None else interval
        self.done, self.postfix = 0, ""
        self.started = self.last = time.monotonic()
        self._log = logging.getLogger(PROGRESS_LOGGER)
        self._logged_end = False

    def __enter__(self) -> "ProgressLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.done >= self.total or now - self.last >= self.interval:
            self.last = now
            self.emit(now)

    def close(self) -> None:
        if self.done < self.total:
            self._log.debug("%s: stopped at %d/%d %s", self.desc, self.done, self.total, self.unit)

    def emit(self, now: float | None = None) -> None:
        """Log the current line (once for the completed stage)."""
        if self._logged_end:
            return
        self._logged_end = self.done >= self.total
        elapsed = (now or time.monotonic()) - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else None
        percent = 100 * self.done / self.total if self.total else 100.0
        text = f"{self.desc}: {self.done}/{self.total} {self.unit} ({percent:.0f}%), {rate:.3g} {self.unit}/s"
        text += f", ETA {_duration(eta)}" if eta is not None and self.done < self.total else f", {_duration(elapsed)}"
        fields = {"stage": self.desc, "done": self.done, "total": self.total, "unit": self.unit, "rate": float(f"{rate:.4g}"),
                  "eta_s": None if eta is None else round(eta, 1), "elapsed_s": round(elapsed, 3)}
        self._log.info("%s%s", text, f" ({self.postfix})" if self.postfix else "", extra={"fields": fields})

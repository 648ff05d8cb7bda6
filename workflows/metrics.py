"""Prometheus metrics of a run, for node_exporter's textfile collector (``--metrics-file``).

At the end of ``patchhash index``, ``query``, ``gc``, ``delete`` or ``compact``, success or
failure, :func:`command_metrics` writes the file in Prometheus' text exposition format,
atomically (a temporary file in the same folder, then a rename), so the collector never reads
half a file. Every sample carries the labels ``command`` and ``index``. The file is read back
first: the counters (``patchhash_runs_succeeded_total``, ``patchhash_runs_failed_total``) go on
from their values there, a failed run keeps the figures of the last successful one (its
``patchhash_last_success_timestamp_seconds`` above all), and samples of other commands or
indexes in the same file stay as they are.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["METRICS", "RunMetrics", "command_metrics", "index_state", "read_samples", "render", "write_metrics", "written_bytes"]

log = logging.getLogger(__name__)

METRICS: dict[str, tuple[str, str]] = {
    # name: (type, help)
    "patchhash_last_run_timestamp_seconds": ("gauge", "End of the last run (Unix time), whatever its outcome."),
    "patchhash_last_run_success": ("gauge", "1 if the last run succeeded, 0 if it failed."),
    "patchhash_last_run_duration_seconds": ("gauge", "Duration of the last run."),
    "patchhash_last_success_timestamp_seconds": ("gauge", "End of the last successful run (Unix time); a failed run keeps it."),
    "patchhash_runs_succeeded_total": ("counter", "Successful runs written to this file."),
    "patchhash_runs_failed_total": ("counter", "Failed runs written to this file."),
    "patchhash_index_version": ("gauge", "Index version after the last successful run (the version queried, for query)."),
    "patchhash_index_images": ("gauge", "Live images in the index after the last successful index run."),
    "patchhash_images_added": ("gauge", "Images the last successful index run added (new files)."),
    "patchhash_images_removed": ("gauge", "Images the last successful run removed (files gone for index; uris for delete)."),
    "patchhash_images_changed": ("gauge", "Images the last successful index run encoded again (changed files)."),
    "patchhash_images_retried": ("gauge", "Unreadable images the last successful index run read again."),
    "patchhash_images_unreadable": ("gauge", "Images the last successful index run could not read."),
    "patchhash_partitions_compacted": ("gauge", "Partitions the last successful index or compact run compacted."),
    "patchhash_queries_answered": ("gauge", "Queries the last successful query run answered."),
    "patchhash_queries_failed": ("gauge", "Query rows the last successful query run could not read."),
    "patchhash_queries_without_hits": ("gauge", "Queries of the last successful query run with no hit."),
    "patchhash_result_rows": ("gauge", "Result rows the last successful query run wrote."),
    "patchhash_gc_versions_deleted": ("gauge", "Versions the last successful gc run deleted."),
    "patchhash_gc_objects_deleted": ("gauge", "Objects the last successful gc run deleted."),
    "patchhash_bytes_deleted": ("gauge", "Bytes the last successful gc run deleted."),
    "patchhash_bytes_written": ("gauge", "Bytes of the objects the last successful index, delete or compact run created "
                                "or rewrote under the index (staging included)."),
}

_WRITING = ("index", "delete", "compact")  # commands whose bytes written are measured

_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}

Labels = tuple[tuple[str, str], ...]


def read_samples(path: str) -> dict[tuple[str, Labels], float]:
    """The samples of the ``patchhash_*`` metrics in an exposition file (none if it is absent
    or unreadable): ``(name, labels) -> value``, labels sorted by name."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    samples = {}
    for line in lines:
        match = _LINE.match(line.strip())
        if not match or match.group(1) not in METRICS:
            continue
        labels = tuple(sorted((k, re.sub(r'\\[\\"n]', lambda m: _UNESCAPE[m.group(0)], v))
                              for k, v in _LABEL.findall(match.group(2) or "")))
        try:
            samples[(match.group(1), labels)] = float(match.group(3))
        except ValueError:
            continue
    return samples


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return repr(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


def render(samples: dict[tuple[str, Labels], float]) -> str:
    """The exposition text of ``samples``: metrics in :data:`METRICS` order, each with its HELP and TYPE."""
    out = []
    for name, (kind, help) in METRICS.items():
        these = sorted((labels, value) for (n, labels), value in samples.items() if n == name)
        if not these:
            continue
        out += [f"# HELP {name} {help}", f"# TYPE {name} {kind}"]
        out += [name + "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "} " + _number(value) for labels, value in these]
    return "\n".join(out) + "\n"


def write_metrics(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a temporary file in the same folder, then a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # the collector usually runs as another user
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _public_url(url: str) -> str:
    """``url`` without a ``user:password@`` part."""
    return re.sub(r"^([a-zA-Z][\w+.-]*://)[^/@]*@", r"\1", str(url))


@dataclass
class RunMetrics:
    """The figures of one run, filled in by the command (:meth:`record`) before it ends."""

    command: str
    index: str
    values: dict[str, float] = field(default_factory=dict)

    def record(self, result, dry_run: bool = False) -> None:
        """Take the figures of a command's result: an ``IndexReport``, ``QueryReport``,
        ``GcPlan`` (``dry_run``: nothing deleted), ``DeleteReport`` or ``CompactionResult``
        (None: nothing was done)."""
        if result is None:
            return
        kind, get = type(result).__name__, lambda name: getattr(result, name, 0) or 0
        if kind == "IndexReport":
            self.values.update(
                patchhash_images_added=get("added"), patchhash_images_removed=get("removed"),
                patchhash_images_changed=get("changed"), patchhash_images_retried=get("retried"),
                patchhash_images_unreadable=get("n_errors_new"), patchhash_index_images=get("n_images"),
                patchhash_partitions_compacted=get("compacted"))
        elif kind == "QueryReport":
            self.values.update(
                patchhash_queries_answered=get("n_queries") - get("n_failed"), patchhash_queries_failed=get("n_failed"),
                patchhash_queries_without_hits=get("n_without_hits"), patchhash_result_rows=get("rows"))
        elif kind == "GcPlan":
            self.values.update(patchhash_gc_versions_deleted=0 if dry_run else len(result.dropped),
                               patchhash_gc_objects_deleted=0 if dry_run else len(result.garbage),
                               patchhash_bytes_deleted=0 if dry_run else get("garbage_bytes"),
                               patchhash_index_version=result.current)
        elif kind == "DeleteReport":
            self.values["patchhash_images_removed"] = get("deleted")
        elif kind == "CompactionResult":
            self.values["patchhash_partitions_compacted"] = get("partitions")
        if isinstance(getattr(result, "version", None), int):
            self.values["patchhash_index_version"] = result.version

    def samples(self, previous: dict[tuple[str, Labels], float], started: float, ended: float,
                ok: bool) -> dict[tuple[str, Labels], float]:
        """``previous`` with this run's samples written over it."""
        labels: Labels = (("command", self.command), ("index", _public_url(self.index)))
        samples = dict(previous)

        def put(name: str, value: float) -> None:
            samples[(name, labels)] = float(value)

        counter = "patchhash_runs_succeeded_total" if ok else "patchhash_runs_failed_total"
        put(counter, previous.get((counter, labels), 0.0) + 1)
        for name in ("patchhash_runs_succeeded_total", "patchhash_runs_failed_total"):
            samples.setdefault((name, labels), 0.0)
        put("patchhash_last_run_timestamp_seconds", ended)
        put("patchhash_last_run_duration_seconds", round(ended - started, 3))
        put("patchhash_last_run_success", 1 if ok else 0)
        if ok:
            put("patchhash_last_success_timestamp_seconds", ended)
            for name, value in self.values.items():
                put(name, value)
        return samples


def index_state(index: str, storage_options=None) -> dict[str, tuple]:
    """Every object under ``index``: relative path -> (size, what identifies its content: mtime,
    ETag or checksum); empty where there is no index yet."""
    from storage.gc import index_objects
    from storage.location import IndexLocation

    try:
        objects = index_objects(IndexLocation.of(index, storage_options))
    except FileNotFoundError:
        return {}
    keys = ("mtime", "LastModified", "ETag", "md5Hash", "crc32c", "created")
    return {rel: (info.get("size", 0), tuple(str(info.get(k)) for k in keys)) for rel, info in objects.items()}


def written_bytes(before: dict[str, tuple], after: dict[str, tuple]) -> int:
    """Bytes of the objects of ``after`` that are new or changed since ``before`` (:func:`index_state`)."""
    return sum(int(meta[0] or 0) for rel, meta in after.items() if before.get(rel) != meta)


@contextmanager
def command_metrics(path: str | None, command: str, index: str, storage_options=None):
    """Around a command's body: yields a :class:`RunMetrics` that the body fills in
    (``.record(result)``); writes ``path`` when the body ends, also when it fails (the
    exception goes on). Nothing is written when ``path`` is None. Index locks taken in the
    body carry the run id of the command's log lines as their token (so does its run log)."""
    from storage.lock import run_id_as_token
    from workflows.logformat import current_run

    metrics = RunMetrics(command, str(index))
    started, ok = time.time(), False
    measure = bool(path) and command in _WRITING  # two listings of the index: only when metrics are asked for
    before = index_state(index, storage_options) if measure else {}
    try:
        with run_id_as_token(current_run().run_id):  # the lock and run log carry the logs' run id
            yield metrics
        if measure:
            metrics.values["patchhash_bytes_written"] = written_bytes(before, index_state(index, storage_options))
        ok = True
    finally:
        if path:
            try:
                write_metrics(path, render(metrics.samples(read_samples(path), started, time.time(), ok)))
                log.debug("metrics of this %s run written to %s", command, path)
            except OSError as exc:  # the run's own outcome matters more than its metrics
                log.warning("could not write the metrics file %s: %s", path, exc)

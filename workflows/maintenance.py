"""The commands that keep an index in shape: ``delete``, ``compact``, ``gc`` and ``upgrade``.

Each runs under the index's lock (:class:`storage.lock.IndexLock`) and leaves a record in the
run log, like ``patchhash index``; each commits at most one version, atomically.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage import ConfigError, open_corpus
from storage.gc import GcPlan, collect_garbage, plan_gc
from storage.image_tables import read_excluded, read_state, write_excluded, write_tombstones
from storage.location import IndexLocation
from storage.manifest import Manifest, commit_manifest, read_manifest
from storage.upgrade import upgraded_manifest
from workflows.cluster import ClusterSettings, dask_client
from workflows.compact import CompactionPolicy, CompactionResult, compact_job
from workflows.options import check_options, option
from workflows.runtime import failpoint

__all__ = ["GcSettings", "DeleteReport", "parse_duration", "logged_run", "locked_run", "commit_upgrade", "upgrade", "delete",
           "compact", "gc", "run_gc"]

log = logging.getLogger(__name__)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(text: str | float, option: str = "--min-age") -> float:
    """Seconds of ``24h``, ``90m``, ``7d``, ``3600`` (seconds) or ``1d12h``."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        raw = str(text).strip().lower()
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", raw)
        if not raw or not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", "", raw).strip():
            raise ConfigError(f"{option} must be a duration such as 24h, 90m, 7d or a number of seconds, got {text!r}")
        seconds = sum(float(n) * _UNITS[u or "s"] for n, u in parts)
    if seconds < 0:
        raise ConfigError(f"{option} must not be negative, got {text!r}")
    return seconds


@dataclass(frozen=True)
class GcSettings:
    """``keep_versions`` newest versions are kept, and every version current less than
    ``min_age`` ago (a duration such as ``24h``, or seconds; seconds once validated);
    ``dry_run`` only lists what would go."""

    keep_versions: int = option(1, "gc: keep this many newest versions (and every version current less than --min-age ago).",
                                minimum=1, note=" (the current version is always kept)", example="7")
    min_age: float = option("24h", "gc: keep versions and objects that were in use less than this long ago (e.g. 24h, 90m, 7d): "
                            "a query job that started on an older version can finish.", type="str", example="24h")
    dry_run: bool = option(False, "Only list what would be deleted, and its bytes.")

    def __post_init__(self) -> None:
        check_options(self)
        object.__setattr__(self, "min_age", parse_duration(self.min_age))


@contextmanager
def logged_run(index: IndexLocation, lock, command: str, corpus: str | None = None):
    """Write the run log record of the ``with`` body, also when it fails; the body fills in the
    dict it gets (``status``, ``version``, counts...)."""
    from storage.runlog import write_run

    started = datetime.now(timezone.utc)
    record = {"status": "failed", "error": "interrupted"}
    try:
        yield record
        record["error"] = None
    except Exception as exc:
        from storage.errors import WorkerMismatchError

        refused = isinstance(exc, WorkerMismatchError)  # the cluster's preflight: nothing was run
        record.update(status="refused-preflight" if refused else "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        fields = {k: record.pop(k) for k in ("status", "error", "version", "images_added", "errors") if k in record}
        try:
            write_run(index, started, datetime.now(timezone.utc), lock.token, command=command, corpus=corpus, counts=record,
                      **fields)
        except Exception as exc:  # the job's own outcome matters more than its log entry
            log.warning("could not write the run log of %s: %s", index.url, exc)


def commit_upgrade(index: IndexLocation, manifest: Manifest, lock) -> Manifest:
    """Upgrade a format-1 index to format 2 in place (one commit); see :mod:`storage.upgrade`."""
    upgraded = upgraded_manifest(index, manifest)
    failpoint("upgrade-before-commit")
    if lock is not None:
        lock.verify()
    commit_manifest(index, upgraded)
    log.info("%s: upgraded from index format 1 to 2 (version %d)", index.url, upgraded.version)
    return upgraded


@contextmanager
def locked_run(index: IndexLocation, wait_for_lock: float, command: str, corpus: str | None = None):
    """The index's lock, and the run log record of the ``with`` body (see :func:`logged_run`)."""
    from storage.lock import IndexLock

    with IndexLock(index, wait_s=wait_for_lock, command=command, corpus=corpus) as lock, logged_run(index, lock, command, corpus) as record:
        yield lock, record


def upgrade(index_url: "str | IndexLocation", storage_options=None, wait_for_lock: float = 0.0) -> int | None:
    """``patchhash upgrade``: the version that upgraded the index, or None if it was format 2 already."""
    index = IndexLocation.of(index_url, storage_options)
    with locked_run(index, wait_for_lock, "upgrade") as (lock, record):
        manifest = read_manifest(index)
        if manifest.format_version != 1:
            record["status"] = "no-op"
            log.info("%s is index format %d already; nothing to do", index.url, manifest.format_version)
            return None
        version = commit_upgrade(index, manifest, lock).version
        record.update(status="ok", version=version)
        return version


@dataclass
class DeleteReport:
    version: int | None
    deleted: int
    not_found: int
    excluded: int


def delete(index_url: "str | IndexLocation", uris: str, storage_options=None, wait_for_lock: float = 0.0,
           keep_out: bool = True) -> DeleteReport:
    """``patchhash delete``: remove the images whose uris ``uris`` lists (txt, csv or parquet).

    Their ids are tombstoned, so no query returns them; with ``keep_out`` (the default) the
    uris are also recorded as excluded, so a later sync of their corpus does not add them
    back while the files still exist (``keep_out=False`` lifts that for the uris given).
    """
    index = IndexLocation.of(index_url, storage_options)
    wanted = list(dict.fromkeys(open_corpus(uris, index.storage_options).uris()))
    with locked_run(index, wait_for_lock, "delete", corpus=uris) as (lock, record):
        manifest = read_manifest(index)
        if manifest.format_version == 1:
            manifest = commit_upgrade(index, manifest, lock)
        state = read_state(index, manifest)
        hit = state.filter(pc.is_in(state.column("uri"), value_set=pa.array(wanted, pa.string())))
        ids = hit.column("image_id").to_numpy()
        readable = hit.column("reason").is_null().to_numpy(zero_copy_only=False)
        found = set(hit.column("uri").to_pylist())
        excluded = set(read_excluded(index, manifest))
        new_excluded = (excluded | set(wanted)) if keep_out else (excluded - set(wanted))
        not_found = len(wanted) - len(found)
        if not_found:
            log.warning("%d of the %d uris of %s are not in %s (not indexed, or deleted already)", not_found, len(wanted), uris, index.url)
        if not len(ids) and new_excluded == excluded:
            record.update(status="no-op", deleted=0)
            return DeleteReport(None, 0, not_found, len(excluded))
        version = manifest.version + 1
        partitions = []
        for p in manifest.partitions:
            inside = (ids >= p.start) & (ids < p.stop)
            if inside.any():
                order = np.argsort(ids[inside])
                p = replace(p, tombstones=write_tombstones(index, p, ids[inside][order], readable[inside][order], version))
            partitions.append(p)
        updated = manifest.next(partitions=tuple(partitions), excluded=write_excluded(index, sorted(new_excluded), version))
        lock.verify()
        commit_manifest(index, updated)
        log.info("deleted %d images from %s (version %d)%s", int(readable.sum()), index.url, version,
                 f"; {len(new_excluded)} uris kept out of syncs" if new_excluded else "")
        record.update(status="ok", version=version, deleted=int(readable.sum()))
        return DeleteReport(version, int(readable.sum()), not_found, len(new_excluded))


def compact(index_url: "str | IndexLocation", policy: CompactionPolicy = CompactionPolicy(), force: bool = False,
            cluster: ClusterSettings = ClusterSettings(), storage_options=None, client=None,
            wait_for_lock: float = 0.0, auto: bool = False) -> CompactionResult | None:
    """``patchhash compact``: compact every due partition (``force``: every fragmented one;
    ``auto``: only as much as ``policy.budget`` allows, as ``patchhash index`` does after a sync)."""
    index = IndexLocation.of(index_url, storage_options)
    with locked_run(index, wait_for_lock, "compact") as (lock, record):
        manifest = read_manifest(index)
        if manifest.format_version == 1:
            manifest = commit_upgrade(index, manifest, lock)
        with dask_client(cluster) if client is None else nullcontext(client) as dask:
            result = compact_job(dask, index, manifest, policy, lock, auto=auto, force=force)
        if result is None:
            log.info("%s: no partition is due for compaction", index.url)
            record.update(status="no-op", compacted=0)
        else:
            record.update(status="ok", version=result.version, compacted=result.partitions)
        return result


def run_gc(index: "IndexLocation | str", settings: GcSettings) -> GcPlan:
    """Collect the garbage of an index whose lock the caller holds; see :mod:`storage.gc`."""
    index = IndexLocation.of(index)
    plan = plan_gc(index, settings.keep_versions, settings.min_age)
    verb = "would delete" if settings.dry_run else "deleting"
    log.info("%s: keeping versions %s; %s %d versions and %d objects (%d bytes); %d unreferenced objects younger than %.0f s kept",
             index.url, plan.kept, verb, len(plan.dropped), len(plan.garbage), plan.garbage_bytes, len(plan.young), settings.min_age)
    if not settings.dry_run:
        collect_garbage(index, plan, after_batch=lambda n: failpoint("gc-deleting"))
    return plan


def gc(index_url: "str | IndexLocation", settings: GcSettings = GcSettings(), storage_options=None,
       wait_for_lock: float = 0.0) -> GcPlan:
    """``patchhash gc``: delete what no kept version references, under the index's lock."""
    index = IndexLocation.of(index_url, storage_options)
    with locked_run(index, wait_for_lock, "gc") as (lock, record):
        plan = run_gc(index, settings)
        deleted = 0 if settings.dry_run else len(plan.garbage) + len(plan.dropped)
        record.update(status="ok" if deleted else "no-op", objects=deleted, bytes=0 if settings.dry_run else plan.garbage_bytes)
        return plan

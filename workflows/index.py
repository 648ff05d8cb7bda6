"""``patchhash index``: build an index, then keep it a mirror of its corpus.

corpus listing -> sync plan (:mod:`workflows.sync`: added, removed, changed, retried)
-> shards of the images to encode (Dask: read, convert, encode, write codes rows + tables)
-> bucket maps of the new ids (Dask: a delta per touched partition, or a new partition)
-> tombstones of the removed ids -> commit -> compaction when fragmentation passes the
policy's threshold (:mod:`workflows.compact`).

Every task writes deterministic paths with whole-object writes, so a task that runs twice
rewrites the same bytes, and a rerun after an interruption skips the work whose done-marker
exists. A version becomes visible only when ``manifest.json`` is replaced, last.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

import numpy as np

from storage import (
    CorpusError,
    ImageSpec,
    IndexNotFoundError,
    ModelMismatchError,
    join_url,
    open_corpus,
    url_to_fs,
)
from storage.atomic import read_json, write_json_atomic
from storage.image_tables import STATE_SCHEMA, read_excluded, read_shard_tables, read_state, write_shard_tables, write_tombstones
from storage.layout import CODES, MODEL_DIR, resolve, staging_dir
from storage.manifest import MAP_LAYOUTS, DeltaEntry, Manifest, MapEntry, PartitionEntry, ShardEntry, SourceEntry, commit_manifest, read_manifest, utc_now
from storage.retry import retry_call
from workflows.cluster import ClusterSettings, dask_client
from workflows.compact import CompactionPolicy, compact_job, plan_compaction
from workflows.index_tasks import build_map_task, encode_shard_task
from workflows.options import check_options, option
from workflows.progress import track
from workflows.runtime import failpoint
from workflows.sync import ARRAY_KINDS, SyncPlan, find_source, plan_sync

__all__ = ["IndexSettings", "IndexReport", "index", "install_model", "build_partitions", "MAP_LAYOUTS"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexSettings:
    """Options of an indexing job (``patchhash index``), validated up front.

    ``shard_size`` (images per task and per Zarr chunk) and ``partitions`` (number of bucket
    partitions) only apply when the index is created; later runs keep the index's own.
    ``append_only`` only adds images not in the index yet (format 1's behaviour); otherwise a
    rerun for a corpus already indexed mirrors it (:mod:`workflows.sync`), refusing to remove
    more than ``max_delete_fraction`` of its images. ``compaction`` decides when a run
    compacts the index afterwards (None: never).
    """

    shard_size: int = option(10_000, "Images per task and per Zarr chunk (new index only).", minimum=1, maximum=10_000_000,
                             example="10000")
    partitions: int | None = option(None, "Bucket-map partitions (new index only; default: one per worker).", minimum=1,
                                    example="8")
    strict: bool = option(False, "Fail before commit if any image cannot be read.", example="false")
    append_only: bool = option(False, "Only add images not in the index yet: do not remove unlisted ones, re-encode changed "
                               "files or retry unreadable ones.", example="false")
    max_delete_fraction: float = option(0.2, "Refuse (before writing anything) a sync that would remove more than this "
                                        "fraction of the corpus's indexed images: a short listing must not empty the index. "
                                        "1 allows any.", minimum=0, maximum=1, example="0.2")
    compaction: CompactionPolicy | None = CompactionPolicy()

    def __post_init__(self) -> None:
        check_options(self)


@dataclass
class IndexReport:
    """What one run did. ``n_new`` counts the images it encoded (added, changed and retried);
    ``n_images`` the live images after it."""

    index: str
    version: int | None
    n_images: int
    n_new: int
    n_errors_new: int
    added: int = 0
    removed: int = 0
    changed: int = 0
    retried: int = 0
    upgraded: bool = False
    compacted: int = 0
    shards_done: int = 0
    shards_skipped: int = 0
    partitions_built: int = 0
    partitions_skipped: int = 0
    seconds: float = 0.0
    encode_seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.n_new / self.seconds if self.seconds else 0.0

    @property
    def committed(self) -> bool:
        return bool(self.n_new or self.removed or self.upgraded or self.compacted)

    def counts(self) -> dict[str, int]:
        return {"added": self.added, "removed": self.removed, "changed": self.changed, "retried": self.retried}


# --------------------------------------------------------------------------- helpers


def _check_model(index_url: str, model: str | None, storage_options) -> None:
    """Refuse to extend a committed index with another model than its own."""
    from pipeline.modelcard import read_card

    if model is None:
        return
    bound = read_card(join_url(index_url, MODEL_DIR), storage_options)
    given = read_card(model, storage_options)
    if given.model_sha256 != bound.model_sha256:
        raise ModelMismatchError(
            f"{index_url} was built with model {bound.name!r} (sha256 {bound.model_sha256[:12]}...), "
            f"not {model!r} (sha256 {given.model_sha256[:12]}...). Index into a new --index URL, "
            "or omit --model to use the index's own model."
        )


def install_model(index_url: str, model: str | None, storage_options) -> None:
    """Copy the model into a new index (replacing one left by an uncommitted attempt)."""
    from pipeline.modelcard import CARD_FILE, MODEL_FILE, read_card, resolve_model_url

    source = resolve_model_url(model or "fashion-mnist")
    card = read_card(source, storage_options)  # validates before anything is copied
    target = join_url(index_url, MODEL_DIR)
    if _exists(join_url(target, CARD_FILE), storage_options) and read_card(target, storage_options, verify=False).model_sha256 == card.model_sha256:
        return
    for name in (MODEL_FILE, CARD_FILE):  # card last: a model dir with a card is complete
        src_fs, src = url_to_fs(join_url(source, name), storage_options)
        dst_fs, dst = url_to_fs(join_url(target, name), storage_options)
        dst_fs.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
        data = retry_call(f"reading {join_url(source, name)}", src_fs.cat_file, src)
        retry_call(f"writing {join_url(target, name)}", dst_fs.pipe_file, dst, data)


def _exists(url: str, storage_options) -> bool:
    fs, path = url_to_fs(url, storage_options)
    return retry_call(f"checking {url}", fs.exists, path)


def _read_manifest_or_none(index_url: str, storage_options) -> Manifest | None:
    try:
        return read_manifest(index_url, storage_options)
    except IndexNotFoundError:
        return None


def staging_plan(index_url: str, version: int, plan_doc: dict, storage_options) -> set[str]:
    """Done-markers of an earlier attempt at the same plan; a different plan starts afresh."""
    stage = join_url(index_url, staging_dir(version))
    fs, path = url_to_fs(stage, storage_options)
    try:
        previous = read_json(join_url(stage, "plan.json"), storage_options)
    except (FileNotFoundError, ValueError):
        previous = None
    if previous != plan_doc:
        if _exists(stage, storage_options):
            retry_call(f"removing {stage}", fs.rm, path, recursive=True)
        write_json_atomic(join_url(stage, "plan.json"), plan_doc, storage_options)
        return set()
    try:
        names = retry_call(f"listing {stage}/done", fs.ls, path + "/done", detail=False)
    except FileNotFoundError:
        return set()
    return {p.rstrip("/").rsplit("/", 1)[-1] for p in names}


def cleanup_staging(index_url: str, version: int, storage_options) -> None:
    fs, path = url_to_fs(join_url(index_url, staging_dir(version)), storage_options)
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass


def _sha(values) -> str:
    return hashlib.sha256("\n".join(map(str, values)).encode()).hexdigest()


# --------------------------------------------------------------------------- placing new ids


@dataclass(frozen=True)
class _Range:
    """New ids ``[start, stop)`` in partition ``partition`` (an index into the new list), which is new or grows."""

    start: int
    stop: int
    partition: int
    new: bool


def _place(partitions: tuple[PartitionEntry, ...], n_old: int, n_new: int, partition_size: int, room: int = 0) -> list[_Range]:
    """Where ids ``[n_old, n_new)`` go: ``room`` of them to the last partition (what it lacks
    of ``partition_size`` live images), then new partitions of ``partition_size`` ids."""
    ranges: list[_Range] = []
    cur = n_old
    if partitions and room > 0 and n_new > cur:
        stop = min(n_new, cur + room)
        ranges.append(_Range(cur, stop, len(partitions) - 1, False))
        cur = stop
    index = len(partitions)
    while cur < n_new:
        stop = min(n_new, cur + partition_size)
        ranges.append(_Range(cur, stop, index, True))
        cur, index = stop, index + 1
    return ranges


def _shard_cuts(ranges: list[_Range], shard_size: int) -> list[tuple[int, int, int]]:
    """Encode tasks' ``(start, stop, partition)``: within one partition, cut at multiples of
    ``shard_size``, so that no two tasks write one chunk of one codes array."""
    cuts = []
    for r in ranges:
        bounds = [r.start, *range((r.start // shard_size + 1) * shard_size, r.stop, shard_size), r.stop]
        cuts += [(a, b, r.partition) for a, b in zip(bounds[:-1], bounds[1:])]
    return cuts


def _encode_jobs(corpus, plan: SyncPlan, cuts, codes_of: dict[int, str], n_old: int) -> list[tuple]:
    """``(corpus shard, first id, fingerprints or None, codes array)`` of each cut."""
    from storage.corpus import UriListCorpus

    rows = plan.rows
    if rows[-1] - rows[0] + 1 == len(rows):  # one run of the listing: read it as the corpus's own shards
        first_row = int(rows[0])
    else:
        corpus = UriListCorpus(f"{corpus.url} (images to encode)", corpus.storage_options, [plan.listing[r] for r in rows])
        first_row = 0
    hash_pixels = corpus.kind in ARRAY_KINDS or all(f is None for f in plan.fingerprints)
    jobs = []
    for start, stop, partition in cuts:
        shard = corpus.shards(stop - start, start=first_row + start - n_old)[0]
        fps = None if hash_pixels else plan.fingerprints[start - n_old : stop - n_old]
        jobs.append((shard, start, fps, codes_of[partition]))
    return jobs


def build_partitions(dask, index_url: str, shards: tuple[ShardEntry, ...], n_images: int, partition_size: int,
                     storage_options=None) -> tuple[PartitionEntry, ...]:
    """The partitions of version 1 of an index whose ``codes/`` rows and tables were written by
    other means (``benchmarks/bench_scale.py`` writes synthetic codes): base bucket maps of
    ``partition_size`` ids each, built by the index job's own tasks."""
    ranges = _place((), 0, n_images, partition_size)
    report = IndexReport(index_url, None, 0, 0, 0)
    maps = _map_phase(dask, index_url, ranges, {r.partition: CODES for r in ranges}, shards, 1, set(),
                      join_url(index_url, staging_dir(1)), report, storage_options)
    cleanup_staging(index_url, 1, storage_options)
    return tuple(PartitionEntry(r.start, r.stop, CODES, maps[r.start]) for r in ranges)


# --------------------------------------------------------------------------- the job


def index(
    corpus: str,
    index_url: str,
    model: str | None = None,
    settings: IndexSettings = IndexSettings(),
    cluster: ClusterSettings = ClusterSettings(),
    storage_options: dict | None = None,
    client=None,
    wait_for_lock: float = 0.0,
    gc=None,
) -> IndexReport:
    """Make ``index_url`` mirror ``corpus``, under the index's lock.

    Creates the index on first use (bound to ``model``, default the built-in
    ``fashion-mnist``). Afterwards, for a corpus the index already holds, adds new images,
    removes those no longer listed, encodes changed files again and retries unreadable ones
    (:mod:`workflows.sync`); with ``settings.append_only`` it only adds. A run with nothing to
    change is a quick no-op. A format-1 index is upgraded first. Pass a connected ``client``
    to reuse a Dask cluster; otherwise one is started from ``cluster``.

    The job runs holding ``<index>/_lock.json`` (:class:`storage.lock.IndexLock`): if another
    run holds it, wait up to ``wait_for_lock`` seconds, then raise ``LockHeldError``. Every run
    that got the lock writes a record to ``<index>/runs/`` (:mod:`storage.runlog`), also when
    nothing was new or the job failed. ``gc`` (a :class:`workflows.maintenance.GcSettings`)
    collects garbage after a successful run, under the same lock.
    """
    from storage.lock import IndexLock
    from workflows.maintenance import logged_run, run_gc

    with IndexLock(index_url, storage_options, wait_s=wait_for_lock) as lock, \
            logged_run(index_url, lock, "index", storage_options, corpus=corpus) as record:
        report = _index_job(corpus, index_url, model, settings, cluster, storage_options, client, lock=lock)
        record.update(status="ok" if report.committed else "no-op", version=report.version if report.committed else None,
                      images_added=report.n_new - report.n_errors_new, errors=report.n_errors_new, **report.counts())
        if gc is not None:
            run_gc(index_url, gc, storage_options)
        return report


def _index_job(corpus: str, index_url: str, model: str | None, settings: IndexSettings, cluster: ClusterSettings,
               storage_options: dict | None, client, lock) -> IndexReport:
    """The job of :func:`index`, run while holding ``lock`` (verified just before each commit)."""
    from pipeline.modelcard import read_card
    from workflows.maintenance import commit_upgrade

    started = time.perf_counter()
    manifest = _read_manifest_or_none(index_url, storage_options)
    if manifest is not None:
        _check_model(index_url, model, storage_options)
    source = open_corpus(corpus, storage_options)
    listed = time.perf_counter()
    upgraded = False
    if manifest is not None and manifest.format_version == 1:
        manifest = commit_upgrade(index_url, manifest, storage_options, lock)
        upgraded = True
    if manifest is None:
        install_model(index_url, model, storage_options)
    card = read_card(join_url(index_url, MODEL_DIR), storage_options)
    state = read_state(index_url, manifest, storage_options) if manifest else STATE_SCHEMA.empty_table()
    excluded = set(read_excluded(index_url, manifest, storage_options)) if manifest else set()
    known = find_source(manifest, source, corpus)
    plan = plan_sync(source, known, len(manifest.sources) if manifest else 0, state, excluded,
                     spec=ImageSpec(*card.config.input_shape), append_only=settings.append_only,
                     max_delete_fraction=settings.max_delete_fraction)
    report = IndexReport(index_url, manifest.version if manifest else None, manifest.n_ok if manifest else 0,
                         len(plan.rows), 0, upgraded=upgraded, **plan.counts())
    report.phases.update(listing=listed - started, plan=time.perf_counter() - listed)
    if plan.empty:
        log.info("nothing to change: %s holds the %d images of %s as they are (version %s)",
                 index_url, len(source), corpus, manifest.version if manifest else None)
        if settings.compaction is not None and plan_compaction(manifest, settings.compaction, auto=True):
            # e.g. the run that made these changes was killed while compacting
            with dask_client(cluster) if client is None else nullcontext(client) as dask:
                _compact(dask, index_url, manifest, settings, report, storage_options, lock)
        report.seconds = time.perf_counter() - started
        return report

    with dask_client(cluster) if client is None else nullcontext(client) as dask:
        new_manifest = _apply(dask, source, corpus, index_url, manifest, card, plan, settings, report, storage_options, lock)
        report.version, report.n_images = new_manifest.version, new_manifest.n_ok
        report.seconds = time.perf_counter() - started
        log.info(
            "committed version %d of %s: %d added, %d removed, %d changed, %d retried (%d unreadable) in %.1f s",
            report.version, index_url, report.added, report.removed, report.changed, report.retried,
            report.n_errors_new, report.seconds,
        )
        if settings.compaction is not None:
            _compact(dask, index_url, new_manifest, settings, report, storage_options, lock)
    return report


def _compact(dask, index_url: str, manifest: Manifest, settings: IndexSettings, report: IndexReport, storage_options, lock) -> None:
    started = time.perf_counter()
    compacted = compact_job(dask, index_url, manifest, settings.compaction, storage_options, lock, auto=True)
    report.phases["compact"] = time.perf_counter() - started
    if compacted is not None:
        report.compacted, report.version = compacted.partitions, compacted.version


def _apply(dask, source, corpus: str, index_url: str, manifest: Manifest | None, card, plan: SyncPlan, settings: IndexSettings,
           report: IndexReport, storage_options, lock) -> Manifest:
    """Encode, build, tombstone and commit the changes of ``plan``; return the committed manifest."""
    n_old = manifest.n_images if manifest else 0
    n_new = n_old + len(plan.rows)
    version = (manifest.version if manifest else 0) + 1
    if manifest is not None:
        shard_size, partition_size = manifest.shard_size, manifest.partition_size
    else:
        shard_size = settings.shard_size
        n_parts = settings.partitions or max(1, len(dask.nthreads()))
        partition_size = shard_size * max(1, math.ceil(n_new / n_parts / shard_size))
    old_partitions = manifest.partitions if manifest else ()
    room = partition_size - (manifest.live_in(old_partitions[-1]) if old_partitions else 0)
    ranges = _place(old_partitions, n_old, n_new, partition_size, room)
    cuts = _shard_cuts(ranges, shard_size)
    uris = plan.listing
    plan_doc = {
        "version": version, "corpus": corpus, "model_sha256": card.model_sha256, "n_old": n_old, "n_new": n_new,
        "shard_size": shard_size, "partition_size": partition_size, "source": plan.source,
        "encode_sha256": _sha(f"{uris[r]} {fp}" for r, fp in zip(plan.rows, plan.fingerprints)),
        "dead_sha256": _sha(plan.dead.tolist()), "cuts": [list(c) for c in cuts],
    }
    stage = join_url(index_url, staging_dir(version))
    done = staging_plan(index_url, version, plan_doc, storage_options)
    codes_of = _prepare_codes(index_url, old_partitions, ranges, card, shard_size, storage_options, create=manifest is None and not done)
    jobs = _encode_jobs(source, plan, cuts, codes_of, n_old) if len(plan.rows) else []
    new_shards = _encode_phase(dask, index_url, jobs, plan.source, version, done, stage, report, storage_options)
    failpoint("index-encoded")
    report.phases["encode"] = report.encode_seconds
    report.n_errors_new = sum(e.n_errors for e in new_shards)
    if settings.strict and report.n_errors_new:
        raise CorpusError(
            f"{report.n_errors_new} unreadable image(s) in {corpus} and --strict is set; nothing was committed. "
            "Fix or remove them (the warnings above name them) and rerun: shards already encoded are kept."
        )
    shards = (manifest.shards if manifest else ()) + tuple(new_shards)
    shards = _adopt_fingerprints(index_url, shards, plan, version, storage_options)
    built = time.perf_counter()
    maps = _map_phase(dask, index_url, ranges, codes_of, shards, version, done, stage, report, storage_options)
    report.phases["buckets"] = time.perf_counter() - built
    built = time.perf_counter()
    partitions = list(old_partitions)
    for r in ranges:
        if r.new:
            partitions.append(PartitionEntry(r.start, r.stop, codes_of[r.partition], maps[r.start]))
        else:
            p = partitions[r.partition]
            partitions[r.partition] = replace(p, stop=r.stop, deltas=p.deltas + (DeltaEntry(r.start, r.stop, maps[r.start]),))
    partitions = _tombstone(index_url, partitions, plan, version, storage_options)
    record = SourceEntry(plan.source, corpus, source.url, source.kind,
                         added=manifest.source(plan.source).added if manifest and plan.source < len(manifest.sources) else version,
                         synced=version, committed=utc_now(), fingerprint=plan.file_fingerprint)
    sources = tuple(s for s in (manifest.sources if manifest else ()) if s.source != plan.source) + (record,)
    sources = tuple(sorted(sources, key=lambda s: s.source))
    if manifest is None:
        new_manifest = Manifest(
            version=1, model={**card.identity, "path": MODEL_DIR}, bits=card.bits, grid=card.grid, code_dtype=card.code_dtype.name,
            shard_size=shard_size, partition_size=partition_size, n_images=n_new, shards=shards,
            partitions=tuple(partitions), sources=sources, created=utc_now(), parent=None,
        )
    else:
        new_manifest = manifest.next(n_images=n_new, shards=shards, partitions=tuple(partitions), sources=sources)
    failpoint("index-before-commit")
    if lock is not None:
        lock.verify()
    commit_manifest(index_url, new_manifest, storage_options)
    cleanup_staging(index_url, version, storage_options)
    report.phases["commit"] = time.perf_counter() - built  # tombstones, fingerprints recorded, manifest
    return new_manifest


def _prepare_codes(index_url: str, partitions, ranges: list[_Range], card, shard_size: int, storage_options,
                   create: bool) -> dict[int, str]:
    """The codes array of each partition receiving new ids, grown to hold them: a partition's
    own, or for new partitions the index's ``codes/`` array (created with the index, or again
    after compaction moved every partition out of it and gc deleted it). ``create`` replaces
    an array left by an attempt at another plan of a new index."""
    from storage.arrays import create_codes_array, open_array

    codes_of = {r.partition: CODES if r.new else partitions[r.partition].codes for r in ranges}
    rows = {rel: max(r.stop for r in ranges if codes_of[r.partition] == rel) for rel in set(codes_of.values())}
    for rel, n_rows in rows.items():
        url = resolve(index_url, rel)
        if (create and rel == CODES) or not _exists(join_url(url, "zarr.json"), storage_options):
            create_codes_array(url, n_rows, card.grid, card.code_dtype, shard_size, storage_options)
        else:
            array = open_array(url, storage_options, mode="r+")
            if array.shape[0] < n_rows:
                array.resize((n_rows, *card.grid))
    return codes_of


def _encode_phase(dask, index_url: str, jobs, source: int, version: int, done: set[str], stage: str, report: IndexReport,
                  storage_options) -> list[ShardEntry]:
    """Run the encode tasks of shards without a done-marker; entries of every planned shard."""
    entries: dict[int, ShardEntry] = {}
    todo = []
    for job in jobs:
        marker = f"{job[1]:012d}.done.json"
        if marker in done:
            entries[job[1]] = ShardEntry(**read_json(join_url(stage, "done", marker), storage_options)["entry"])
        else:
            todo.append(job)
    report.shards_skipped = len(entries)
    if entries:
        log.info("resuming: %d of %d shards already done, skipped", len(entries), len(jobs))
    started = time.perf_counter()
    futures = [dask.submit(encode_shard_task, index_url, codes, shard, id_start, source, fps, version, storage_options, pure=False)
               for shard, id_start, fps, codes in todo]
    for future in track(futures, total=len(futures), desc="encode", unit="shard"):
        summary = future.result()
        entry = ShardEntry(**summary["entry"])
        write_json_atomic(join_url(stage, "done", f"{entry.start:012d}.done.json"), summary, storage_options)
        entries[entry.start] = entry
        report.shards_done += 1
        for err in summary["errors"]:
            log.warning("unreadable image %s: %s", err["uri"], err["reason"])
    report.encode_seconds = time.perf_counter() - started
    return [entries[k] for k in sorted(entries)]


def _map_phase(dask, index_url: str, ranges: list[_Range], codes_of: dict[int, str], shards, version: int, done: set[str],
               stage: str, report: IndexReport, storage_options) -> dict[int, dict[str, MapEntry]]:
    """Both bucket maps of each range of new ids (built, or taken from done-markers), by range start."""
    futures = []
    for r in ranges:
        for layout in MAP_LAYOUTS:
            if f"{layout}-{r.start:012d}.done.json" in done:
                report.partitions_skipped += 1
                continue
            tables = [s for s in shards if s.start < r.stop and s.stop > r.start]
            futures.append(dask.submit(build_map_task, index_url, codes_of[r.partition], layout, r.start, r.stop, tables, version,
                                       storage_options, pure=False))
    if report.partitions_skipped:
        log.info("resuming: %d of %d bucket maps already built, skipped", report.partitions_skipped, report.partitions_skipped + len(futures))
    for future in track(futures, total=len(futures), desc="buckets", unit="map"):
        entry = future.result()
        write_json_atomic(join_url(stage, "done", f"{entry['kind']}-{entry['start']:012d}.done.json"), entry, storage_options)
        report.partitions_built += 1
        failpoint("index-partition-built")
    maps: dict[int, dict[str, MapEntry]] = {}
    for r in ranges:
        for layout in MAP_LAYOUTS:
            entry = read_json(join_url(stage, "done", f"{layout}-{r.start:012d}.done.json"), storage_options)
            maps.setdefault(r.start, {})[layout] = MapEntry(entry["path"], entry["stats"])
    return maps


def _tombstone(index_url: str, partitions: list[PartitionEntry], plan: SyncPlan, version: int, storage_options) -> list[PartitionEntry]:
    """``partitions`` with the ids ``plan`` removes added to their tombstones."""
    out = []
    for p in partitions:
        inside = (plan.dead >= p.start) & (plan.dead < p.stop)
        if inside.any():
            p = replace(p, tombstones=write_tombstones(index_url, p, plan.dead[inside], plan.dead_readable[inside], version,
                                                       storage_options))
        out.append(p)
    return out


def _adopt_fingerprints(index_url: str, shards: tuple[ShardEntry, ...], plan: SyncPlan, version: int,
                        storage_options) -> tuple[ShardEntry, ...]:
    """Record the current fingerprint of images indexed without one (by format 1): their
    tables are written again (once), with the fingerprint filled in."""
    if not len(plan.adopt_ids):
        return shards
    import pyarrow as pa
    import pyarrow.compute as pc

    found = dict(zip(plan.adopt_ids.tolist(), plan.adopt_fingerprints))
    out = []
    for shard in shards:
        if not any(shard.start <= i < shard.stop for i in found):
            out.append(shard)
            continue
        table = read_shard_tables(index_url, [shard], storage_options)
        fps = [found.get(i, fp) for i, fp in zip(table.column("image_id").to_pylist(), table.column("fingerprint").to_pylist())]
        table = table.set_column(table.schema.get_field_index("fingerprint"), "fingerprint", pa.array(fps, pa.string()))
        readable = pc.is_null(table.column("reason"))
        out.append(write_shard_tables(index_url, shard.start, shard.stop, version, table.filter(readable),
                                      table.filter(pc.invert(readable)), storage_options))
    log.info("recorded the fingerprints of %d images indexed without one (by index format 1)", len(found))
    return tuple(out)

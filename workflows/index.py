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


from storage import CorpusError, IndexNotFoundError, ModelMismatchError, join_url, open_corpus, url_to_fs
from storage.atomic import read_json
from storage.image_tables import STATE_SCHEMA, read_excluded, read_shard_tables, read_state, write_shard_tables, write_tombstones
from storage.layout import (CARD_FILE, CODES, MODEL_DIR, MODEL_FILES, array_metadata_path, map_done_marker, shard_done_marker,
                            staging_plan_path)
from storage.location import IndexLocation
from storage.manifest import MAP_LAYOUTS, DeltaEntry, Manifest, MapEntry, PartitionEntry, ShardEntry, SourceEntry, commit_manifest, read_manifest, utc_now
from storage.retry import retry_call
from storage.staging import cleanup_staging, read_done_marker, staging_plan, write_done_marker
from workflows.cluster import ClusterSettings, dask_client
from workflows.compact import CompactionPolicy, compact_job, plan_compaction
from workflows.index_tasks import build_map_task, encode_shard_task
from workflows.options import check_options, option
from workflows.placement import IdRange, encode_cuts, place_ids
from workflows.progress import track
from workflows.runtime import failpoint
from workflows.sharding import auto_shard_size, mean_file_bytes
from workflows.sync import ARRAY_KINDS, SyncPlan, find_source, plan_sync

__all__ = ["IndexSettings", "IndexReport", "index", "install_model", "default_model", "build_partitions", "MAP_LAYOUTS"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexSettings:
    """Options of an indexing job (``patchhash index``), validated up front.

    ``shard_size`` (images per task and per Zarr chunk) and ``partitions`` (number of bucket
    partitions) only apply when the index is created; later runs keep the index's own. Left
    None, each is chosen by the run that creates the index: the shard size by
    :func:`workflows.sharding.auto_shard_size` (about 4 tasks per worker thread, at most
    about 256 MiB of image files per task, 10,000 images at most), the partitions one per
    worker.
    ``append_only`` only adds images not in the index yet (format 1's behaviour); otherwise a
    rerun for a corpus already indexed mirrors it (:mod:`workflows.sync`), refusing to remove
    more than ``max_delete_fraction`` of its images. ``compaction`` decides when a run
    compacts the index afterwards (None: never).
    """

    shard_size: int | None = option(None, "Images per task and per Zarr chunk (new index only; default: chosen for the "
                                    "corpus and cluster, about 4 tasks per worker thread and at most ~256 MiB of files "
                                    "per task, up to 10000).", minimum=1, maximum=10_000_000, example="10000")
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


def _check_model(index: IndexLocation, model: str | None) -> None:
    """Refuse to extend a committed index with another model than its own; say so where only
    its input rules differ (a card changed since, with the same weights): the index keeps its own."""
    from pipeline.modelcard import read_card

    if model is None:
        return
    bound = read_card(index.join(MODEL_DIR), index.storage_options)
    given = read_card(model, index.storage_options)
    if given.model_sha256 != bound.model_sha256:
        raise ModelMismatchError(
            f"{index.url} was built with model {bound.name!r} (sha256 {bound.model_sha256[:12]}...), "
            f"not {model!r} (sha256 {given.model_sha256[:12]}...). Index into a new --index URL, "
            "or omit --model to use the index's own model."
        )
    if _inputs(given) != _inputs(bound):
        log.warning("%s keeps the input rules it was built with, %s; %s now names %s: index into a new --index URL to get them",
                    index.url, _inputs(bound), model, _inputs(given))


def _inputs(card) -> dict:
    """What a card says each image goes through: its input rules, and its further placements."""
    return {"input": card.input_rules.to_json(), "placements": [rules.to_json() for rules in card.placements],
            "placement_penalty": card.placement_penalty}


ARRAY_MODEL = "fashion-mnist"
FILES_MODEL = "icons-photos"


def default_model(corpus_kind: str) -> str:
    """The built-in model a new index gets without ``--model``: :data:`ARRAY_MODEL` for a corpus
    of arrays (IDX, ``.npy``, Zarr: the Fashion-MNIST demo's kind), :data:`FILES_MODEL` for image
    files (a folder or a list of files: icons, pictures, photos). Why: docs/MODEL.md."""
    return ARRAY_MODEL if corpus_kind in ARRAY_KINDS else FILES_MODEL


def install_model(index: "IndexLocation | str", model: str) -> None:
    """Copy ``model`` (a directory or built-in name: :func:`default_model` picks one for a corpus)
    into a new index, replacing one left by an uncommitted attempt."""
    from pipeline.modelcard import read_card, resolve_model_url

    index = IndexLocation.of(index)
    source = resolve_model_url(model)
    card = read_card(source, index.storage_options)  # validates before anything is copied
    target = index.child(MODEL_DIR)
    if target.exists(CARD_FILE):
        left = read_card(target.url, target.storage_options, verify=False)
        if left.model_sha256 == card.model_sha256 and _inputs(left) == _inputs(card):
            return
    for name in MODEL_FILES:  # card last: a model dir with a card is complete
        src_fs, src = url_to_fs(join_url(source, name), index.storage_options)
        target.fs.makedirs(target.path, exist_ok=True)
        data = retry_call(f"reading {join_url(source, name)}", src_fs.cat_file, src)
        retry_call(f"writing {target.join(name)}", target.fs.pipe_file, target.fs_path(name), data)


def _read_manifest_or_none(index: IndexLocation) -> Manifest | None:
    try:
        return read_manifest(index)
    except IndexNotFoundError:
        return None


def _new_index_sizes(dask, index: IndexLocation, settings: IndexSettings, plan: SyncPlan, version: int, n_new: int,
                     plan_of) -> tuple[int, int]:
    """``(shard_size, partition_size)`` of a new index: those of ``settings``, or chosen for the
    corpus and cluster where they are None; but those of an interrupted attempt at the same
    plan (``plan_of(shard_size, partition_size)`` gives the plan of a choice) where ``settings``
    leave them free, so that a rerun on a cluster of another size resumes it."""
    earlier = _earlier_plan(index, version) if settings.shard_size is None or settings.partitions is None else None
    sizes = _sizes_of(earlier, settings, n_new)
    if sizes is not None and plan_of(*sizes) == earlier:
        return sizes
    shard_size = settings.shard_size or _auto_shard_size(dask, plan)
    n_parts = settings.partitions or max(1, len(dask.nthreads()))
    return shard_size, _partition_size(n_new, n_parts, shard_size)


def _auto_shard_size(dask, plan: SyncPlan) -> int:
    """The shard size of a new index when ``--shard-size`` is not given (:mod:`workflows.sharding`)."""
    threads = sum(dask.nthreads().values())
    file_bytes = mean_file_bytes(plan.fingerprints)
    size = auto_shard_size(len(plan.rows), threads, file_bytes)
    log.info("shard size %d: %d images, %d worker threads%s", size, len(plan.rows), threads,
             f", {file_bytes / 1e6:.2f} MB per file" if file_bytes else "")
    return size


def _earlier_plan(index: IndexLocation, version: int) -> dict | None:
    """The plan of an earlier, interrupted attempt at ``version`` (None if there is none)."""
    try:
        earlier = read_json(index.join(staging_plan_path(version)), index.storage_options)
    except (FileNotFoundError, ValueError):
        return None
    return earlier if isinstance(earlier, dict) else None


def _sizes_of(earlier: dict | None, settings: IndexSettings, n_new: int) -> tuple[int, int] | None:
    """``(shard_size, partition_size)`` of an earlier attempt's plan, where ``settings`` leave
    them to the job (explicit ones must match the plan to resume it, as before)."""
    if earlier is None:
        return None
    shard_size, partition_size = earlier.get("shard_size"), earlier.get("partition_size")
    if not all(isinstance(v, int) and v > 0 for v in (shard_size, partition_size)):
        return None
    shard_size = settings.shard_size or shard_size
    if settings.partitions is not None:
        partition_size = _partition_size(n_new, settings.partitions, shard_size)
    return shard_size, partition_size


def _partition_size(n_new: int, n_parts: int, shard_size: int) -> int:
    """Images per partition of a new index of ``n_new`` images in about ``n_parts`` partitions: a multiple of the shard size."""
    return shard_size * max(1, math.ceil(n_new / n_parts / shard_size))


def _sha(values) -> str:
    return hashlib.sha256("\n".join(map(str, values)).encode()).hexdigest()


# --------------------------------------------------------------------------- encode tasks of the new ids (placement: workflows.placement)


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


def build_partitions(dask, index: "IndexLocation | str", shards: tuple[ShardEntry, ...], n_images: int,
                     partition_size: int) -> tuple[PartitionEntry, ...]:
    """The partitions of version 1 of an index whose ``codes/`` rows and tables were written by
    other means (``benchmarks/bench_scale.py`` writes synthetic codes): base bucket maps of
    ``partition_size`` ids each, built by the index job's own tasks."""
    index = IndexLocation.of(index)
    ranges = place_ids(0, 0, n_images, partition_size)
    report = IndexReport(index.url, None, 0, 0, 0)
    maps = _map_phase(dask, index, ranges, {r.partition: CODES for r in ranges}, shards, 1, set(), report)
    cleanup_staging(index, 1)
    return tuple(PartitionEntry(r.start, r.stop, CODES, maps[r.start]) for r in ranges)


# --------------------------------------------------------------------------- the job


def index(
    corpus: str,
    index_url: "str | IndexLocation",
    model: str | None = None,
    settings: IndexSettings = IndexSettings(),
    cluster: ClusterSettings = ClusterSettings(),
    storage_options: dict | None = None,
    client=None,
    wait_for_lock: float = 0.0,
    gc=None,
) -> IndexReport:
    """Make ``index_url`` (a URL with its ``storage_options``, also those of ``corpus``, or an
    :class:`~storage.location.IndexLocation`) mirror ``corpus``, under the index's lock.

    Creates the index on first use, bound to ``model``; by default the built-in
    ``fashion-mnist`` for a corpus of arrays, ``icons-photos`` for image files
    (:func:`default_model`). Afterwards, for a corpus the index already holds, adds new images,
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
    from workflows.maintenance import locked_run, run_gc

    location = IndexLocation.of(index_url, storage_options)
    with locked_run(location, wait_for_lock, "index", corpus=corpus) as (lock, record):
        report = _index_job(corpus, location, model, settings, cluster, client, lock=lock)
        record.update(status="ok" if report.committed else "no-op", version=report.version if report.committed else None,
                      images_added=report.n_new - report.n_errors_new, errors=report.n_errors_new, **report.counts())
        if gc is not None:
            run_gc(location, gc)
        return report


def _index_job(corpus: str, index: IndexLocation, model: str | None, settings: IndexSettings, cluster: ClusterSettings,
               client, lock) -> IndexReport:
    """The job of :func:`index`, run while holding ``lock`` (verified just before each commit)."""
    from pipeline.modelcard import read_card
    from workflows.maintenance import commit_upgrade

    started = time.perf_counter()
    manifest = _read_manifest_or_none(index)
    if manifest is not None:
        _check_model(index, model)
    source = open_corpus(corpus, index.storage_options)
    listed = time.perf_counter()
    upgraded = False
    if manifest is not None and manifest.format_version == 1:
        manifest = commit_upgrade(index, manifest, lock)
        upgraded = True
    if manifest is None:
        if model is None:
            model = default_model(source.kind)
            log.info("no model given: a corpus of %s gets the built-in %s model (--model chooses another)",
                     "arrays" if model == ARRAY_MODEL else "image files", model)
        install_model(index, model)
    card = read_card(index.join(MODEL_DIR), index.storage_options)
    state = read_state(index, manifest) if manifest else STATE_SCHEMA.empty_table()
    excluded = set(read_excluded(index, manifest)) if manifest else set()
    known = find_source(manifest, source, corpus)
    plan = plan_sync(source, known, len(manifest.sources) if manifest else 0, state, excluded,
                     spec=card.image_spec, append_only=settings.append_only,
                     max_delete_fraction=settings.max_delete_fraction)
    report = IndexReport(index.url, manifest.version if manifest else None, manifest.n_ok if manifest else 0,
                         len(plan.rows), 0, upgraded=upgraded, **plan.counts())
    report.phases.update(listing=listed - started, plan=time.perf_counter() - listed)
    if plan.empty:
        log.info("nothing to change: %s holds the %d images of %s as they are (version %s)",
                 index.url, len(source), corpus, manifest.version if manifest else None)
        if settings.compaction is not None and plan_compaction(manifest, settings.compaction, auto=True):
            # e.g. the run that made these changes was killed while compacting
            with dask_client(cluster, model=index.child(MODEL_DIR)) if client is None else nullcontext(client) as dask:
                _compact(dask, index, manifest, settings, report, lock)
        report.seconds = time.perf_counter() - started
        return report

    # a small job runs in-process; compaction after the commit may rewrite any of the index's images
    size = len(plan.rows) + (manifest.n_images if manifest is not None and settings.compaction is not None else 0)
    with dask_client(cluster, size=size, model=index.child(MODEL_DIR)) if client is None else nullcontext(client) as dask:
        new_manifest = _apply(dask, source, corpus, index, manifest, card, plan, settings, report, lock)
        report.version, report.n_images = new_manifest.version, new_manifest.n_ok
        report.seconds = time.perf_counter() - started
        log.info(
            "committed version %d of %s: %d added, %d removed, %d changed, %d retried (%d unreadable) in %.1f s",
            report.version, index.url, report.added, report.removed, report.changed, report.retried,
            report.n_errors_new, report.seconds,
        )
        if settings.compaction is not None:
            _compact(dask, index, new_manifest, settings, report, lock)
    return report


def _compact(dask, index: IndexLocation, manifest: Manifest, settings: IndexSettings, report: IndexReport, lock) -> None:
    started = time.perf_counter()
    compacted = compact_job(dask, index, manifest, settings.compaction, lock, auto=True)
    report.phases["compact"] = time.perf_counter() - started
    if compacted is not None:
        report.compacted, report.version = compacted.partitions, compacted.version


def _apply(dask, source, corpus: str, index: IndexLocation, manifest: Manifest | None, card, plan: SyncPlan,
           settings: IndexSettings, report: IndexReport, lock) -> Manifest:
    """Encode, build, tombstone and commit the changes of ``plan``; return the committed manifest."""
    n_old = manifest.n_images if manifest else 0
    n_new = n_old + len(plan.rows)
    version = (manifest.version if manifest else 0) + 1
    old_partitions = manifest.partitions if manifest else ()
    uris = plan.listing
    common = {
        "version": version, "corpus": corpus, "model_sha256": card.model_sha256, "n_old": n_old, "n_new": n_new,
        "source": plan.source, "encode_sha256": _sha(f"{uris[r]} {fp}" for r, fp in zip(plan.rows, plan.fingerprints)),
        "dead_sha256": _sha(plan.dead.tolist()),
    }

    def cut(shard_size: int, partition_size: int):
        """The id ranges, encode cuts and plan of these sizes."""
        room = partition_size - (manifest.live_in(old_partitions[-1]) if old_partitions else 0)
        ranges = place_ids(len(old_partitions), n_old, n_new, partition_size, room, chunk=shard_size)
        cuts = encode_cuts(ranges, shard_size)
        return ranges, cuts, {**common, "shard_size": shard_size, "partition_size": partition_size, "cuts": [list(c) for c in cuts]}

    if manifest is not None:
        shard_size, partition_size = manifest.shard_size, manifest.partition_size
        ranges, cuts, plan_doc = cut(shard_size, partition_size)
    else:
        shard_size, partition_size = _new_index_sizes(dask, index, settings, plan, version, n_new, lambda *sizes: cut(*sizes)[2])
        ranges, cuts, plan_doc = cut(shard_size, partition_size)
    done = staging_plan(index, version, plan_doc)
    codes_of = _prepare_codes(index, old_partitions, ranges, card, shard_size, create=manifest is None and not done)
    jobs = _encode_jobs(source, plan, cuts, codes_of, n_old) if len(plan.rows) else []
    new_shards = _encode_phase(dask, index, jobs, plan.source, version, done, report)
    failpoint("index-encoded")
    report.phases["encode"] = report.encode_seconds
    report.n_errors_new = sum(e.n_errors for e in new_shards)
    if settings.strict and report.n_errors_new:
        raise CorpusError(
            f"{report.n_errors_new} unreadable image(s) in {corpus} and --strict is set; nothing was committed. "
            "Fix or remove them (the warnings above name them) and rerun: shards already encoded are kept."
        )
    shards = (manifest.shards if manifest else ()) + tuple(new_shards)
    shards = _adopt_fingerprints(index, shards, plan, version)
    built = time.perf_counter()
    maps = _map_phase(dask, index, ranges, codes_of, shards, version, done, report)
    report.phases["buckets"] = time.perf_counter() - built
    built = time.perf_counter()
    partitions = list(old_partitions)
    for r in ranges:
        if r.new:
            partitions.append(PartitionEntry(r.start, r.stop, codes_of[r.partition], maps[r.start]))
        else:
            p = partitions[r.partition]
            partitions[r.partition] = replace(p, stop=r.stop, deltas=p.deltas + (DeltaEntry(r.start, r.stop, maps[r.start]),))
    partitions = _tombstone(index, partitions, plan, version)
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
    commit_manifest(index, new_manifest)
    cleanup_staging(index, version)
    report.phases["commit"] = time.perf_counter() - built  # tombstones, fingerprints recorded, manifest
    return new_manifest


def _prepare_codes(index: IndexLocation, partitions, ranges: list[IdRange], card, shard_size: int, create: bool) -> dict[int, str]:
    """The codes array of each partition receiving new ids, grown to hold them: a partition's
    own, or for new partitions the index's ``codes/`` array (created with the index, or again
    after compaction moved every partition out of it and gc deleted it). ``create`` replaces
    an array left by an attempt at another plan of a new index."""
    from storage.arrays import create_codes_array, open_array

    codes_of = {r.partition: CODES if r.new else partitions[r.partition].codes for r in ranges}
    rows = {rel: max(r.stop for r in ranges if codes_of[r.partition] == rel) for rel in set(codes_of.values())}
    for rel, n_rows in rows.items():
        url = index.resolve(rel)
        if (create and rel == CODES) or not index.exists(array_metadata_path(rel)):
            create_codes_array(url, n_rows, card.grid, card.code_dtype, shard_size, index.storage_options)
        else:
            array = open_array(url, index.storage_options, mode="r+")
            if array.shape[0] < n_rows:
                array.resize((n_rows, *card.grid))
    return codes_of


def _encode_phase(dask, index: IndexLocation, jobs, source: int, version: int, done: set[str], report: IndexReport) -> list[ShardEntry]:
    """Run the encode tasks of shards without a done-marker; entries of every planned shard."""
    entries: dict[int, ShardEntry] = {}
    todo = []
    for job in jobs:
        marker = shard_done_marker(job[1])
        if marker in done:
            entries[job[1]] = ShardEntry(**read_done_marker(index, version, marker)["entry"])
        else:
            todo.append(job)
    report.shards_skipped = len(entries)
    if entries:
        log.info("resuming: %d of %d shards already done, skipped", len(entries), len(jobs))
    started = time.perf_counter()
    futures = [dask.submit(encode_shard_task, index, codes, shard, id_start, source, fps, version, pure=False)
               for shard, id_start, fps, codes in todo]
    for future in track(futures, total=len(futures), desc="encode", unit="shard"):
        summary = future.result()
        entry = ShardEntry(**summary["entry"])
        write_done_marker(index, version, shard_done_marker(entry.start), summary)
        entries[entry.start] = entry
        report.shards_done += 1
        for err in summary["errors"]:
            log.warning("unreadable image %s: %s", err["uri"], err["reason"])
    report.encode_seconds = time.perf_counter() - started
    return [entries[k] for k in sorted(entries)]


def _map_phase(dask, index: IndexLocation, ranges: list[IdRange], codes_of: dict[int, str], shards, version: int, done: set[str],
               report: IndexReport) -> dict[int, dict[str, MapEntry]]:
    """Both bucket maps of each range of new ids (built, or taken from done-markers), by range start."""
    futures = []
    for r in ranges:
        for layout in MAP_LAYOUTS:
            if map_done_marker(layout, r.start) in done:
                report.partitions_skipped += 1
                continue
            tables = [s for s in shards if s.start < r.stop and s.stop > r.start]
            futures.append(dask.submit(build_map_task, index, codes_of[r.partition], layout, r.start, r.stop, tables, version,
                                       pure=False))
    if report.partitions_skipped:
        log.info("resuming: %d of %d bucket maps already built, skipped", report.partitions_skipped, report.partitions_skipped + len(futures))
    for future in track(futures, total=len(futures), desc="buckets", unit="map"):
        entry = future.result()
        write_done_marker(index, version, map_done_marker(entry["kind"], entry["start"]), entry)
        report.partitions_built += 1
        failpoint("index-partition-built")
    maps: dict[int, dict[str, MapEntry]] = {}
    for r in ranges:
        for layout in MAP_LAYOUTS:
            entry = read_done_marker(index, version, map_done_marker(layout, r.start))
            maps.setdefault(r.start, {})[layout] = MapEntry(entry["path"], entry["stats"])
    return maps


def _tombstone(index: IndexLocation, partitions: list[PartitionEntry], plan: SyncPlan, version: int) -> list[PartitionEntry]:
    """``partitions`` with the ids ``plan`` removes added to their tombstones."""
    out = []
    for p in partitions:
        inside = (plan.dead >= p.start) & (plan.dead < p.stop)
        if inside.any():
            p = replace(p, tombstones=write_tombstones(index, p, plan.dead[inside], plan.dead_readable[inside], version))
        out.append(p)
    return out


def _adopt_fingerprints(index: IndexLocation, shards: tuple[ShardEntry, ...], plan: SyncPlan, version: int) -> tuple[ShardEntry, ...]:
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
        table = read_shard_tables(index, [shard])
        fps = [found.get(i, fp) for i, fp in zip(table.column("image_id").to_pylist(), table.column("fingerprint").to_pylist())]
        table = table.set_column(table.schema.get_field_index("fingerprint"), "fingerprint", pa.array(fps, pa.string()))
        readable = pc.is_null(table.column("reason"))
        out.append(write_shard_tables(index, shard.start, shard.stop, version, table.filter(readable),
                                      table.filter(pc.invert(readable))))
    log.info("recorded the fingerprints of %d images indexed without one (by index format 1)", len(found))
    return tuple(out)

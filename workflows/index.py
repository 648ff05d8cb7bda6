"""``patchhash index``: the bulk indexing job.

corpus -> shards -> (Dask: read, convert, encode, write codes + image table + done-marker)
-> bucket partitions (Dask: one task per partition, from the codes on storage) -> commit.

Every task writes deterministic paths with whole-object writes, so a task that runs twice
rewrites the same bytes, and a rerun after an interruption skips shards whose done-marker
exists. A version becomes visible only when ``manifest.json`` is replaced, last.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage import (
    ConfigError,
    CorpusError,
    IndexNotFoundError,
    ModelMismatchError,
    join_url,
    open_corpus,
    url_to_fs,
)
from storage.atomic import read_json, write_json_atomic
from storage.layout import CODES, MODEL_DIR, partition_path, shard_table_path, staging_dir
from storage.manifest import Manifest, PartitionEntry, ShardEntry, commit_manifest, read_manifest, utc_now
from storage.retry import retry_call
from workflows.cluster import ClusterSettings, dask_client
from workflows.progress import track
from workflows.runtime import failpoint

__all__ = ["IndexSettings", "IndexReport", "index", "PARTITION_KINDS"]

log = logging.getLogger(__name__)

PARTITION_KINDS = ("any", "pos")
IMAGES_SCHEMA = pa.schema([("image_id", pa.int64()), ("uri", pa.string())])
ERRORS_SCHEMA = pa.schema([("image_id", pa.int64()), ("uri", pa.string()), ("reason", pa.string())])


@dataclass(frozen=True)
class IndexSettings:
    """Options of an indexing job, validated up front.

    ``shard_size`` (images per task and per Zarr chunk) and ``partitions`` (number of bucket
    partitions) only apply when the index is created; later appends keep the index's own.
    """

    shard_size: int = 10_000
    partitions: int | None = None
    strict: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.shard_size <= 10_000_000:
            raise ConfigError(f"--shard-size must be between 1 and 10000000, got {self.shard_size}")
        if self.partitions is not None and self.partitions < 1:
            raise ConfigError(f"--partitions must be >= 1, got {self.partitions}")


@dataclass
class IndexReport:
    index: str
    version: int | None
    n_images: int
    n_new: int
    n_errors_new: int
    shards_done: int = 0
    shards_skipped: int = 0
    partitions_built: int = 0
    partitions_skipped: int = 0
    seconds: float = 0.0
    encode_seconds: float = 0.0
    errors: list[dict] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.n_new / self.seconds if self.seconds else 0.0


# --------------------------------------------------------------------------- worker tasks


def encode_shard_task(index_url: str, shard, id_start: int, storage_options: dict | None) -> dict:
    """Read, convert and encode one shard; write its codes rows, tables, then its done-marker."""
    from pipeline.encode import load_encoder
    from storage import ImageSpec
    from storage.arrays import write_rows
    from storage.tables import write_parquet

    started = time.perf_counter()
    encoder = load_encoder(join_url(index_url, MODEL_DIR), storage_options)
    data = shard.read(ImageSpec(*encoder.input_shape))
    n_rows = shard.stop - shard.start
    gh, gw = encoder.card.grid
    codes = np.zeros((n_rows, gh, gw), dtype=encoder.card.code_dtype)
    if len(data.ids):
        codes[data.ids - shard.start] = encoder.encode(data.pixels)
    start, stop = id_start, id_start + n_rows
    write_rows(join_url(index_url, CODES), start, codes, storage_options)
    images = shard_table_path("images", start, stop)
    write_parquet(join_url(index_url, images), {"image_id": data.ids - shard.start + start, "uri": data.uris}, IMAGES_SCHEMA, storage_options)
    errors = None
    if data.errors:
        errors = shard_table_path("errors", start, stop)
        write_parquet(
            join_url(index_url, errors),
            {"image_id": [e.image_id - shard.start + start for e in data.errors], "uri": [e.uri for e in data.errors], "reason": [e.reason for e in data.errors]},
            ERRORS_SCHEMA, storage_options,
        )
    entry = ShardEntry(start, stop, images, errors, int(len(data.ids)), len(data.errors))
    summary = {"entry": entry.__dict__, "seconds": time.perf_counter() - started,
               "errors": [{"uri": e.uri, "reason": e.reason} for e in data.errors[:20]]}
    return summary


def build_partition_task(index_url: str, kind: str, start: int, stop: int, tables: list[str], version: int, storage_options) -> dict:
    """Build the ``kind`` bucket map of image ids ``[start, stop)`` from the stored codes."""
    from pipeline.buckets import build_bucket_map
    from storage.arrays import read_rows, write_array_group
    from storage.tables import read_parquet

    codes = read_rows(join_url(index_url, CODES), start, stop, storage_options)
    ids = np.concatenate(
        [read_parquet(join_url(index_url, t), storage_options, ["image_id"]).column("image_id").to_numpy() for t in tables]
        or [np.empty(0, np.int64)]
    ).astype(np.int64)
    ids = ids[(ids >= start) & (ids < stop)]
    ids.sort()
    flat = codes.reshape(len(codes), -1)[ids - start]
    bmap = build_bucket_map(flat, ids, positional=kind == "pos")
    stats = bmap.stats()
    path = partition_path(kind, start, stop, version)
    arrays = {"keys": bmap.keys, "offsets": bmap.offsets, "ids": bmap.ids, "key_bounds": bmap.key_bounds}
    write_array_group(join_url(index_url, path), arrays, {"kind": kind, "start": start, "stop": stop, "stats": stats}, storage_options)
    return PartitionEntry(kind, start, stop, path, stats).__dict__


# --------------------------------------------------------------------------- planning


def _new_rows(uris: list[str], index_url: str, manifest: Manifest | None, storage_options) -> np.ndarray:
    """Positions of ``uris`` the index holds neither as an image nor as an unreadable one."""
    from storage.tables import read_parquet

    if manifest is None:
        return np.arange(len(uris))
    chunks = [
        chunk
        for s in manifest.shards
        for table in (s.images, s.errors) if table
        for chunk in read_parquet(join_url(index_url, table), storage_options, ["uri"]).column("uri").chunks
    ]
    known = pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())
    seen = pc.is_in(pa.array(uris, pa.string()), value_set=known).to_numpy(zero_copy_only=False)
    return np.flatnonzero(~seen)


def _plan_shards(corpus, rows: np.ndarray, n_old: int, shard_size: int) -> list[tuple[object, int]]:
    """``(corpus shard, first image id)`` pairs for ``rows`` of ``corpus``, chunk-aligned in id space.

    New image ids start at ``n_old``; shard boundaries fall on multiples of ``shard_size`` so
    that no two tasks ever write the same Zarr chunk.
    """
    from storage.corpus import UriListCorpus

    if len(rows) == 0:
        return []
    if rows[-1] - rows[0] + 1 != len(rows):  # not one contiguous run: list just the new uris
        all_uris = corpus.uris()
        corpus = UriListCorpus(f"{corpus.url} (new images)", corpus.storage_options, [all_uris[r] for r in rows])
        rows = np.arange(len(rows))
    first_row = int(rows[0])
    plan: list[tuple[object, int]] = []
    head = (-n_old) % shard_size
    if head:
        shard = corpus.shards(min(head, len(rows)), start=first_row)[0]
        plan.append((shard, n_old))
    next_row = first_row + min(head, len(rows))
    if next_row <= rows[-1]:
        for shard in corpus.shards(shard_size, start=next_row):
            plan.append((shard, n_old + shard.start - first_row))
    return plan


def _partition_ranges(n_old: int, n_new: int, partition_size: int) -> list[tuple[int, int]]:
    """Partitions touched by images ``[n_old, n_new)`` (the others are reused as they are)."""
    first = n_old // partition_size
    last = math.ceil(n_new / partition_size)
    return [(p * partition_size, min((p + 1) * partition_size, n_new)) for p in range(first, last)]


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


def _install_model(index_url: str, model: str | None, storage_options) -> None:
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


def _staging_plan(index_url: str, version: int, plan_doc: dict, storage_options) -> set[str]:
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
) -> IndexReport:
    """Index every image of ``corpus`` that ``index_url`` does not hold yet, under the index's lock.

    Creates the index on first use (bound to ``model``, default the built-in
    ``fashion-mnist``), appends new images afterwards, and is a quick no-op when nothing is
    new. Pass a connected ``client`` to reuse a Dask cluster; otherwise one is started from
    ``cluster``. Returns an :class:`IndexReport`.

    The job runs holding ``<index>/_lock.json`` (:class:`storage.lock.IndexLock`): if another
    run holds it, wait up to ``wait_for_lock`` seconds, then raise ``LockHeldError``. Every run
    that got the lock appends a record to ``<index>/runs/`` (:mod:`storage.runlog`), also when
    nothing was new or the job failed.
    """
    from storage.lock import IndexLock
    from storage.runlog import write_run

    with IndexLock(index_url, storage_options, wait_s=wait_for_lock) as lock:
        started = datetime.now(timezone.utc)
        record = {"status": "failed", "error": "interrupted"}
        try:
            report = _index_job(corpus, index_url, model, settings, cluster, storage_options, client, lock=lock)
            record = {"status": "ok" if report.n_new else "no-op", "error": None, "version": report.version if report.n_new else None,
                      "images_added": report.n_new - report.n_errors_new, "errors": report.n_errors_new}
            return report
        except Exception as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            try:
                write_run(index_url, started, datetime.now(timezone.utc), lock.token, corpus=corpus,
                          storage_options=storage_options, **record)
            except Exception as exc:  # the job's own outcome matters more than its log entry
                log.warning("could not write the run log of %s: %s", index_url, exc)


def _index_job(corpus: str, index_url: str, model: str | None, settings: IndexSettings, cluster: ClusterSettings,
               storage_options: dict | None, client, lock) -> IndexReport:
    """The job of :func:`index`, run while holding ``lock`` (verified just before the commit)."""
    started = time.perf_counter()
    manifest = _read_manifest_or_none(index_url, storage_options)
    if manifest is not None:
        _check_model(index_url, model, storage_options)
    source = open_corpus(corpus, storage_options)
    uris = source.uris()
    rows = _new_rows(uris, index_url, manifest, storage_options)
    n_old = manifest.n_images if manifest else 0
    if len(rows) == 0:
        log.info("nothing new to index: all %d images of %s are already in %s (version %s)", len(uris), corpus, index_url, manifest.version if manifest else None)
        return IndexReport(index_url, manifest.version if manifest else None, n_old, 0, 0, seconds=time.perf_counter() - started)

    from pipeline.modelcard import read_card

    if manifest is None:
        _install_model(index_url, model, storage_options)
    card = read_card(join_url(index_url, MODEL_DIR), storage_options)
    report = IndexReport(index_url, None, n_old + len(rows), len(rows), 0)
    with dask_client(cluster) if client is None else nullcontext(client) as dask:
        if manifest is not None:
            shard_size, partition_size = manifest.shard_size, manifest.partition_size
        else:
            shard_size = settings.shard_size
            n_parts = settings.partitions or max(1, len(dask.nthreads()))
            partition_size = shard_size * max(1, math.ceil(report.n_images / n_parts / shard_size))
        version = (manifest.version if manifest else 0) + 1
        plan = _plan_shards(source, rows, n_old, shard_size)
        plan_doc = {
            "version": version, "corpus": corpus, "model_sha256": card.model_sha256, "n_old": n_old,
            "n_new": report.n_images, "shard_size": shard_size, "partition_size": partition_size,
            "uris_sha256": hashlib.sha256("\n".join(uris[r] for r in rows).encode()).hexdigest(),
            "shards": [[int(s.start), int(s.stop), int(i)] for s, i in plan],
        }
        stage = join_url(index_url, staging_dir(version))
        done = _staging_plan(index_url, version, plan_doc, storage_options)
        _prepare_codes(index_url, manifest is None and not done, report.n_images, card, shard_size, storage_options)
        new_shards = _encode_phase(dask, index_url, plan, done, stage, report, storage_options)
        failpoint("index-encoded")
        report.n_errors_new = sum(e.n_errors for e in new_shards)
        if settings.strict and report.n_errors_new:
            raise CorpusError(
                f"{report.n_errors_new} unreadable image(s) in {corpus} and --strict is set; nothing was committed. "
                "Fix or remove them (the warnings above name them) and rerun: shards already encoded are kept."
            )
        all_shards = (manifest.shards if manifest else ()) + tuple(new_shards)
        ranges = _partition_ranges(n_old, report.n_images, partition_size)
        fresh = _partition_phase(dask, index_url, all_shards, ranges, version, done, stage, report, storage_options)

    rebuilt = {(p.kind, p.start) for p in fresh}
    kept = [p for p in (manifest.partitions if manifest else ()) if (p.kind, p.start) not in rebuilt]
    partitions = tuple(sorted(kept + fresh, key=lambda p: (p.kind, p.start)))
    source_record = {"corpus": corpus, "kind": source.kind, "n_new": len(rows), "n_errors": report.n_errors_new, "version": version, "committed": utc_now()}
    if manifest is None:
        new_manifest = Manifest(
            version=1, model={**card.identity, "path": MODEL_DIR}, bits=card.bits, grid=card.grid, code_dtype=card.code_dtype.name,
            shard_size=shard_size, partition_size=partition_size, n_images=report.n_images, shards=all_shards,
            partitions=partitions, sources=(source_record,), created=utc_now(), parent=None,
        )
    else:
        new_manifest = manifest.next(n_images=report.n_images, shards=all_shards, partitions=partitions, sources=manifest.sources + (source_record,))
    failpoint("index-before-commit")
    if lock is not None:
        lock.verify()
    commit_manifest(index_url, new_manifest, storage_options)
    _cleanup_staging(index_url, version, storage_options)
    report.version = new_manifest.version
    report.seconds = time.perf_counter() - started
    log.info(
        "committed version %d of %s: %d new images (%d unreadable, skipped) in %.1f s (%.0f images/s)",
        report.version, index_url, report.n_new, report.n_errors_new, report.seconds, report.images_per_second,
    )
    return report


def _prepare_codes(index_url: str, create: bool, n_images: int, card, shard_size: int, storage_options) -> None:
    """Create the codes array, or grow it to ``n_images`` rows (old rows are never touched)."""
    from storage.arrays import create_codes_array, open_array

    url = join_url(index_url, CODES)
    if create:
        create_codes_array(url, n_images, card.grid, card.code_dtype, shard_size, storage_options)
        return
    codes = open_array(url, storage_options, mode="r+")
    if codes.shape[0] != n_images:
        codes.resize((n_images, *card.grid))


def _encode_phase(dask, index_url: str, plan, done: set[str], stage: str, report: IndexReport, storage_options) -> list[ShardEntry]:
    """Run the encode tasks of shards without a done-marker; entries of every planned shard."""
    entries: dict[int, ShardEntry] = {}
    todo = []
    for shard, id_start in plan:
        marker = f"{id_start:012d}.done.json"
        if marker in done:
            entries[id_start] = ShardEntry(**read_json(join_url(stage, "done", marker), storage_options)["entry"])
        else:
            todo.append((shard, id_start))
    report.shards_skipped = len(entries)
    if entries:
        log.info("resuming: %d of %d shards already done, skipped", len(entries), len(plan))
    started = time.perf_counter()
    futures = [dask.submit(encode_shard_task, index_url, shard, id_start, storage_options, pure=False) for shard, id_start in todo]
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


def _partition_phase(dask, index_url: str, shards, ranges, version: int, done: set[str], stage: str, report: IndexReport, storage_options) -> list[PartitionEntry]:
    """Build (or take from done-markers) both bucket maps of every partition range."""
    futures = []
    for kind in PARTITION_KINDS:
        for start, stop in ranges:
            if f"{kind}-{start:012d}.done.json" in done:
                report.partitions_skipped += 1
                continue
            tables = [s.images for s in shards if s.start < stop and s.stop > start]
            futures.append(dask.submit(build_partition_task, index_url, kind, start, stop, tables, version, storage_options, pure=False))
    if report.partitions_skipped:
        log.info("resuming: %d of %d bucket partitions already built, skipped", report.partitions_skipped, report.partitions_skipped + len(futures))
    for future in track(futures, total=len(futures), desc="buckets", unit="partition"):
        entry = future.result()
        write_json_atomic(join_url(stage, "done", f"{entry['kind']}-{entry['start']:012d}.done.json"), entry, storage_options)
        report.partitions_built += 1
        failpoint("index-partition-built")
    return [
        PartitionEntry(**read_json(join_url(stage, "done", f"{kind}-{start:012d}.done.json"), storage_options))
        for kind in PARTITION_KINDS for start, _ in ranges
    ]


def _cleanup_staging(index_url: str, version: int, storage_options) -> None:
    fs, path = url_to_fs(join_url(index_url, staging_dir(version)), storage_options)
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass

"""The ``patchhash`` command line: a thin layer over :mod:`workflows`' Python functions."""

from __future__ import annotations

import functools
import json
import logging
import os
import shlex
import sys
from typing import Annotated, Optional

import typer

from workflows.runtime import quiet_tensorflow, setup_logging

quiet_tensorflow()

app = typer.Typer(
    name="patchhash",
    help="Index and search images by per-patch semantic hashing (Keras autoencoder codes, Dask, Zarr, numba).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
log = logging.getLogger("patchhash")

StorageOptions = Annotated[
    Optional[str],
    typer.Option("--storage-options", help='fsspec storage options as JSON, e.g. \'{"anon": true}\'.'),
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]


def _options(raw: str | None) -> dict | None:
    from storage import ConfigError

    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"--storage-options is not valid JSON ({exc}); pass e.g. '{{\"anon\": true}}'") from None
    if not isinstance(value, dict):
        raise ConfigError("--storage-options must be a JSON object")
    return value


def _shape(raw: str | None) -> tuple[int, int, int] | None:
    from storage import ConfigError

    if raw is None:
        return None
    try:
        h, w, c = (int(v) for v in raw.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--input-shape must look like 28x28x1 or 32x32x3, got {raw!r}") from None
    return h, w, c


@app.command()
def train(
    corpus: Annotated[str, typer.Option(help="Images to train on: folder/glob, IDX, .npy, Zarr, or a list of URIs.")],
    out: Annotated[str, typer.Option(help="Model directory to write (any fsspec URL).")],
    preset: Annotated[str, typer.Option(help="Starting geometry: fashion-mnist or cifar.")] = "fashion-mnist",
    bits: Annotated[Optional[int], typer.Option(help="Bits per patch code (8-64).")] = None,
    patch: Annotated[Optional[int], typer.Option(help="Patch (first kernel) size in pixels.")] = None,
    stride: Annotated[Optional[int], typer.Option(help="Patch stride in pixels; sets the code grid.")] = None,
    input_shape: Annotated[Optional[str], typer.Option(help="Model input HxWxC, e.g. 28x28x1.")] = None,
    stem: Annotated[Optional[str], typer.Option(help="Widths of 3x3 convolutions before the patch convolution, e.g. 32,64; 'none' for none.")] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 5,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 128,
    labels: Annotated[Optional[str], typer.Option(help="Labels of the corpus images (IDX1, .npy, or CSV uri,label): label-aware training.")] = None,
    label_weight: Annotated[float, typer.Option(help="Weight of the label loss against the reconstruction loss (with --labels).")] = 3.0,
    shift_weight: Annotated[float, typer.Option(help="Weight of the shift-consistency loss (share of code bits a small shift changes); 0 turns it off.")] = 0.0,
    max_shift: Annotated[float, typer.Option(help="Largest shift in pixels, each direction, for --shift-weight.")] = 2.0,
    sample: Annotated[Optional[int], typer.Option(help="Train on this many images drawn at random (default: all).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (sampling, initialisation, shuffling).")] = 0,
    name: Annotated[Optional[str], typer.Option(help="Model name for the card (default: the preset).")] = None,
    storage_options: StorageOptions = None,
    verbose: Verbose = False,
) -> None:
    """Train an autoencoder on a corpus and save it as a model directory."""
    from workflows.train import train as run_train

    setup_logging(verbose)
    card = run_train(
        corpus, out, preset=preset, bits=bits, patch=patch, stride=stride, input_shape=_shape(input_shape),
        stem=None if stem is None else () if stem.strip().lower() == "none" else _int_list(stem, "--stem"),
        epochs=epochs, batch_size=batch_size, labels=labels, label_weight=label_weight,
        shift_weight=shift_weight, max_shift=max_shift, sample=sample, seed=seed, name=name,
        command=shlex.join(["patchhash", *sys.argv[1:]]), storage_options=_options(storage_options),
    )
    typer.echo(f"saved {card.name} ({card.bits} bits, grid {card.grid[0]}x{card.grid[1]}, final loss {card.training['final_loss']:.4f}) to {out}")


@app.command()
def info(
    model: Annotated[Optional[str], typer.Option(help="Model directory or built-in name (fashion-mnist).")] = None,
    index: Annotated[Optional[str], typer.Option(help="Index URL.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    runs: Annotated[int, typer.Option(help="With --index: show the last N runs of its run log.")] = 5,
    errors: Annotated[bool, typer.Option("--errors", help="With --index: list the unreadable images and why.")] = False,
    storage_options: StorageOptions = None,
) -> None:
    """Describe a model (its card) or an index (counts, versions, bytes, model, buckets, lock, last runs)."""
    from storage import ConfigError
    from workflows.info import describe_index, describe_model, index_errors, render

    if (model is None) == (index is None):
        raise ConfigError("give exactly one of --model or --index")
    opts = _options(storage_options)
    if errors:
        if index is None:
            raise ConfigError("--errors lists the unreadable images of an index: give --index")
        rows = index_errors(index, opts)
        typer.echo(json.dumps(rows, indent=1) if as_json else "\n".join(f"{r['uri']}: {r['reason']}" for r in rows)
                   or f"{index} holds no unreadable image")
        return
    data = describe_model(model, opts) if model is not None else describe_index(index, opts, runs=runs)
    typer.echo(json.dumps(data, indent=1) if as_json else render(data))


# Precedence of every option: command line > environment variable (cluster options) > --config job spec > default.
Scheduler = Annotated[Optional[str], typer.Option(envvar="PATCHHASH_SCHEDULER", help="Address of a running Dask scheduler (tcp://host:8786, or tls://host:8786 with --tls-*); default: start a LocalCluster.")]
Workers = Annotated[Optional[int], typer.Option(envvar="PATCHHASH_WORKERS", help="LocalCluster worker processes (default: one per core).")]
ThreadsPerWorker = Annotated[int, typer.Option(envvar="PATCHHASH_THREADS_PER_WORKER", help="Threads per LocalCluster worker.")]
MemoryLimit = Annotated[str, typer.Option(envvar="PATCHHASH_MEMORY_LIMIT", help="Memory limit per LocalCluster worker (e.g. 4GB, auto).")]
TlsCa = Annotated[Optional[str], typer.Option("--tls-ca", envvar="PATCHHASH_TLS_CA", help="CA certificate (PEM) of a TLS cluster: with --tls-cert and --tls-key, talk TLS with mutual authentication (tls:// --scheduler, or a TLS LocalCluster).")]
TlsCert = Annotated[Optional[str], typer.Option("--tls-cert", envvar="PATCHHASH_TLS_CERT", help="This client's certificate (PEM), signed by the cluster's CA.")]
TlsKey = Annotated[Optional[str], typer.Option("--tls-key", envvar="PATCHHASH_TLS_KEY", help="The private key (PEM) of --tls-cert.")]
WaitForLock = Annotated[float, typer.Option(envvar="PATCHHASH_WAIT_FOR_LOCK", help="If another run holds the index's lock, wait up to this many seconds for it (0: exit at once).")]
KeepVersions = Annotated[int, typer.Option(help="gc: keep this many newest versions (and every version current less than --min-age ago).")]
MinAge = Annotated[str, typer.Option(help="gc: keep versions and objects that were in use less than this long ago (e.g. 24h, 90m, 7d): a query job that started on an older version can finish.")]
Config = Annotated[Optional[str], typer.Option("--config", help="YAML job spec with any of this command's options (see workflows/jobs/); options given on the command line or by environment variable override it.")]
Shortlist = Annotated[Optional[int], typer.Option(help="Default mode: images re-ranked per query and partition [default: 400, or 0.2% of a partition above 200,000 images].")]
MaxBucketFraction = Annotated[Optional[float], typer.Option(help="Default mode: skip codes shared by more than this fraction of a partition's images [default: 0.1].")]
MaxBucket = Annotated[Optional[int], typer.Option(help="Default mode: skip codes shared by more than this many images of a partition [default: 300].")]
VoteBudget = Annotated[Optional[int], typer.Option(help="Default mode: per query and partition, use the largest radius <= t whose matching buckets hold at most this many entries in all (an image counts once per matching position) [default: 100000].")]


def _cluster(
    scheduler: str | None, workers: int | None, threads_per_worker: int, memory_limit: str | None,
    tls_ca: str | None = None, tls_cert: str | None = None, tls_key: str | None = None,
):
    """The cluster options every Dask command shares, as ``ClusterSettings``."""
    from workflows.cluster import ClusterSettings

    return ClusterSettings(scheduler=scheduler, workers=workers, threads_per_worker=threads_per_worker, memory_limit=memory_limit,
                           tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key)


def _with_job_spec(command: str, required: tuple[str, ...]):
    """Decorate a command so that its ``--config`` job spec fills the options not given.

    An option keeps its value if it came from the command line or its environment variable
    (``click``'s parameter source); otherwise the job spec's value, if any, replaces the
    default. ``required`` options must then be set by one or the other. The command takes a
    ``ctx: typer.Context`` first parameter for this.
    """
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(**params):
            from storage import ConfigError
            from workflows.jobspec import load_job_spec

            ctx: typer.Context = params["ctx"]
            if params.get("config"):
                spec = load_job_spec(params["config"], command)
                explicit = {"COMMANDLINE", "ENVIRONMENT"}
                params.update({k: v for k, v in spec.values.items() if getattr(ctx.get_parameter_source(k), "name", None) not in explicit})
            missing = [name for name in required if params.get(name) is None]
            if missing:
                raise ConfigError(
                    f"`patchhash {command}` needs " + ", ".join(f"--{m.replace('_', '-')}" for m in missing)
                    + ": give each on the command line or as a key of a --config job spec (e.g. `" + missing[0] + ": ...`)"
                )
            return fn(**params)
        return wrapper
    return decorate


def _given(**options) -> dict:
    """The options given on the command line (not None): the settings' defaults fill the rest."""
    return {k: v for k, v in options.items() if v is not None}


@app.command()
@_with_job_spec("index", required=("corpus", "index"))
def index(
    ctx: typer.Context,
    corpus: Annotated[Optional[str], typer.Option(help="Images to index: folder/glob, IDX, .npy, Zarr, or a list of URIs. [required]")] = None,
    index: Annotated[Optional[str], typer.Option("--index", help="Index URL (created if absent, appended to otherwise). [required]")] = None,
    model: Annotated[Optional[str], typer.Option(help="Model directory or built-in name; default: the index's own, or fashion-mnist for a new index.")] = None,
    scheduler: Scheduler = None,
    workers: Workers = None,
    threads_per_worker: ThreadsPerWorker = 1,
    memory_limit: MemoryLimit = "auto",
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    shard_size: Annotated[int, typer.Option(help="Images per task and per Zarr chunk (new index only).")] = 10_000,
    partitions: Annotated[Optional[int], typer.Option(help="Bucket-map partitions (new index only; default: one per worker).")] = None,
    strict: Annotated[bool, typer.Option(help="Fail before commit if any image cannot be read.")] = False,
    append_only: Annotated[bool, typer.Option(help="Only add images not in the index yet: do not remove unlisted ones, re-encode changed files or retry unreadable ones.")] = False,
    max_delete_fraction: Annotated[float, typer.Option(help="Refuse (before writing anything) a sync that would remove more than this fraction of the corpus's indexed images: a short listing must not empty the index. 1 allows any.")] = 0.2,
    compact: Annotated[bool, typer.Option(help="Compact partitions that pass the fragmentation thresholds after the commit (--no-compact: leave it to `patchhash compact`).")] = True,
    gc: Annotated[bool, typer.Option(help="After a successful run, delete what no kept version references (as `patchhash gc` with --keep-versions and --min-age).")] = False,
    keep_versions: KeepVersions = 1,
    min_age: MinAge = "24h",
    wait_for_lock: WaitForLock = 0.0,
    config: Config = None,
    storage_options: StorageOptions = None,
    verbose: Verbose = False,
) -> None:
    """Make an index mirror a corpus: create it, or add new images, remove deleted ones, encode changed files again and retry unreadable ones (resumable, under the index's lock)."""
    from workflows.index import IndexSettings, index as run_index
    from workflows.maintenance import GcSettings

    setup_logging(verbose)
    report = run_index(
        corpus, index, model,
        IndexSettings(shard_size=shard_size, partitions=partitions, strict=strict, append_only=append_only,
                      max_delete_fraction=max_delete_fraction, **({} if compact else {"compaction": None})),
        _cluster(scheduler, workers, threads_per_worker, memory_limit, tls_ca, tls_cert, tls_key),
        _options(storage_options), wait_for_lock=wait_for_lock,
        gc=GcSettings(keep_versions, min_age) if gc else None,
    )
    if not report.committed:
        typer.echo(f"nothing new: {index} already mirrors {corpus} ({report.n_images} images, version {report.version})")
        return
    typer.echo(
        f"indexed {report.n_new - report.n_errors_new} new images into {index} (version {report.version}, "
        f"{report.n_images} images): {report.added} added, {report.removed} removed, {report.changed} changed, "
        f"{report.retried} retried, in {report.seconds:.1f} s, {report.images_per_second:.0f} images/s"
        + (" (upgraded from index format 1)" if report.upgraded else "")
        + (f"; compacted {report.compacted} partition(s)" if report.compacted else "")
    )
    if report.shards_skipped or report.partitions_skipped:
        typer.echo(f"resumed an interrupted run: {report.shards_skipped} shard(s) and {report.partitions_skipped} bucket partition(s) were already done")
    if report.n_errors_new:
        typer.echo(f"skipped {report.n_errors_new} unreadable image(s); see `patchhash info --index {index} --errors`", err=True)


@app.command()
def delete(
    index: Annotated[str, typer.Option("--index", help="Index URL.")],
    uris: Annotated[str, typer.Option(help="The uris to remove: a .txt (one per line), .csv or .parquet list.")],
    keep_out: Annotated[bool, typer.Option(help="Keep the uris out of later syncs while their files still exist (--no-keep-out: let syncs add them back).")] = True,
    wait_for_lock: WaitForLock = 0.0,
    storage_options: StorageOptions = None,
    verbose: Verbose = False,
) -> None:
    """Remove images from an index by uri: no query returns them from the next version on."""
    from workflows.maintenance import delete as run_delete

    setup_logging(verbose)
    report = run_delete(index, uris, _options(storage_options), wait_for_lock=wait_for_lock, keep_out=keep_out)
    if report.version is None:
        typer.echo(f"nothing to delete: none of the uris of {uris} is in {index}")
        return
    typer.echo(f"deleted {report.deleted} images from {index} (version {report.version}); "
               f"{report.not_found} uris were not in it; {report.excluded} uris kept out of syncs")


@app.command()
def compact(
    index: Annotated[str, typer.Option("--index", help="Index URL.")],
    all_partitions: Annotated[bool, typer.Option("--all", help="Compact every partition holding deleted images or deltas, not only those past the thresholds.")] = False,
    max_garbage: Annotated[float, typer.Option(help="A partition is due when its deleted images exceed this fraction of its live ones.")] = 0.2,
    max_deltas: Annotated[int, typer.Option(help="A partition is due when it has more delta maps than this.")] = 8,
    scheduler: Scheduler = None,
    workers: Workers = None,
    threads_per_worker: ThreadsPerWorker = 1,
    memory_limit: MemoryLimit = "auto",
    wait_for_lock: WaitForLock = 0.0,
    storage_options: StorageOptions = None,
    verbose: Verbose = False,
) -> None:
    """Rewrite fragmented partitions: drop deleted images from the bucket maps, fold deltas in, merge small neighbours."""
    from workflows.compact import CompactionPolicy
    from workflows.maintenance import compact as run_compact

    setup_logging(verbose)
    result = run_compact(index, CompactionPolicy(max_garbage=max_garbage, max_deltas=max_deltas), force=all_partitions,
                         cluster=_cluster(scheduler, workers, threads_per_worker, memory_limit),
                         storage_options=_options(storage_options), wait_for_lock=wait_for_lock)
    if result is None:
        typer.echo(f"nothing to compact in {index}")
        return
    typer.echo(f"compacted {result.partitions} partition(s) of {index} ({result.images} live images rewritten; version {result.version})")


@app.command()
def gc(
    index: Annotated[str, typer.Option("--index", help="Index URL.")],
    keep_versions: KeepVersions = 1,
    min_age: MinAge = "24h",
    dry_run: Annotated[bool, typer.Option(help="Only list what would be deleted, and its bytes.")] = False,
    wait_for_lock: WaitForLock = 0.0,
    storage_options: StorageOptions = None,
    verbose: Verbose = False,
) -> None:
    """Delete the versions and objects no kept version references (under the index's lock)."""
    from workflows.maintenance import GcSettings, gc as run_gc

    setup_logging(verbose)
    settings = GcSettings(keep_versions, min_age, dry_run)
    plan = run_gc(index, settings, _options(storage_options), wait_for_lock=wait_for_lock)
    if dry_run:
        for rel, size in plan.garbage:
            typer.echo(f"{size:>12} {rel}")
        for version in plan.dropped:
            typer.echo(f"{'':>12} versions/v{version:06d}.json")
    verb = "would delete" if dry_run else "deleted"
    typer.echo(f"{verb} {len(plan.dropped)} version(s) and {len(plan.garbage)} object(s), {plan.garbage_bytes:,} bytes; "
               f"kept versions {', '.join(map(str, plan.kept))} and {len(plan.young)} unreferenced object(s) younger than --min-age")


@app.command()
def upgrade(
    index: Annotated[str, typer.Option("--index", help="Index URL.")],
    wait_for_lock: WaitForLock = 0.0,
    storage_options: StorageOptions = None,
    verbose: Verbose = False,
) -> None:
    """Upgrade an index of format 1 to format 2 in place (atomically; the first sync does it too)."""
    from workflows.maintenance import upgrade as run_upgrade

    setup_logging(verbose)
    version = run_upgrade(index, _options(storage_options), wait_for_lock=wait_for_lock)
    typer.echo(f"{index} is format 2 already" if version is None else f"upgraded {index} to index format 2 (version {version})")


@app.command()
@_with_job_spec("query", required=("index", "queries", "out"))
def query(
    ctx: typer.Context,
    index: Annotated[Optional[str], typer.Option("--index", help="Index URL. [required]")] = None,
    queries: Annotated[Optional[str], typer.Option(help="Query images: folder/glob, IDX, .npy, Zarr, or a list of URIs. [required]")] = None,
    out: Annotated[Optional[str], typer.Option(help="Results file (Parquet by default; .csv / .jsonl by extension or --format), or a folder ending in / for a partitioned Parquet dataset that resumes when rerun. [required]")] = None,
    k: Annotated[int, typer.Option(help="Hits per query.")] = 10,
    threshold: Annotated[Optional[int], typer.Option(help="Hamming radius t for matching codes (default: 3).")] = None,
    mode: Annotated[str, typer.Option(help="Scoring: default (positional shortlist, re-ranked by whole-grid Hamming distance), or seed (seed 000's rule exactly).")] = "default",
    shortlist: Shortlist = None,
    max_bucket_fraction: MaxBucketFraction = None,
    max_bucket: MaxBucket = None,
    vote_budget: VoteBudget = None,
    shift_radius: Annotated[float, typer.Option(help="Default mode: also search each query shifted by up to this many pixels ((2r/s+1)^2 times the work; r/s <= 4).")] = 0,
    shift_step: Annotated[float, typer.Option(help="Default mode: the shifts' step s in pixels, 1 or less (0.5 for copies of larger images).")] = 1,
    format: Annotated[Optional[str], typer.Option("--format", help="parquet, csv, jsonl, or dataset (a folder of Parquet parts, one per block; a rerun resumes).")] = None,
    report: Annotated[Optional[str], typer.Option(help="Also write a self-contained HTML report here.")] = None,
    report_limit: Annotated[int, typer.Option(help="Queries shown in the report.")] = 50,
    block_size: Annotated[int, typer.Option(help="Queries per task.")] = 1000,
    strict: Annotated[bool, typer.Option(help="Exit non-zero if any query cannot be read.")] = False,
    scheduler: Scheduler = None,
    workers: Workers = None,
    threads_per_worker: ThreadsPerWorker = 1,
    memory_limit: MemoryLimit = "auto",
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    config: Config = None,
    storage_options: StorageOptions = None,
    verbose: Verbose = False,
) -> None:
    """Answer a batch query file against an index (results as Parquet/CSV/JSONL)."""
    from workflows.query import QuerySettings
    from workflows.query import query as run_query

    setup_logging(verbose)
    result = run_query(
        index, queries, out,
        QuerySettings(k=k, threshold=threshold, mode=mode, shift_radius=shift_radius, shift_step=shift_step, block_size=block_size, strict=strict,
                      format=format, **_given(shortlist=shortlist, max_bucket_fraction=max_bucket_fraction, max_bucket=max_bucket, vote_budget=vote_budget)),
        _cluster(scheduler, workers, threads_per_worker, memory_limit, tls_ca, tls_cert, tls_key),
        _options(storage_options), report=report, report_limit=report_limit,
    )
    typer.echo(
        f"answered {result.n_queries - result.n_failed} queries against {index} (version {result.version}) in "
        f"{result.seconds:.1f} s ({result.ms_per_query:.2f} ms/query): {result.rows} rows in {out}"
    )
    if result.blocks_skipped:
        typer.echo(f"resumed an interrupted run: {result.blocks_skipped} block(s) were already answered")
    if result.n_failed:
        typer.echo(f"{result.n_failed} query row(s) could not be read; they have an error row in {out}", err=True)


def _int_list(raw: str | None, option: str) -> tuple[int, ...]:
    from storage import ConfigError

    if raw is None or not raw.strip():
        return ()
    try:
        return tuple(int(v) for v in raw.split(","))
    except ValueError:
        raise ConfigError(f"{option} takes integers separated by commas (e.g. 1,10,100), got {raw!r}") from None


def _name_list(raw: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in raw.split(",") if v.strip() and v.strip() != "none")


@app.command()
@_with_job_spec("evaluate", required=("index", "queries", "labels"))
def evaluate(
    ctx: typer.Context,
    index: Annotated[Optional[str], typer.Option("--index", help="Index URL. [required]")] = None,
    queries: Annotated[Optional[str], typer.Option(help="Labelled query images: folder/glob, IDX, .npy, Zarr, or a list of URIs. [required]")] = None,
    labels: Annotated[Optional[str], typer.Option(help="Labels of the indexed images: IDX1 or .npy (by image id), or CSV uri,label. [required]")] = None,
    query_labels: Annotated[Optional[str], typer.Option(help="Labels of the queries (default: --labels).")] = None,
    k: Annotated[str, typer.Option("--k", help="Ranks for precision@k, comma-separated.")] = "1,10,100",
    modes: Annotated[str, typer.Option(help="Query modes to measure (seed, default), comma-separated; 'none' for none.")] = "seed,default",
    baselines: Annotated[str, typer.Option(help="Pixel baselines: pixel-knn, lsh-B (B random hyperplanes), comma-separated; 'none' for none.")] = "pixel-knn,lsh-64,lsh-256",
    thresholds: Annotated[Optional[str], typer.Option(help="Run each mode at each of these thresholds t (default: the mode's own).")] = None,
    shortlist: Shortlist = None,
    max_bucket_fraction: MaxBucketFraction = None,
    max_bucket: MaxBucket = None,
    vote_budget: VoteBudget = None,
    limit: Annotated[Optional[int], typer.Option(help="Evaluate the first N queries only.")] = None,
    out: Annotated[Optional[str], typer.Option(help="Write the figures as JSON here.")] = None,
    plot: Annotated[Optional[str], typer.Option(help="Draw precision@k curves and precision@10 against t into this PNG.")] = None,
    scheduler: Scheduler = None,
    workers: Workers = None,
    threads_per_worker: ThreadsPerWorker = 1,
    memory_limit: MemoryLimit = "auto",
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    config: Config = None,
    storage_options: StorageOptions = None,
    verbose: Verbose = False,
) -> None:
    """Precision@k, mAP@100, candidates and ms/query of the query modes and pixel baselines on labelled queries."""
    from workflows.evaluate import EvaluateSettings, render_table
    from workflows.evaluate import evaluate as run_evaluate

    setup_logging(verbose)
    settings = EvaluateSettings(
        ks=_int_list(k, "--k"), modes=_name_list(modes), baselines=_name_list(baselines),
        thresholds=_int_list(thresholds, "--thresholds"), limit=limit,
        **_given(shortlist=shortlist, max_bucket_fraction=max_bucket_fraction, max_bucket=max_bucket, vote_budget=vote_budget),
    )
    result = run_evaluate(
        index, queries, labels, query_labels, settings,
        _cluster(scheduler, workers, threads_per_worker, memory_limit, tls_ca, tls_cert, tls_key),
        _options(storage_options), out=out, plot=plot,
    )
    typer.echo(render_table(result))


@app.command()
@_with_job_spec("bench", required=("index", "queries"))
def bench(
    ctx: typer.Context,
    index: Annotated[Optional[str], typer.Option("--index", help="Index URL. [required]")] = None,
    queries: Annotated[Optional[str], typer.Option(help="Query images: folder/glob, IDX, .npy, Zarr, or a list of URIs. [required]")] = None,
    modes: Annotated[str, typer.Option(help="Query modes to time (default, seed), comma-separated.")] = "default,seed",
    repeats: Annotated[int, typer.Option(help="Timed query jobs per mode (the median is reported).")] = 3,
    limit: Annotated[Optional[int], typer.Option(help="Use the first N queries only.")] = None,
    block_size: Annotated[int, typer.Option(help="Queries per task, as in patchhash query.")] = 1000,
    out: Annotated[Optional[str], typer.Option(help="Write the figures as JSON here.")] = None,
    scheduler: Scheduler = None,
    workers: Workers = None,
    threads_per_worker: ThreadsPerWorker = 1,
    memory_limit: MemoryLimit = "auto",
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    config: Config = None,
    storage_options: StorageOptions = None,
    verbose: Verbose = False,
) -> None:
    """Queries/s of each mode and peak memory per worker, on this cluster: for sizing a deployment."""
    from workflows.bench import BenchSettings
    from workflows.bench import bench as run_bench

    setup_logging(verbose)
    result = run_bench(
        index, queries, BenchSettings(modes=_name_list(modes), repeats=repeats, limit=limit, block_size=block_size),
        _cluster(scheduler, workers, threads_per_worker, memory_limit, tls_ca, tls_cert, tls_key), _options(storage_options), out=out,
    )
    typer.echo(result.render())


@app.command()
def demo(
    out: Annotated[str, typer.Option(help="Folder for the index, results and report.")] = "patchhash-demo",
    mode: Annotated[str, typer.Option(help="Scoring mode: default or seed.")] = "default",
    workers: Workers = None,
    verbose: Verbose = False,
) -> None:
    """The embedded default end to end: index Fashion-MNIST, query it, report precision."""
    from workflows.cluster import ClusterSettings
    from workflows.demo import demo as run_demo

    setup_logging(verbose)
    result = run_demo(out, ClusterSettings(workers=workers), mode=mode)
    typer.echo(
        f"\nFashion-MNIST demo ({mode} mode)\n"
        f"  index   {result.n_index} train images in {result.index_seconds:.1f} s\n"
        f"  query   {result.n_queries} test images in {result.query_seconds:.1f} s ({result.ms_per_query:.2f} ms/query)\n"
        f"  precision@10 by label: {result.precision_at_10:.3f}\n"
        f"  results {result.results}\n  report  {result.report}"
    )


def main() -> None:  # noqa: D103
    """Console entry point: one clear line on stderr and a non-zero exit for any failure."""
    from storage import PatchhashError

    try:
        app()
    except PatchhashError as exc:
        typer.echo(f"patchhash: error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("patchhash: interrupted; rerun the same command to resume.", err=True)
        sys.exit(130)
    except Exception as exc:  # anything unexpected still ends with one line (traceback on request)
        if os.environ.get("PATCHHASH_TRACEBACK"):
            raise
        typer.echo(f"patchhash: error: {type(exc).__name__}: {exc} (set PATCHHASH_TRACEBACK=1 for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()

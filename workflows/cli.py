"""The ``patchhash`` command line: a thin layer over :mod:`workflows`' Python functions.

Every option is declared once (:mod:`workflows.options`): a job's options on its settings
dataclass (``IndexSettings``, ``QuerySettings``, ``ClusterSettings``...), the others in the
table below or, for an option of one command alone, at that command. ``@options`` makes the
typer options of a command from the declarations it names, and hands the command the settings
built from them; a command with ``config`` reads a job spec too (:mod:`workflows.jobspec`),
whose keys are the same declarations.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Annotated, Any, Optional

import typer

from workflows.bench import BenchSettings
from workflows.cluster import ClusterSettings
from workflows.compact import CompactionPolicy
from workflows.evaluate import EvaluateSettings
from workflows.index import IndexSettings
from workflows.logformat import MonitorSettings, error_line
from workflows.maintenance import GcSettings
from workflows.metrics import command_metrics
from workflows.options import Option, options_of
from workflows.query import QuerySettings
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


# --------------------------------------------------------------------------- from declarations to typer options

JOB_SPECS: dict[str, Mapping[str, Option]] = {}
"""The keys of each command's ``--config`` job spec: its options but ``config`` (filled by :func:`options`)."""


@dataclass(frozen=True)
class Group:
    """The options a settings class declares (only ``fields``, if given): a command that takes
    them receives the settings built from them."""

    cls: type
    fields: tuple[str, ...] = ()

    @property
    def options(self) -> tuple[Option, ...]:
        return options_of(self.cls, *self.fields)

    def build(self, values: Mapping[str, Any]) -> Any:
        return self.cls(**{o.field: _settings_value(o, values[o.name]) for o in self.options})


def pick(cls: type, *fields: str) -> Group:
    """Some of the options of a settings class (the other fields keep their defaults)."""
    return Group(cls, fields)


def options(**declared: Option | Group | type):
    """Give a command the options ``declared`` for its parameters of the same names.

    A parameter is an option (an :class:`~workflows.options.Option`) or a settings class, or
    :func:`pick` of some of its fields: its options stand in its place, and the command
    receives the settings built from them. Parameters not named in ``declared`` are plain
    typer options, of that command alone. The options come in ``--help`` in the order of the
    command's parameters.

    A command that takes ``config`` reads that ``--config`` job spec (:mod:`workflows.jobspec`):
    its keys are the command's other options; its values fill the options that were not
    given on the command line or by environment variable. A ``required`` option must then
    come from one or the other. Every option of such a command is declared here.
    """

    def decorate(fn):
        signature = inspect.signature(fn, eval_str=True)
        unknown = set(declared) - set(signature.parameters)
        if unknown:
            raise TypeError(f"{fn.__name__} has no parameter {', '.join(sorted(unknown))}")
        takes_spec = "config" in declared
        groups = {name: d if isinstance(d, Group) else Group(d) for name, d in declared.items() if not isinstance(d, Option)}
        found: list[Option] = []  # the declared options, in order
        params = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)] if takes_spec else []
        for param in signature.parameters.values():
            if param.name not in declared:
                if takes_spec:
                    raise TypeError(f"{fn.__name__} reads a job spec: declare its option {param.name!r} in @options")
                params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))
                continue
            these = groups[param.name].options if param.name in groups else (declared[param.name].named(param.name),)
            found += these
            params += [_parameter(o, takes_spec) for o in these]
        if takes_spec:
            JOB_SPECS[fn.__name__] = MappingProxyType({o.name: o for o in found if o.job_spec})

        @functools.wraps(fn)
        def command(**values):
            if takes_spec:
                values = _with_job_spec(fn.__name__, values.pop("ctx"), values, found)
            return fn(**{name: groups[name].build(values) if name in groups else values[name] for name in signature.parameters})

        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


_PYTHON_TYPES = {"int": int, "float": float, "bool": bool}


def _parameter(opt: Option, takes_spec: bool) -> inspect.Parameter:
    """The typer option of ``opt``: lists as comma-separated text; a required option of a
    command with a job spec is optional to typer (the spec may give it)."""
    default = (",".join(map(str, opt.default)) or None) if opt.type in ("ints", "names") else opt.default
    help = opt.help
    if opt.required:
        default, help = (None, f"{help} [required]") if takes_spec else (..., help)
    python_type = _PYTHON_TYPES.get(opt.type, str)
    info = typer.Option(default, *opt.flags, help=help, envvar=opt.envvar, show_default=opt.show_default)
    return inspect.Parameter(opt.name, inspect.Parameter.KEYWORD_ONLY, default=info,
                             annotation=Optional[python_type] if default is None else python_type)


def _settings_value(opt: Option, raw: Any) -> Any:
    """A command-line value in its settings field's form: a tuple for a list option."""
    if opt.type == "ints":
        return _int_list(raw, opt.flag)
    if opt.type == "names":
        return _name_list(raw or "")
    return raw


def _with_job_spec(command: str, ctx: typer.Context, values: dict, declared: list[Option]) -> dict:
    """``values`` with those of the ``--config`` job spec for the options that did not come
    from the command line or an environment variable (``click``'s parameter source)."""
    from storage import ConfigError
    from workflows.jobspec import load_job_spec

    if values.get("config"):
        spec = load_job_spec(values["config"], command)
        explicit = {"COMMANDLINE", "ENVIRONMENT"}
        values.update({k: v for k, v in spec.values.items() if getattr(ctx.get_parameter_source(k), "name", None) not in explicit})
    missing = [o.name for o in declared if o.required and values.get(o.name) is None]
    if missing:
        raise ConfigError(
            f"`patchhash {command}` needs " + ", ".join(f"--{m.replace('_', '-')}" for m in missing)
            + ": give each on the command line or as a key of a --config job spec (e.g. `" + missing[0] + ": ...`)"
        )
    return values


def _storage_options(raw: str | None) -> dict | None:
    """The ``--storage-options`` JSON as a dict (None when not given)."""
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


# --------------------------------------------------------------------------- options that are no job's settings
# Declared once here, named by the commands that take them. Precedence of every option:
# command line > environment variable > --config job spec > default.

INDEX = Option(None, "Index URL.", type="path", required=True, example="s3://bucket/index")
QUERIES = Option(None, "Query images: folder/glob, IDX, .npy, Zarr, or a list of URIs.", type="path", required=True,
                 example="queries.npy")
FIGURES = Option(None, "Write the figures as JSON here.", type="path")
WAIT_FOR_LOCK = Option(0.0, "If another run holds the index's lock, wait up to this many seconds for it (0: exit at once).",
                       envvar="PATCHHASH_WAIT_FOR_LOCK", minimum=0, example="600")
CONFIG = Option(None, "YAML job spec with any of this command's options (see workflows/jobs/); options given on the command "
                "line or by environment variable override it.", type="str", job_spec=False)
STORAGE_OPTIONS = Option(None, 'fsspec storage options as JSON, e.g. \'{"anon": true}\'.', type="mapping",
                         example="{anon: true}")
VERBOSE = Option(False, "Debug logging.", flags=("--verbose", "-v"), example="true")

LOGS = pick(MonitorSettings, "log_format", "progress_interval")
"""``--log-format`` and ``--progress-interval``: the log lines of a command (:mod:`workflows.logformat`)."""

JOB = dict(cluster=ClusterSettings, monitor=MonitorSettings, config=CONFIG, storage_options=STORAGE_OPTIONS, verbose=VERBOSE)
"""The options every Dask job with a job spec ends with: where it runs (scheduler or LocalCluster,
TLS, small jobs in this process), its log lines and metrics file, the job spec, storage options and logging."""

MEASURING_JOB = {**JOB, "monitor": LOGS, "cluster": pick(ClusterSettings, *(o.field for o in options_of(ClusterSettings)
                                                                          if o.field != "in_process_max"))}
"""The options of the jobs that measure the cluster they run on (``evaluate``, ``bench``): those of
:data:`JOB` but ``--in-process-max`` and ``--metrics-file``; they always run where the cluster options say."""


# --------------------------------------------------------------------------- commands


@app.command()
@options(storage_options=STORAGE_OPTIONS, monitor=LOGS, verbose=VERBOSE)
def train(
    *,
    corpus: Annotated[str, typer.Option(help="Images to train on: folder/glob, IDX, .npy, Zarr, or a list of URIs.")],
    out: Annotated[str, typer.Option(help="Model directory to write (any fsspec URL).")],
    preset: Annotated[str, typer.Option(help="Starting geometry: fashion-mnist, cifar (seed 000's network) or seed-001 (seed 001's dense autoencoder, one 17-bit code per image).")] = "fashion-mnist",
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
    brightness_weight: Annotated[float, typer.Option(help="Weight of the brightness-consistency loss (share of code bits a brightness change "
                                                          "changes); 0 turns it off.")] = 0.0,
    max_brightness: Annotated[float, typer.Option(help="Largest brightness change for --brightness-weight, as a share (0.3: x0.7 to x1.3).")] = 0.3,
    background: Annotated[str, typer.Option(help="black: a plain background at the image's border becomes black (a transparent image then "
                                                 "matches its copy flattened onto any colour); black-luma: the same, judged by the image's "
                                                 "luma (grey copies then match too); black-luma-edge: the same, where the background "
                                                 "meets the picture at an edge (textures keep theirs); keep: as is. Recorded in the card.")] = "black",
    centre: Annotated[str, typer.Option(help="mass: each image is moved so that the median of its brightness is at its centre (moved "
                                             "copies then match); box: so that the bounding box of what is not black is centred "
                                             "(the placement of Fashion-MNIST-like datasets); none: as is. Recorded in the card.")] = "none",
    mirror: Annotated[str, typer.Option(help="mean: each image is flipped left-right where the mean of its brightness lies right of its "
                                             "centre (mirrored copies then match); none: as is. Recorded in the card.")] = "none",
    levels: Annotated[str, typer.Option(help="stretch: each image's levels are scaled so that its brightest lit pixels are white "
                                             "(brighter and darker copies then match); none: as is. Recorded in the card.")] = "none",
    sample: Annotated[Optional[int], typer.Option(help="Train on this many images drawn at random (default: all).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (sampling, initialisation, shuffling).")] = 0,
    name: Annotated[Optional[str], typer.Option(help="Model name for the card (default: the preset).")] = None,
    storage_options,
    monitor: MonitorSettings,
    verbose,
) -> None:
    """Train an autoencoder on a corpus and save it as a model directory."""
    from workflows.train import train as run_train

    setup_logging(verbose, monitor, "train")
    card = run_train(
        corpus, out, preset=preset, bits=bits, patch=patch, stride=stride, input_shape=_shape(input_shape),
        stem=None if stem is None else () if stem.strip().lower() == "none" else _int_list(stem, "--stem"),
        epochs=epochs, batch_size=batch_size, labels=labels, label_weight=label_weight,
        shift_weight=shift_weight, max_shift=max_shift, brightness_weight=brightness_weight, max_brightness=max_brightness,
        background=background, centre=centre, mirror=mirror, levels=levels, sample=sample, seed=seed, name=name,
        command=shlex.join(["patchhash", *sys.argv[1:]]), storage_options=_storage_options(storage_options),
    )
    typer.echo(f"saved {card.name} ({card.bits} bits, grid {card.grid[0]}x{card.grid[1]}, final loss {card.training['final_loss']:.4f}) to {out}")


@app.command()
@options(index=replace(INDEX, required=False), storage_options=STORAGE_OPTIONS)
def info(
    *,
    model: Annotated[Optional[str], typer.Option(help="Model directory or built-in name (fashion-mnist, icons-photos).")] = None,
    index,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    runs: Annotated[int, typer.Option(help="With --index: show the last N runs of its run log.")] = 5,
    errors: Annotated[bool, typer.Option("--errors", help="With --index: list the unreadable images and why.")] = False,
    storage_options,
) -> None:
    """Describe a model (its card) or an index (counts, versions, bytes, model, buckets, lock, last runs)."""
    from storage import ConfigError
    from workflows.info import describe_index, describe_model, index_errors, render

    if (model is None) == (index is None):
        raise ConfigError("give exactly one of --model or --index")
    opts = _storage_options(storage_options)
    if errors:
        if index is None:
            raise ConfigError("--errors lists the unreadable images of an index: give --index")
        rows = index_errors(index, opts)
        typer.echo(json.dumps(rows, indent=1) if as_json else "\n".join(f"{r['uri']}: {r['reason']}" for r in rows)
                   or f"{index} holds no unreadable image")
        return
    data = describe_model(model, opts) if model is not None else describe_index(index, opts, runs=runs)
    typer.echo(json.dumps(data, indent=1) if as_json else render(data))


@app.command()
@options(
    corpus=Option(None, "Images to index: folder/glob, IDX, .npy, Zarr, or a list of URIs.", type="path", required=True,
                  example="images/"),
    index=replace(INDEX, help="Index URL (created if absent, appended to otherwise)."),
    model=Option(None, "Model directory or built-in name; default: the index's own, or for a new index fashion-mnist (a corpus of "
                       "arrays) or icons-photos (image files).",
                 type="model", example="fashion-mnist"),
    settings=IndexSettings,
    compact=Option(True, "Compact partitions that pass the fragmentation thresholds after the commit (--no-compact: leave it "
                   "to `patchhash compact`).", example="true"),
    gc=Option(False, "After a successful run, delete what no kept version references (as `patchhash gc` with "
              "--keep-versions and --min-age).", example="true"),
    retention=pick(GcSettings, "keep_versions", "min_age"),
    wait_for_lock=WAIT_FOR_LOCK,
    **JOB,
)
def index(corpus, index, model, cluster: ClusterSettings, settings: IndexSettings, compact, gc, retention: GcSettings,
          wait_for_lock, monitor: MonitorSettings, config, storage_options, verbose) -> None:
    """Make an index mirror a corpus: create it, or add new images, remove deleted ones, encode changed files again and retry unreadable ones (resumable, under the index's lock)."""
    from workflows.index import index as run_index

    setup_logging(verbose, monitor, "index")
    with command_metrics(monitor.metrics_file, "index", index, _storage_options(storage_options)) as metrics:
        report = run_index(
            corpus, index, model, settings if compact else replace(settings, compaction=None), cluster,
            _storage_options(storage_options), wait_for_lock=wait_for_lock, gc=retention if gc else None,
        )
        metrics.record(report)
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
        log.warning("skipped %d unreadable image(s); see `patchhash info --index %s --errors`", report.n_errors_new, index)


@app.command()
@options(index=INDEX, wait_for_lock=WAIT_FOR_LOCK, storage_options=STORAGE_OPTIONS, monitor=MonitorSettings, verbose=VERBOSE)
def delete(
    *,
    index,
    uris: Annotated[str, typer.Option(help="The uris to remove: a .txt (one per line), .csv or .parquet list.")],
    keep_out: Annotated[bool, typer.Option(help="Keep the uris out of later syncs while their files still exist (--no-keep-out: let syncs add them back).")] = True,
    wait_for_lock,
    storage_options,
    monitor: MonitorSettings,
    verbose,
) -> None:
    """Remove images from an index by uri: no query returns them from the next version on."""
    from workflows.maintenance import delete as run_delete

    setup_logging(verbose, monitor, "delete")
    with command_metrics(monitor.metrics_file, "delete", index, _storage_options(storage_options)) as metrics:
        report = run_delete(index, uris, _storage_options(storage_options), wait_for_lock=wait_for_lock, keep_out=keep_out)
        metrics.record(report)
    if report.version is None:
        typer.echo(f"nothing to delete: none of the uris of {uris} is in {index}")
        return
    typer.echo(f"deleted {report.deleted} images from {index} (version {report.version}); "
               f"{report.not_found} uris were not in it; {report.excluded} uris kept out of syncs")


@app.command()
@options(index=INDEX, policy=CompactionPolicy, cluster=pick(ClusterSettings, "scheduler", "workers", "threads_per_worker", "memory_limit",
                                                                       "no_workers_timeout"),
         wait_for_lock=WAIT_FOR_LOCK, storage_options=STORAGE_OPTIONS, monitor=MonitorSettings, verbose=VERBOSE)
def compact(
    *,
    index,
    all_partitions: Annotated[bool, typer.Option("--all", help="Compact every partition holding deleted images or deltas, not only those past the thresholds.")] = False,
    policy: CompactionPolicy,
    cluster: ClusterSettings,
    wait_for_lock,
    storage_options,
    monitor: MonitorSettings,
    verbose,
) -> None:
    """Rewrite fragmented partitions: drop deleted images from the bucket maps, fold deltas in, merge small neighbours."""
    from workflows.maintenance import compact as run_compact

    setup_logging(verbose, monitor, "compact")
    with command_metrics(monitor.metrics_file, "compact", index, _storage_options(storage_options)) as metrics:
        result = run_compact(index, policy, force=all_partitions, cluster=cluster,
                             storage_options=_storage_options(storage_options), wait_for_lock=wait_for_lock)
        metrics.record(result)
    if result is None:
        typer.echo(f"nothing to compact in {index}")
        return
    typer.echo(f"compacted {result.partitions} partition(s) of {index} ({result.images} live images rewritten; version {result.version})")


@app.command()
@options(index=INDEX, settings=GcSettings, wait_for_lock=WAIT_FOR_LOCK, storage_options=STORAGE_OPTIONS, monitor=MonitorSettings,
         verbose=VERBOSE)
def gc(index, settings: GcSettings, wait_for_lock, storage_options, monitor: MonitorSettings, verbose) -> None:
    """Delete the versions and objects no kept version references (under the index's lock)."""
    from storage.layout import version_path
    from workflows.maintenance import gc as run_gc

    setup_logging(verbose, monitor, "gc")
    with command_metrics(monitor.metrics_file, "gc", index) as metrics:
        plan = run_gc(index, settings, _storage_options(storage_options), wait_for_lock=wait_for_lock)
        metrics.record(plan, dry_run=settings.dry_run)
    if settings.dry_run:
        for rel, size in plan.garbage:
            typer.echo(f"{size:>12} {rel}")
        for version in plan.dropped:
            typer.echo(f"{'':>12} {version_path(version)}")
    verb = "would delete" if settings.dry_run else "deleted"
    typer.echo(f"{verb} {len(plan.dropped)} version(s) and {len(plan.garbage)} object(s), {plan.garbage_bytes:,} bytes; "
               f"kept versions {', '.join(map(str, plan.kept))} and {len(plan.young)} unreferenced object(s) younger than --min-age")


@app.command()
@options(index=INDEX, wait_for_lock=WAIT_FOR_LOCK, storage_options=STORAGE_OPTIONS, monitor=LOGS, verbose=VERBOSE)
def upgrade(index, wait_for_lock, storage_options, monitor: MonitorSettings, verbose) -> None:
    """Upgrade an index of format 1 to format 2 in place (atomically; the first sync does it too)."""
    from workflows.maintenance import upgrade as run_upgrade

    setup_logging(verbose, monitor, "upgrade")
    version = run_upgrade(index, _storage_options(storage_options), wait_for_lock=wait_for_lock)
    typer.echo(f"{index} is format 2 already" if version is None else f"upgraded {index} to index format 2 (version {version})")


@app.command()
@options(
    index=INDEX,
    queries=QUERIES,
    out=Option(None, "Results file (Parquet by default; .csv / .jsonl by extension or --format), or a folder ending in / for a "
               "partitioned Parquet dataset that resumes when rerun.", type="path", required=True, example="results.parquet"),
    settings=QuerySettings,
    report=Option(None, "Also write a self-contained HTML report here.", type="path", example="report.html"),
    report_limit=Option(50, "Queries shown in the report.", minimum=0, example="50"),
    **JOB,
)
def query(index, queries, out, settings: QuerySettings, report, report_limit, cluster: ClusterSettings,
          monitor: MonitorSettings, config, storage_options, verbose) -> None:
    """Answer a batch query file against an index (results as Parquet/CSV/JSONL)."""
    from workflows.query import query as run_query

    setup_logging(verbose, monitor, "query")
    with command_metrics(monitor.metrics_file, "query", index) as metrics:
        result = run_query(index, queries, out, settings, cluster, _storage_options(storage_options), report=report,
                           report_limit=report_limit)
        metrics.record(result)
    typer.echo(
        f"answered {result.n_queries - result.n_failed} queries against {index} (version {result.version}) in "
        f"{result.seconds:.1f} s ({result.ms_per_query:.2f} ms/query): {result.rows} rows in {out}"
    )
    if result.blocks_skipped:
        typer.echo(f"resumed an interrupted run: {result.blocks_skipped} block(s) were already answered")
    if result.n_failed:
        log.warning("%d query row(s) could not be read; they have an error row in %s", result.n_failed, out)


@app.command()
@options(
    index=INDEX,
    queries=replace(QUERIES, help="Labelled query images: folder/glob, IDX, .npy, Zarr, or a list of URIs."),
    labels=Option(None, "Labels of the indexed images: IDX1 or .npy (by image id), or CSV uri,label.", type="path", required=True,
                  example="labels.npy"),
    query_labels=Option(None, "Labels of the queries (default: --labels).", type="path", example="query-labels.npy"),
    settings=EvaluateSettings,
    out=replace(FIGURES, example="evaluation.json"),
    plot=Option(None, "Draw precision@k curves and precision@10 against t into this PNG.", type="path", example="evaluation.png"),
    **MEASURING_JOB,
)
def evaluate(index, queries, labels, query_labels, settings: EvaluateSettings, out, plot, cluster: ClusterSettings,
             monitor: MonitorSettings, config, storage_options, verbose) -> None:
    """Precision@k, mAP@100, candidates, ms/query and build time of the query modes and baselines on labelled queries."""
    from workflows.evaluate import evaluate as run_evaluate, render_table

    setup_logging(verbose, monitor, "evaluate")
    result = run_evaluate(index, queries, labels, query_labels, settings, cluster, _storage_options(storage_options), out=out, plot=plot)
    typer.echo(render_table(result))


@app.command()
@options(index=INDEX, queries=QUERIES, settings=BenchSettings, out=replace(FIGURES, example="bench.json"), **MEASURING_JOB)
def bench(index, queries, settings: BenchSettings, out, cluster: ClusterSettings, monitor: MonitorSettings, config,
          storage_options, verbose) -> None:
    """Queries/s of each mode and peak memory per worker, on this cluster: for sizing a deployment."""
    from workflows.bench import bench as run_bench

    setup_logging(verbose, monitor, "bench")
    result = run_bench(index, queries, settings, cluster, _storage_options(storage_options), out=out)
    typer.echo(result.render())


@app.command()
@options(cluster=pick(ClusterSettings, "workers"), monitor=LOGS, verbose=VERBOSE)
def demo(
    *,
    out: Annotated[str, typer.Option(help="Folder for the index, results and report.")] = "patchhash-demo",
    mode: Annotated[str, typer.Option(help="Scoring mode: default or seed.")] = "default",
    cluster: ClusterSettings,
    monitor: MonitorSettings,
    verbose,
) -> None:
    """The embedded default end to end: index Fashion-MNIST, query it, report precision."""
    from workflows.demo import demo as run_demo

    setup_logging(verbose, monitor, "demo")
    result = run_demo(out, cluster, mode=mode)
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
        error_line(f"patchhash: error: {exc}")
        sys.exit(1)
    except KeyboardInterrupt:
        error_line("patchhash: interrupted; rerun the same command to resume.")
        sys.exit(130)
    except Exception as exc:  # anything unexpected still ends with one line (traceback on request)
        if os.environ.get("PATCHHASH_TRACEBACK"):
            raise
        error_line(f"patchhash: error: {type(exc).__name__}: {exc} (set PATCHHASH_TRACEBACK=1 for the traceback)")
        sys.exit(1)


if __name__ == "__main__":
    main()

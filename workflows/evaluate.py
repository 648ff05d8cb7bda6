"""``patchhash evaluate``: retrieval quality by label, for the query modes and pixel baselines.

Every method answers the same queries against the same indexed images, in one run:

* each query mode (``seed``, ``default``) at each threshold asked for, through the real
  :func:`workflows.query.query` job (Dask, bucket maps), so its ms/query is the whole job's
  (encoding included) after one warm-up block;
* the baselines (:mod:`pipeline.baselines`, :mod:`pipeline.ae_annoy`): ``pixel-knn`` (exact
  L2 on pixels) and ``lsh-B`` (B random hyperplanes, seed 004), ranking every indexed image;
  ``ae-annoy`` (seeds 002/003: their convolutional autoencoder, trained here on the indexed
  images, its float latents in Annoy).

Reported per method: precision@k for each k asked, mAP@100, the mean number of candidate
images per query (images a mode scored at all; every indexed image for pixel-knn and LSH;
k for Annoy), ms/query, and the build time (a mode: the index's ``index`` runs, from its run
log; a baseline: whatever it builds before its first query). With ``radii``, seed 004's
protocol (:mod:`pipeline.radius`) runs too, for the index's own codes and each LSH baseline.
Results go to a JSON file and a plot (precision@k curves; precision@10 against the threshold).
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from storage import ConfigError, CorpusError, open_corpus, read_labels
from storage.fs import url_to_fs
from storage.location import IndexLocation
from workflows.cluster import ClusterSettings, dask_client
from workflows.options import check_options, option, same_option
from workflows.query import (
    DEFAULT_THRESHOLD,
    MODES,
    QuerySettings,
    image_uris,
    query,
)

if TYPE_CHECKING:
    from pipeline.radius import RadiusResult

__all__ = ["EvaluateSettings", "MethodResult", "Evaluation", "evaluate", "index_build_seconds", "render_table", "plot_evaluation"]

log = logging.getLogger(__name__)

LSH_BASELINE = re.compile(r"^lsh-(\d+)$")
AE_ANNOY = "ae-annoy"
_WARMUP_QUERIES = 200


@dataclass(frozen=True)
class EvaluateSettings:
    """What ``evaluate`` measures; validated up front.

    ``thresholds`` empty runs each mode at its default threshold; otherwise at each one
    listed. ``limit`` keeps the first queries only. ``map_k`` is the depth of mAP.
    """

    ks: tuple[int, ...] = option((1, 10, 100), "Ranks for precision@k, comma-separated.", name="k", minimum=1, check=False,
                                 example="[1, 10, 100]")
    modes: tuple[str, ...] = option(("seed", "default"), "Query modes to measure (seed, default), comma-separated; 'none' for "
                                    "none.", choices=MODES, check=False, example="[seed, default]")
    baselines: tuple[str, ...] = option(("pixel-knn", "lsh-64", "lsh-256"), "Baselines: pixel-knn, lsh-B (B random "
                                        "hyperplanes), ae-annoy (seeds 002/003's autoencoder and Annoy; needs the annoy extra), "
                                        "comma-separated; 'none' for none.", example="[pixel-knn, lsh-64]")
    thresholds: tuple[int, ...] = option((), "Run each mode at each of these thresholds t (default: the mode's own).", minimum=0,
                                         example="[1, 3, 5]")
    shortlist: int | None = same_option(QuerySettings, "shortlist")
    max_bucket_fraction: float = same_option(QuerySettings, "max_bucket_fraction")
    max_bucket: int = same_option(QuerySettings, "max_bucket")
    vote_budget: int = same_option(QuerySettings, "vote_budget")
    map_k: int = 100
    limit: int | None = option(None, "Evaluate the first N queries only.", minimum=1, example="1000")
    radii: tuple[int, ...] = option((), "Seed 004's protocol at these Hamming radii, e.g. 0,1,2,3,4,5,6,7,8,9,10: the images "
                                    "whose code (at some grid position) is within r bits of the query's, ranked by cosine "
                                    "distance on pixels; precision@10 and the share of queries with any candidate, for the "
                                    "index's codes and each lsh-B baseline.", minimum=0, example="[0, 1, 2, 3]")
    ae_epochs: int = option(20, "Training epochs of the ae-annoy baseline's autoencoder (seed 002 trains 20).", minimum=1,
                            example="20")
    block_size: int = QuerySettings.block_size

    def __post_init__(self) -> None:
        if not self.ks or any(k < 1 for k in self.ks):
            raise ConfigError(f"--k must list positive ranks, e.g. 1,10,100; got {list(self.ks)}")
        for mode in self.modes:
            if mode not in MODES:
                raise ConfigError(f"--modes: unknown mode {mode!r}; choose from {', '.join(MODES)}")
        for name in self.baselines:
            m = LSH_BASELINE.match(name)
            if name not in ("pixel-knn", AE_ANNOY) and not (m and 1 <= int(m.group(1)) <= 4096):
                raise ConfigError(f"--baselines: unknown baseline {name!r}; use pixel-knn, ae-annoy or lsh-B with 1 <= B <= 4096 "
                                  "(e.g. lsh-64)")
        check_options(self)  # --thresholds, --limit, and the query job's options passed on to it
        if not self.modes and not self.baselines and not self.radii:
            raise ConfigError("nothing to evaluate: give at least one mode, baseline or radius")
        if self.map_k < 1:
            raise ConfigError(f"map_k must be >= 1, got {self.map_k}")
        self.query_settings()  # the query job's own checks of the options passed on to it

    def query_settings(self, **settings) -> QuerySettings:
        """The query job's settings: the default mode's tuning from here, plus ``settings``."""
        return QuerySettings(shortlist=self.shortlist, max_bucket_fraction=self.max_bucket_fraction, max_bucket=self.max_bucket,
                             vote_budget=self.vote_budget, block_size=self.block_size, **settings)

    @property
    def depth(self) -> int:
        """Results kept per query: enough for every k and for mAP."""
        return max(*self.ks, self.map_k)


@dataclass
class MethodResult:
    """Figures of one method (a mode at one threshold, or a baseline)."""

    name: str
    category: str  # "mode" or "baseline"
    threshold: int | None
    precision: dict[int, float]
    map: float
    mean_candidates: float
    ms_per_query: float
    curve: list[float] = field(repr=False, default_factory=list)  # precision@1..depth
    build_seconds: float | None = None  # None: not known (an index without run records)


@dataclass
class Evaluation:
    index: str
    queries: str
    n_index: int
    n_queries: int
    ks: tuple[int, ...]
    map_k: int
    methods: list[MethodResult]
    radius: list[RadiusResult] = field(default_factory=list)

    def to_json(self) -> dict:
        d = asdict(self)
        # a method's category is "kind" in the JSON, as it always was
        d["methods"] = [{"kind" if k == "category" else k: v for k, v in m.items()} for m in d["methods"]]
        for m in d["methods"]:
            m["precision"] = {str(k): v for k, v in m["precision"].items()}
        return d


def evaluate(
    index_url: "str | IndexLocation",
    queries: str,
    labels: str,
    query_labels: str | None = None,
    settings: EvaluateSettings = EvaluateSettings(),
    cluster: ClusterSettings = ClusterSettings(),
    storage_options: dict | None = None,
    client=None,
    out: str | None = None,
    plot: str | None = None,
) -> Evaluation:
    """Measure every mode and baseline of ``settings`` on ``queries`` against ``index_url``.

    ``labels`` labels the indexed images (IDX1, ``.npy`` by image id, or CSV ``uri,label``);
    ``query_labels`` the queries (default: ``labels``, which then must be a CSV covering the
    query uris too, or hold one label per query). Writes ``out`` (JSON) and ``plot`` (PNG)
    when given. ``storage_options`` reach ``index_url`` and every other URL given (or pass an
    :class:`~storage.location.IndexLocation`, whose options then serve them all).
    """
    from pipeline.metrics import average_precision_at_k, precision_at_k
    from storage.corpus import UriListCorpus
    from storage.manifest import read_manifest

    index = IndexLocation.of(index_url, storage_options)
    storage_options = index.storage_options
    manifest = read_manifest(index)
    uris = image_uris(index, manifest)
    index_labels = read_labels(labels, storage_options, uris=[u if u is not None else "" for u in uris] if labels.lower().endswith(".csv") else None)
    if len(index_labels) != manifest.n_images:
        raise CorpusError(f"{labels} holds {len(index_labels)} labels but the index {index.url} has {manifest.n_images} images; pass the labels of the indexed corpus")
    source = open_corpus(queries, storage_options)
    query_uris = source.uris()
    q_labels = _query_labels(query_labels or labels, query_labels is None, query_uris, storage_options)
    if settings.limit is not None and settings.limit < len(source):
        source = UriListCorpus(source.url, storage_options, query_uris[: settings.limit])
        q_labels = q_labels[: settings.limit]
    n_queries = len(source)
    depth = settings.depth
    methods: list[MethodResult] = []

    def figures(name, category, threshold, ids, candidates, ms, build=None) -> MethodResult:
        curve = [precision_at_k(ids, index_labels, q_labels, k) for k in range(1, depth + 1)]
        result = MethodResult(
            name, category, threshold, {k: curve[k - 1] for k in settings.ks},
            average_precision_at_k(ids, index_labels, q_labels, settings.map_k), candidates, ms, curve, build,
        )
        log.info("%s: P@10 %.4f, mAP@%d %.4f, %.1f candidates, %.3f ms/query", name, curve[min(10, depth) - 1],
                 settings.map_k, result.map, candidates, ms)
        methods.append(result)
        return result

    radius: list[RadiusResult] = []
    if settings.modes:
        build = index_build_seconds(index)
        with dask_client(cluster) if client is None else nullcontext(client) as dask, tempfile.TemporaryDirectory() as tmp:
            warm = UriListCorpus(source.url, storage_options, query_uris[:_WARMUP_QUERIES])
            for mode in settings.modes:
                query(index, warm, f"{tmp}/warmup.parquet", QuerySettings(k=depth, mode=mode), client=dask)
                for t in settings.thresholds or (DEFAULT_THRESHOLD[mode],):
                    ids = np.full((n_queries, depth), -1, np.int64)

                    def keep(block, topk, ids=ids) -> None:
                        ids[block.rows] = topk.ids

                    run = query(
                        index, source, f"{tmp}/{mode}-{t}.parquet",
                        settings.query_settings(k=depth, threshold=t, mode=mode),
                        client=dask, on_block=keep,
                    )
                    figures(f"{mode} t={t}", "mode", t, ids, run.mean_candidates, run.ms_per_query, build)
    if settings.baselines or settings.radii:
        from workflows.evaluate_baselines import run_baselines

        radius = run_baselines(settings, index, manifest, uris, source, (index_labels, q_labels), figures)
    evaluation = Evaluation(index.url, str(queries), manifest.n_images, n_queries, tuple(settings.ks), settings.map_k, methods,
                            radius)
    if out is not None:
        fs, path = url_to_fs(out, storage_options)
        fs.pipe_file(path, json.dumps(evaluation.to_json(), indent=1).encode())
        log.info("evaluation written to %s", out)
    if plot is not None:
        plot_evaluation(evaluation, plot, storage_options)
        log.info("plot written to %s", plot)
    return evaluation


def _query_labels(url: str, shared: bool, query_uris: list[str], storage_options) -> np.ndarray:
    if url.lower().endswith(".csv"):
        return read_labels(url, storage_options, uris=query_uris)
    values = read_labels(url, storage_options)
    if len(values) != len(query_uris):
        hint = ("the index's --labels do not fit the queries; pass --query-labels" if shared
                else "pass the labels file that goes with the query file")
        raise CorpusError(f"{url} holds {len(values)} labels but {len(query_uris)} queries were given; {hint}")
    return values


def index_build_seconds(index: IndexLocation) -> float | None:
    """Seconds the index's successful ``index`` runs took, from its run log (None without records)."""
    from storage.runlog import read_runs

    runs = [r for r in read_runs(index, last=None) if r.get("command") == "index" and r.get("status") == "ok"]
    return sum(float(r["seconds"]) for r in runs) if runs else None


def render_table(evaluation: Evaluation) -> str:
    """The figures as an aligned text table, one row per method."""
    head = ["method", *(f"P@{k}" for k in evaluation.ks), f"mAP@{evaluation.map_k}", "candidates", "ms/query", "build s"]
    rows = [[m.name, *(f"{m.precision[k]:.4f}" for k in evaluation.ks), f"{m.map:.4f}",
             f"{m.mean_candidates:,.0f}", f"{m.ms_per_query:.3f}", "-" if m.build_seconds is None else f"{m.build_seconds:.1f}"]
            for m in evaluation.methods]
    title = f"{evaluation.n_queries} queries against {evaluation.n_index} indexed images ({evaluation.index})"
    lines = [title, *_aligned(head, rows)] if rows else [title]
    if evaluation.radius:
        lines += ["", "seed 004's protocol: precision@10 of the candidates within Hamming radius r (ranked by cosine on pixels)",
                  *_aligned(["method", "r", "P@10", "answered", "candidates"],
                            [[r.method, str(r.radius), f"{r.precision:.4f}", f"{r.answered:.3f}", f"{r.mean_candidates:,.1f}"]
                             for r in evaluation.radius])]
    return "\n".join(lines)


def _aligned(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in [head, *rows]]


def plot_evaluation(evaluation: Evaluation, url: str, storage_options=None) -> None:
    """PNG: precision@k curves of every method, and precision@10 against the threshold."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (the integer locator of the sweep's x axis)

    fig, (curves, sweep) = plt.subplots(1, 2, figsize=(12, 4.5))
    for m in evaluation.methods:
        curves.plot(range(1, len(m.curve) + 1), m.curve, label=m.name, linestyle="-" if m.category == "mode" else "--")
    curves.set(xscale="log", xlabel="k", ylabel="precision@k", title="precision@k by label")
    curves.grid(True, alpha=0.3)
    curves.legend(fontsize=8)
    p10 = min(10, len(evaluation.methods[0].curve)) if evaluation.methods else 10
    modes = sorted({m.name.split(" ")[0] for m in evaluation.methods if m.category == "mode"})
    for mode in modes:
        points = sorted((m.threshold, m.curve[p10 - 1]) for m in evaluation.methods if m.category == "mode" and m.name.startswith(mode + " "))
        sweep.plot([t for t, _ in points], [p for _, p in points], marker="o", label=f"{mode} mode")
    baselines = [m for m in evaluation.methods if m.category == "baseline"]
    for i, m in enumerate(baselines):
        sweep.axhline(m.curve[p10 - 1], linestyle="--", linewidth=1, label=m.name, color=f"C{len(modes) + i}")
    sweep.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    sweep.set(xlabel="threshold t (Hamming radius per code)", ylabel=f"precision@{p10}", title=f"precision@{p10} against t")
    sweep.grid(True, alpha=0.3)
    sweep.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    fs, path = url_to_fs(url, storage_options)
    fs.pipe_file(path, buffer.getvalue())

"""``patchhash evaluate``: retrieval quality by label, for the query modes and pixel baselines.

Every method answers the same queries against the same indexed images, in one run:

* each query mode (``seed``, ``default``) at each threshold asked for, through the real
  :func:`workflows.query.query` job (Dask, bucket maps), so its ms/query is the whole job's
  (encoding included) after one warm-up block;
* the baselines on raw pixels (:mod:`pipeline.baselines`): ``pixel-knn`` (exact L2) and
  ``lsh-B`` (B random hyperplanes, seed 004), ranking every indexed image.

Reported per method: precision@k for each k asked, mAP@100, the mean number of candidate
images per query (images a mode scored at all; every indexed image for a baseline) and
ms/query. Results go to a JSON file and a plot (precision@k curves; precision@10 against
the threshold).
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

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

__all__ = ["EvaluateSettings", "MethodResult", "Evaluation", "evaluate", "render_table", "plot_evaluation"]

log = logging.getLogger(__name__)

_LSH = re.compile(r"^lsh-(\d+)$")
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
    baselines: tuple[str, ...] = option(("pixel-knn", "lsh-64", "lsh-256"), "Pixel baselines: pixel-knn, lsh-B (B random "
                                        "hyperplanes), comma-separated; 'none' for none.", example="[pixel-knn, lsh-64]")
    thresholds: tuple[int, ...] = option((), "Run each mode at each of these thresholds t (default: the mode's own).", minimum=0,
                                         example="[1, 3, 5]")
    shortlist: int | None = same_option(QuerySettings, "shortlist")
    max_bucket_fraction: float = same_option(QuerySettings, "max_bucket_fraction")
    max_bucket: int = same_option(QuerySettings, "max_bucket")
    vote_budget: int = same_option(QuerySettings, "vote_budget")
    map_k: int = 100
    limit: int | None = option(None, "Evaluate the first N queries only.", minimum=1, example="1000")
    block_size: int = QuerySettings.block_size

    def __post_init__(self) -> None:
        if not self.ks or any(k < 1 for k in self.ks):
            raise ConfigError(f"--k must list positive ranks, e.g. 1,10,100; got {list(self.ks)}")
        for mode in self.modes:
            if mode not in MODES:
                raise ConfigError(f"--modes: unknown mode {mode!r}; choose from {', '.join(MODES)}")
        for name in self.baselines:
            m = _LSH.match(name)
            if name != "pixel-knn" and not (m and 1 <= int(m.group(1)) <= 4096):
                raise ConfigError(f"--baselines: unknown baseline {name!r}; use pixel-knn or lsh-B with 1 <= B <= 4096 (e.g. lsh-64)")
        check_options(self)  # --thresholds, --limit, and the query job's options passed on to it
        if not self.modes and not self.baselines:
            raise ConfigError("nothing to evaluate: give at least one mode or baseline")
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


@dataclass
class Evaluation:
    index: str
    queries: str
    n_index: int
    n_queries: int
    ks: tuple[int, ...]
    map_k: int
    methods: list[MethodResult]

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

    def figures(name, category, threshold, ids, candidates, ms) -> MethodResult:
        curve = [precision_at_k(ids, index_labels, q_labels, k) for k in range(1, depth + 1)]
        result = MethodResult(
            name, category, threshold, {k: curve[k - 1] for k in settings.ks},
            average_precision_at_k(ids, index_labels, q_labels, settings.map_k), candidates, ms, curve,
        )
        log.info("%s: P@10 %.4f, mAP@%d %.4f, %.1f candidates, %.3f ms/query", name, curve[min(10, depth) - 1],
                 settings.map_k, result.map, candidates, ms)
        methods.append(result)
        return result

    if settings.modes:
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
                    figures(f"{mode} t={t}", "mode", t, ids, run.mean_candidates, run.ms_per_query)
    if settings.baselines:
        _run_baselines(settings, index, uris, source, figures)
    evaluation = Evaluation(index.url, str(queries), manifest.n_images, n_queries, tuple(settings.ks), settings.map_k, methods)
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


def _run_baselines(settings: EvaluateSettings, index: IndexLocation, uris: np.ndarray, source, figures) -> None:
    from pipeline.baselines import hamming_knn, lsh_codes, pixel_knn
    from pipeline.modelcard import read_card
    from storage.corpus import UriListCorpus
    from storage.layout import MODEL_DIR

    storage_options = index.storage_options
    card = read_card(index.join(MODEL_DIR), storage_options)
    spec = card.image_spec
    readable = np.flatnonzero([u is not None for u in uris])
    log.info("reading the pixels of %d indexed images and %d queries for the baselines", len(readable), len(source))
    data = UriListCorpus("indexed images", storage_options, [uris[i] for i in readable]).read(spec)
    index_ids = readable[data.ids]
    index_pixels = data.pixels
    query_data = source.read(spec)
    depth = settings.depth
    n_queries = len(source)

    def spread(local: np.ndarray) -> np.ndarray:
        """Rows of the readable queries, as image ids of the index; -1 elsewhere."""
        ids = np.full((n_queries, depth), -1, np.int64)
        ids[query_data.ids] = np.where(local >= 0, index_ids[np.maximum(local, 0)], -1)
        return ids

    # compile the numba kernels before timing (a no-op once numba's cache holds them)
    first = index_pixels[:2]
    tiny = lsh_codes(first, 8, first.reshape(len(first), -1).mean(axis=0))
    hamming_knn(tiny, tiny, 1)
    for name in settings.baselines:
        started = time.perf_counter()
        if name == "pixel-knn":
            local = pixel_knn(index_pixels, query_data.pixels, depth)
        else:
            bits = int(_LSH.match(name).group(1))
            mean = index_pixels.reshape(len(index_pixels), -1).mean(axis=0)
            local = hamming_knn(lsh_codes(index_pixels, bits, mean), lsh_codes(query_data.pixels, bits, mean), depth)
        seconds = time.perf_counter() - started
        figures(name, "baseline", None, spread(local), float(len(index_ids)), 1000 * seconds / max(1, n_queries))


def render_table(evaluation: Evaluation) -> str:
    """The figures as an aligned text table, one row per method."""
    head = ["method", *(f"P@{k}" for k in evaluation.ks), f"mAP@{evaluation.map_k}", "candidates", "ms/query"]
    rows = [[m.name, *(f"{m.precision[k]:.4f}" for k in evaluation.ks), f"{m.map:.4f}",
             f"{m.mean_candidates:,.0f}", f"{m.ms_per_query:.3f}"] for m in evaluation.methods]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in [head, *rows]]
    title = f"{evaluation.n_queries} queries against {evaluation.n_index} indexed images ({evaluation.index})"
    return "\n".join([title, *lines])


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

"""``patchhash bench``: query throughput of an index on a cluster, for sizing a deployment.

On one running cluster: every worker loads the model and runs it once, then a warm-up block
per mode (workers load the bucket maps and the codes), then ``repeats`` whole query jobs per
mode over the given queries, timed from the client (reading, encoding, searching every
partition, merging, writing results; cluster start-up excluded). Also reports each worker's
peak resident memory (the process's high-water mark: on a fresh cluster, this job's; on a
long-lived one, since the worker started), so that a user can size workers before pointing a
scheduled job at a bigger index.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

from storage import ConfigError, open_corpus, url_to_fs
from storage.corpus import Corpus, UriListCorpus
from storage.location import IndexLocation
from workflows.cluster import ClusterSettings, dask_client
from workflows.options import check_options, option, same_option
from workflows.query import MODES, QuerySettings

__all__ = ["BenchSettings", "BenchResult", "bench", "peak_rss_mb", "anon_rss_mb"]

log = logging.getLogger(__name__)

WARM_UP_QUERIES = 256


@dataclass(frozen=True)
class BenchSettings:
    """Options of ``patchhash bench``, validated up front."""

    modes: tuple[str, ...] = option(("default", "seed"), "Query modes to time (default, seed), comma-separated.", choices=MODES,
                                    check=False, example="[default, seed]")
    repeats: int = option(3, "Timed query jobs per mode (the median is reported).", minimum=1, example="3")
    limit: int | None = option(None, "Use the first N queries only.", minimum=1, example="1000")
    block_size: int = same_option(QuerySettings, "block_size", help="Queries per task, as in patchhash query.")

    def __post_init__(self) -> None:
        unknown = [m for m in self.modes if m not in MODES]
        if unknown or not self.modes:
            raise ConfigError(f"--modes takes some of {', '.join(MODES)}, got {', '.join(self.modes) or 'none'}")
        check_options(self)


@dataclass
class BenchResult:
    index: str
    n_queries: int
    workers: int
    threads: int
    runs: dict[str, list[float]] = field(default_factory=dict)  # mode -> seconds of each run
    peak_rss_mb: dict[str, float] = field(default_factory=dict)  # worker address -> MB
    # worker address -> MB of the process's own memory at the end (file pages mapped from local
    # copies of partitions count in the peak RSS, but they are the page cache's, shared and reclaimable)
    anon_rss_mb: dict[str, float] = field(default_factory=dict)
    # mode -> task seconds of the timed runs, by kind of task ("encode", "search", "merge")
    task_seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    index_figures: dict = field(default_factory=dict)  # images, partitions, bytes and objects (see plan_inputs)
    local_copy_bytes: int = 0  # the workers' local copies of partitions, each machine's folder once
    # mode -> CPU seconds of the calling process (the client and scheduler; with an in-process
    # cluster, the workers' too) in each run: on a machine the workers share, taken from them
    client_cpu_s: dict[str, list[float]] = field(default_factory=dict)

    def plan_inputs(self) -> dict:
        """What benchmarks/scale_model.py's cost model takes (``--from-bench``), from this run:
        worker task ms per query and partition searched, per query encoded, per query and list
        merged (over every timed run), the index's bytes per image and objects per partition,
        and the local copies' bytes per image."""
        figures = self.index_figures
        images, partitions = figures.get("images", 0), figures.get("partitions", 0)
        out = {**figures, "local_bytes_per_image": self.local_copy_bytes / images if images else 0.0}
        runs = len(next(iter(self.runs.values()), []))
        for mode, seconds in self.task_seconds.items():
            per_query = 1000 / (self.n_queries * runs) if self.n_queries and runs else 0.0
            out[mode] = {"encode_ms": seconds.get("encode", 0) * per_query,
                         "search_ms": seconds.get("search", 0) * per_query / max(partitions, 1),
                         "merge_ms": seconds.get("merge", 0) * per_query / max(partitions, 1)}
        return out

    def queries_per_second(self, mode: str) -> float:
        return self.n_queries / statistics.median(self.runs[mode])

    def ms_per_query(self, mode: str) -> float:
        return 1000 / self.queries_per_second(mode)

    def to_dict(self) -> dict:
        return {
            "index": self.index, "n_queries": self.n_queries, "workers": self.workers, "threads": self.threads,
            "runs_s": self.runs, "peak_rss_mb": self.peak_rss_mb, "anon_rss_mb": self.anon_rss_mb,
            "queries_per_s": {m: self.queries_per_second(m) for m in self.runs},
            "task_seconds": self.task_seconds, "client_cpu_s": self.client_cpu_s, "plan_inputs": self.plan_inputs(),
        }

    def render(self) -> str:
        lines = [f"{self.n_queries} queries against {self.index} on {self.workers} worker(s) x {self.threads} thread(s), "
                 f"median of {len(next(iter(self.runs.values())))} runs:"]
        lines += [f"  {m:8s} {self.queries_per_second(m):9.0f} queries/s  {self.ms_per_query(m):8.3f} ms/query"
                  + (f"  (this process: {statistics.median(self.client_cpu_s[m]):.2f} CPU s per run)" if self.client_cpu_s.get(m) else "")
                  for m in self.runs]
        rss = ", ".join(f"{v:,.0f}" for v in sorted(self.peak_rss_mb.values()))
        lines.append(f"  peak RSS per worker (MB): {rss}")
        if self.anon_rss_mb:
            lines.append("  own memory per worker at the end, without mapped files (MB): "
                         + ", ".join(f"{v:,.0f}" for v in sorted(self.anon_rss_mb.values())))
        plan = self.plan_inputs()
        if plan.get("images"):
            lines.append(f"  index: {plan['images']:,} images in {plan['partitions']} partition(s), {plan['index_bytes_per_image']:,.0f} "
                         f"bytes and {plan['objects_per_partition']:,.1f} objects per partition in storage; local copies "
                         f"{plan['local_bytes_per_image']:,.0f} bytes/image")
            for mode in self.task_seconds:
                lines.append(f"  {mode:8s} worker CPU ms: {plan[mode]['search_ms']:.3f} per query and partition, "
                             f"{plan[mode]['encode_ms']:.3f} per query encoded, {plan[mode]['merge_ms']:.4f} per query and list merged")
            lines.append("  a plan for more images: python benchmarks/scale_model.py --from-bench <--out JSON> --plan 1000000000")
        return "\n".join(lines)


def _proc_status_mb(field: str) -> float | None:
    """A memory figure of ``/proc/self/status`` (``VmHWM``, ``RssAnon``...) in MB; None off Linux."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def anon_rss_mb() -> float:
    """The calling process's resident anonymous memory in MB (``RssAnon``; 0 where unknown):
    its own memory, without the file pages it maps."""
    return _proc_status_mb("RssAnon") or 0.0


def peak_rss_mb() -> float:
    """The calling process's peak resident memory in MB.

    On Linux, ``VmHWM`` of ``/proc/self/status``: the high-water mark of this process's own
    address space. ``ru_maxrss`` is not used there because it survives ``fork`` and ``exec``:
    a process started by a big parent (a worker spawned by a client, a benchmark's child)
    would report the parent's resident memory at the fork. Elsewhere, ``ru_maxrss``.
    """
    if (peak := _proc_status_mb("VmHWM")) is not None:
        return peak
    import resource  # not on Windows

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, KiB elsewhere


def bench(
    index_url: "str | IndexLocation",
    queries: "str | Corpus",
    settings: BenchSettings = BenchSettings(),
    cluster: ClusterSettings = ClusterSettings(),
    storage_options: dict | None = None,
    client=None,
    out: str | None = None,
) -> BenchResult:
    """Time whole query jobs of each mode of ``settings`` on one cluster (see the module
    docstring); ``out`` (any fsspec URL) receives the figures as JSON."""
    from distributed import get_task_stream

    from workflows.query import query

    index = IndexLocation.of(index_url, storage_options)
    storage_options = index.storage_options  # of the queries and ``out`` too
    source = queries if isinstance(queries, Corpus) else open_corpus(queries, storage_options)
    if settings.limit is not None:
        source = _first(source, settings.limit, storage_options)
    warm = _first(source, WARM_UP_QUERIES, storage_options)
    with (
        dask_client(cluster) if client is None else nullcontext(client) as dask,
        tempfile.TemporaryDirectory(prefix="patchhash-bench-") as tmp,
    ):
        nthreads = dask.nthreads()
        result = BenchResult(index.url, len(source), len(nthreads), max(nthreads.values(), default=0))
        # a task pinned to each worker (not Client.run, which would block the worker's event loop)
        dask.gather([dask.submit(_warm_encoder, index, workers=[w], allow_other_workers=False, pure=False) for w in nthreads])
        for mode in settings.modes:
            query(index, warm, f"{tmp}/warm.parquet", QuerySettings(mode=mode, block_size=settings.block_size), client=dask)
        for i in range(settings.repeats):
            for mode in settings.modes:
                with get_task_stream(dask) as stream:
                    started, cpu = time.perf_counter(), time.process_time()
                    query(index, source, f"{tmp}/{mode}.parquet", QuerySettings(mode=mode, block_size=settings.block_size),
                          client=dask)
                    result.runs.setdefault(mode, []).append(time.perf_counter() - started)
                    result.client_cpu_s.setdefault(mode, []).append(time.process_time() - cpu)
                totals = result.task_seconds.setdefault(mode, {})
                for kind, seconds in _task_seconds(stream.data).items():
                    totals[kind] = totals.get(kind, 0.0) + seconds
                log.info("run %d/%d, %s mode: %.1f s", i + 1, settings.repeats, mode, result.runs[mode][-1])
        result.peak_rss_mb = dask.run(peak_rss_mb)
        result.anon_rss_mb = dask.run(anon_rss_mb)
        result.local_copy_bytes = sum(dict(dask.run(_local_copy_bytes).values()).values())
    result.index_figures = _index_figures(index)
    if out is not None:
        fs, path = url_to_fs(out, storage_options)
        fs.pipe_file(path, json.dumps(result.to_dict(), indent=1).encode())
    return result


_TASK_KINDS = {"encode_block_task": "encode", "search_task": "search", "merge_task": "merge"}


def _task_seconds(stream: list[dict]) -> dict[str, float]:
    """Seconds of computing of each kind of query task in a Dask task stream."""
    from dask.utils import key_split

    totals: dict[str, float] = {}
    for task in stream:
        kind = _TASK_KINDS.get(key_split(task["key"]))
        if kind is not None:
            busy = sum(s["stop"] - s["start"] for s in task["startstops"] if s["action"] == "compute")
            totals[kind] = totals.get(kind, 0.0) + busy
    return totals


def _local_copy_bytes() -> tuple[str, int]:
    """``(machine and folder, bytes)`` of this worker's local copies of partitions."""
    import os
    import socket

    from workflows.partition_files import local_files

    files = local_files()
    if files is None:
        return ("", 0)
    return (f"{socket.gethostname()}:{os.path.realpath(files.root)}", files.nbytes())


def _index_figures(index: IndexLocation) -> dict:
    """Images, partitions, and the bytes and objects of the index's current objects in storage."""
    from storage.manifest import read_manifest

    manifest = read_manifest(index)
    sizes = index.fs.du(index.fs_path(), total=False)
    n, parts = manifest.n_images, len(manifest.partitions)
    return {"images": n, "partitions": parts, "partition_size": manifest.partition_size,
            "index_bytes_per_image": sum(sizes.values()) / n if n else 0.0,
            "objects_per_partition": len(sizes) / parts if parts else 0.0}


def _warm_encoder(index: IndexLocation) -> None:
    """Load the index's model in this worker and run it once: the warm-up block is encoded
    by one worker, and another would otherwise load the model in the first timed job."""
    import numpy as np

    from pipeline.encode import load_encoder
    from storage.layout import MODEL_DIR

    encoder = load_encoder(index.join(MODEL_DIR), index.storage_options)
    encoder.encode(np.zeros((1, *encoder.input_shape), np.uint8))


def _first(source: Corpus, n: int, storage_options) -> Corpus:
    """The first ``n`` images of ``source`` (``source`` itself when it has no more)."""
    if n >= len(source):
        return source
    return UriListCorpus(source.url, storage_options, source.uris()[:n])

"""Start-up: the whole ``patchhash query`` command of a small job, and where its time goes.

Writes the first ``--images`` Fashion-MNIST train images (1,000) as a ``.npy`` corpus and
``--queries`` other train images (10) as a query file, indexes them with ``patchhash index``
(shipped model), then times the whole command ::

    patchhash query --index <tmp>/index --queries <tmp>/queries.npy --out <tmp>/results.parquet

in a fresh process, ``--runs`` times (median; wall clock and the child's CPU time): as it runs by
default (a small job runs in the client's process, ``--in-process-max``) and, beside it, with
``--in-process-max 0`` (worker processes, as every job ran before). Then one fresh process per
path replays the command's steps with a clock between them: imports, cluster start, reading
the manifest and opening the queries, TensorFlow's import, loading the model, encoding,
searching (numba kernels loaded from their cache on the first call), merging and writing,
closing the cluster. What the steps do not cover of the whole command is mostly the
interpreter's exit::

    python benchmarks/bench_startup.py [--runs 5] [--images 1000] [--queries 10]
    python benchmarks/bench_startup.py --smoke        # 300 images, 5 queries, 1 run, in-process only
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "workflows.cli"]
PATHS = {"in-process": [], "worker processes": ["--in-process-max", "0"]}
STEPS = ("start + imports", "job setup", "cluster", "tensorflow import", "model load", "encode", "search", "merge + write",
         "cluster close")


def write_inputs(folder: Path, images: int, queries: int) -> tuple[str, str]:
    """The corpus (the first ``images`` train images) and queries (the ``queries`` after them) as ``.npy``."""
    from _common import TRAIN_IMAGES

    from storage import open_corpus

    source = open_corpus(TRAIN_IMAGES)
    pixels = source.read(source.native_spec(), 0, images + queries).pixels[..., 0]
    corpus, query_file = folder / "corpus.npy", folder / "queries.npy"
    np.save(corpus, pixels[:images])
    np.save(query_file, pixels[images:])
    return str(corpus), str(query_file)


def timed_command(args: list[str]) -> dict:
    """Wall clock and CPU time (user + system) of one command in a fresh process; it must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([*CLI, *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"{' '.join(args[:1])} failed:\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "stderr": done.stderr}


def steps(index_url: str, queries: str, out: str, extra: list[str], launched: float) -> dict:
    """The steps of the query command, each timed, in this (fresh) process: ``--steps`` mode.
    ``launched`` is the ``time.time()`` at which the parent started this process: the first step
    holds the interpreter's start and the imports (this script imports only the standard
    library and numpy before them).

    In-process, TensorFlow is imported and the model loaded here, before the tasks; with worker
    processes they happen inside the first encode task, so "encode" holds them there.
    """
    clock = {}
    mark = launched

    def lap(name: str) -> None:
        nonlocal mark
        now = time.time()
        clock[name] = now - mark
        mark = now

    sys.path.insert(0, str(ROOT))
    import workflows.cli  # noqa: F401 - what the command imports before parsing its options
    from storage.layout import MODEL_DIR
    from storage.location import IndexLocation
    from storage.results import open_results
    from workflows.cluster import ClusterSettings, dask_client
    from workflows.query import QueryJob, QuerySettings, encode_block_task, merge_task, search_task

    lap("start + imports")
    settings = QuerySettings()
    index = IndexLocation.of(index_url)
    job = QueryJob(index, queries, out, settings)
    lap("job setup")
    with dask_client(ClusterSettings(in_process_max=0) if extra else ClusterSettings(), size=len(job.source)) as client:
        lap("cluster")
        if not extra:  # in-process: the tasks' TensorFlow and model are this process's
            import pipeline.backend  # noqa: F401

            lap("tensorflow import")
            from pipeline.encode import load_encoder

            load_encoder(index.join(MODEL_DIR))
            lap("model load")
        else:
            clock["tensorflow import"] = clock["model load"] = 0.0
        blocks = [client.submit(encode_block_task, index, shard, pure=False) for shard in job.shards]
        client.gather(blocks)
        lap("encode")
        parts = [[client.submit(search_task, index, p, [block], settings, job.manifest.bits, pure=False) for p in job.partitions]
                 for block in blocks]
        client.gather(parts)
        lap("search")
        with open_results(out, settings.format, job.spec()) as writer:
            for shard, block, found in zip(job.shards, blocks, parts):
                job.answered(shard, block.result(), client.submit(merge_task, found, settings.k, pure=False).result(), writer)
        lap("merge + write")
    lap("cluster close")
    return {"steps_s": clock, "n_queries": len(job.source)}


def main(argv=None) -> dict:
    from _common import add_smoke_and_out_json, parser, write_json  # sets up sys.path

    ap = parser(__doc__)
    ap.add_argument("--runs", type=int, default=5, help="Whole-command runs per path (median).")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--no-compare", action="store_true", help="Time the default (in-process) path only.")
    add_smoke_and_out_json(ap, "300 images, 5 queries, 1 run, the in-process path only")
    args = ap.parse_args(argv)
    if args.smoke:
        args.runs, args.images, args.queries, args.no_compare = 1, 300, 5, True
    paths = {k: v for k, v in PATHS.items() if not (args.no_compare and v)}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        folder = Path(tmp)
        corpus, queries = write_inputs(folder, args.images, args.queries)
        index_url = str(folder / "index")
        built = timed_command(["index", "--corpus", corpus, "--index", index_url])
        print(f"patchhash index of {args.images:,} images: {built['wall_s']:.1f} s wall, {built['cpu_s']:.1f} s CPU", flush=True)
        result = {"images": args.images, "queries": args.queries, "runs": args.runs, "cpus": os.cpu_count(),
                  "index_wall_s": built["wall_s"], "index_cpu_s": built["cpu_s"], "paths": {}}
        command = "patchhash query --index INDEX --queries queries.npy --out results.parquet"
        print(f"\n{command} ({args.queries} queries, {args.images:,}-image index), median of {args.runs} run(s):\n")
        print("| path | whole command, wall s | CPU s (user + system) | runs (wall s) |")
        print("| --- | --- | --- | --- |")
        for name, extra in paths.items():
            out = str(folder / "results.parquet")
            runs = [timed_command(["query", "--index", index_url, "--queries", queries, "--out", out, *extra]) for _ in range(args.runs)]
            walls = [r["wall_s"] for r in runs]
            figures = {"wall_s": statistics.median(walls), "cpu_s": statistics.median(r["cpu_s"] for r in runs), "walls_s": walls,
                       "in_process_logged": "running on threads of this process" in runs[0]["stderr"]}
            child = subprocess.run([sys.executable, __file__, "--steps", index_url, queries, str(folder / "steps.parquet"), name,
                                    repr(time.time())],
                                   cwd=ROOT, capture_output=True, text=True, timeout=900)
            if child.returncode:
                sys.exit(f"--steps {name} failed:\n{child.stderr}")
            figures.update(json.loads(child.stdout.strip().splitlines()[-1]))
            result["paths"][name] = figures
            print(f"| {name} | {figures['wall_s']:.2f} | {figures['cpu_s']:.2f} | {', '.join(f'{w:.1f}' for w in walls)} |", flush=True)
        print("\nwhere the time goes (one fresh process per path replaying the command's steps, seconds):\n")
        print("| step | " + " | ".join(result["paths"]) + " |")
        print("| --- |" + " --- |" * len(result["paths"]))
        for step in STEPS:
            print(f"| {step} | " + " | ".join(f"{p['steps_s'][step]:.2f}" for p in result["paths"].values()) + " |")
        print("| sum of the steps | " + " | ".join(f"{sum(p['steps_s'].values()):.2f}" for p in result["paths"].values()) + " |")
    if "worker processes" in result["paths"]:
        result["speedup"] = result["paths"]["worker processes"]["wall_s"] / result["paths"]["in-process"]["wall_s"]
        print(f"\nin-process vs worker processes: x{result['speedup']:.2f} faster whole command")
    write_json(args.out_json, result)
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--steps"]:  # the child of main(): nothing imported before its clock's first step
        index_url, queries, out, path, launched = sys.argv[2:]
        print(json.dumps(steps(index_url, queries, out, PATHS[path], float(launched))))
    else:
        main()

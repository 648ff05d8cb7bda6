"""Real photos (issue 18): ``patchhash index`` and ``query`` of multi-megapixel wallpapers against the decode limit and imagehash.

    python benchmarks/bench_photos.py --out-json benchmarks/results/photos.json   # 38 files x 30 names
    python benchmarks/bench_photos.py --smoke                                      # 3 small files x 2 names

The images are the 38 JPEG and PNG wallpapers (0.7-18 MP) of Debian's ``mate-backgrounds``
and ``sway-backgrounds``, fetched by ``apt-get download`` and unpacked by ``dpkg-deb -x`` into
``--cache`` (kept for later runs; ``--debs`` names a folder of the ``.deb`` files already
downloaded). As in the issue, each file is hard-linked under ``--names`` names (symbolic links
where hard links cannot be made): 1,140 images. The queries are ``--queries`` of the files
scaled down (to 0.3-0.7 of their size) and saved again as JPEG at quality 70.

Everything runs in one invocation, on the same machine, one step after the other:

a. **decode limit**: ``photo_refs.py decode``, a pool of ``--workers`` Pillow processes that
   only decode each file at reduced size (JPEG ``draft``) and scale it to the model input
   (28x28 grey for the shipped model); images/s from the pool's start to its end;
b. ``patchhash index --workers N`` of the corpus, the whole command (process start, cluster,
   listing, decode, encode, writes, commit): images/s, and its ratio to (a); the shard size
   it chose;
c. CPU seconds of ``patchhash index`` + ``patchhash query`` (top-10 of the queries) as a user runs
   them, with default settings (a corpus of this size is a small job: it runs in the command's
   own process, ``--in-process-max``), and with ``--workers N`` as in (b), against
   ``photo_refs.py imagehash`` with dHash and with pHash (hash of every corpus and query
   image, then the 10 nearest by exact Hamming distance): user + system time of each command
   and all its child processes (``getrusage(RUSAGE_CHILDREN)``: the Dask worker processes are
   children of the command, reaped when it ends; a sampler of the process tree cross-checks);
   precision@10 of each (a hit is a copy of the query's own file);
d. peak memory of the worker while ``patchhash index --workers 1`` indexes a folder that holds
   a ``--big-mp`` megapixel JPEG (generated once into the cache) and 3 wallpapers: the
   high-water mark of resident memory (``VmHWM`` in ``/proc/<pid>/status``) of every process
   under the command, sampled every 20 ms until each exits; the worker is the largest of the
   command's descendants.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import HERE, ROOT, add_smoke_and_out_json, parser, write_json

PACKAGES = ("mate-backgrounds", "sway-backgrounds")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
QUERY_SCALES = (0.5, 0.3, 0.7, 0.4)
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "patchhash-bench" / "photos"


class FetchError(RuntimeError):
    """The wallpaper packages could not be fetched or unpacked (no network, no apt-get)."""


# --------------------------------------------------------------------------- the images


def wallpapers(cache: Path, debs: Path | None = None) -> list[Path]:
    """The image files of :data:`PACKAGES`, unpacked under ``cache`` (fetched on first use)."""
    root = unpack_packages(PACKAGES, cache, debs)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.is_symlink())
    if not files:
        raise FetchError(f"no image files in {root}")
    return files


def unpack_packages(packages: tuple[str, ...] | list[str], cache: Path, debs: Path | None = None) -> Path:
    """The folder under ``cache`` where the Debian ``packages`` are unpacked (on first use).

    ``debs`` is a folder searched for the ``.deb`` files first; missing ones are fetched
    with ``apt-get download`` into ``cache/debs``.
    """
    root = cache / "root"
    fetched = cache / "debs"
    for package in packages:
        done = cache / f"{package}.unpacked"
        if done.exists():
            continue
        fetched.mkdir(parents=True, exist_ok=True)
        deb = _find_deb(package, [d for d in (debs, fetched) if d])
        if deb is None:
            if shutil.which("apt-get") is None:
                raise FetchError(f"no {package}_*.deb in {debs or fetched} and no apt-get to download it")
            got = subprocess.run(["apt-get", "download", package], cwd=fetched, capture_output=True, text=True, timeout=600)
            deb = _find_deb(package, [fetched])
            if got.returncode or deb is None:
                raise FetchError(f"apt-get download {package} failed: {(got.stderr or got.stdout).strip()[-300:]}")
        if shutil.which("dpkg-deb") is None:
            raise FetchError("dpkg-deb is needed to unpack the .deb files")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        done.write_text(deb.name + "\n")
    return root


def _find_deb(package: str, folders: list[Path]) -> Path | None:
    for folder in folders:
        found = sorted(folder.glob(f"{package}_*.deb"))
        if found:
            return found[-1]
    return None


def link_corpus(files: list[Path], names: int, folder: Path) -> list[Path]:
    """Each of ``files`` under ``names`` names in ``folder`` (``n07/012-Dune.jpg``: copy 7 of
    file 12); hard links, or symbolic ones across file systems."""
    out = []
    for copy in range(names):
        sub = folder / f"n{copy:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        for i, src in enumerate(files):
            dst = sub / f"{i:03d}-{src.name}"
            try:
                os.link(src, dst)
            except OSError:
                os.symlink(src, dst)
            out.append(dst)
    return out


def write_queries(files: list[Path], n: int, folder: Path) -> list[Path]:
    """``n`` queries: file ``q % len(files)`` scaled by one of :data:`QUERY_SCALES`, as JPEG q=70."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for q in range(n):
        i = q % len(files)
        scale = QUERY_SCALES[(q // len(files)) % len(QUERY_SCALES)]
        with Image.open(files[i]) as image:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image.draft("RGB", size)
            small = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        path = folder / f"q{q:04d}-{i:03d}.jpg"
        small.save(path, quality=70)
        out.append(path)
    return out


def big_jpeg(cache: Path, megapixels: float) -> Path:
    """A JPEG of about ``megapixels`` MP (4:3, textured: a random image scaled up 8x), made once."""
    import numpy as np
    from PIL import Image

    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    height = int(round(megapixels * 1e6 / width))
    path = cache / f"big-{width}x{height}.jpg"
    if not path.exists():
        seed = np.random.default_rng(18).integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
        Image.fromarray(seed).resize((width, height), Image.Resampling.BICUBIC).save(path.with_suffix(".tmp.jpg"), quality=90)
        path.with_suffix(".tmp.jpg").rename(path)
    return path


def source_of(uri: str) -> int:
    """The wallpaper a corpus or query file was made from (``n07/012-Dune.jpg``, ``q0050-012.jpg``: 12)."""
    name = os.path.basename(uri)
    return int(name.split("-", 1)[0]) if not name.startswith("q") else int(name.rsplit("-", 1)[1].split(".")[0])


# --------------------------------------------------------------------------- measuring commands


class TreeSampler(threading.Thread):
    """Samples a process and its descendants every ``interval`` s: the last ``VmHWM`` (peak
    resident memory) and CPU seconds seen of each, until the process ends."""

    def __init__(self, pid: int, interval: float = 0.02):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_kb: dict[int, int] = {}
        self.cpu_s: dict[int, float] = {}
        self.cmdline: dict[int, str] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for p in procs:
                try:
                    with open(f"/proc/{p.pid}/status") as f:
                        hwm = next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0)
                    times = p.cpu_times()
                    self.peak_kb[p.pid] = max(self.peak_kb.get(p.pid, 0), hwm)
                    self.cpu_s[p.pid] = max(self.cpu_s.get(p.pid, 0.0), times.user + times.system)
                    self.cmdline.setdefault(p.pid, " ".join(p.cmdline())[:120])
                except (OSError, psutil.Error):
                    continue
            self.stop.wait(self.interval)


def run_measured(cmd: list[str], label: str) -> dict:
    """Run ``cmd`` (from the checkout's root); its wall seconds, CPU seconds (it and its reaped
    descendants), the sampled CPU and peak memory of each process of its tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.exit(f"{label} failed ({proc.returncode}):\n{err[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    children = [pid for pid in sampler.peak_kb if pid != proc.pid]
    return {
        "wall_s": wall, "cpu_s": cpu, "sampled_cpu_s": sum(sampler.cpu_s.values()),
        "peak_rss_mb": sampler.peak_kb.get(proc.pid, 0) / 1024,
        "descendants": [{"cmd": sampler.cmdline.get(pid, ""), "peak_rss_mb": sampler.peak_kb[pid] / 1024,
                         "cpu_s": sampler.cpu_s.get(pid, 0.0)} for pid in children],
        "largest_descendant_peak_rss_mb": max((sampler.peak_kb[pid] for pid in children), default=0) / 1024,
        "stdout": out.strip()[-500:],
    }


def patchhash(*args: str) -> list[str]:
    return [sys.executable, "-m", "workflows.cli", *args]


def precision_at_k(tops: dict[str, list[str]], queries: list[Path], k: int, copies: int) -> float:
    """Mean over ``queries`` of the share of their top ``k`` (``tops``: uris by query file
    name) that are copies of the query's own file, of at most the ``copies`` there are (a
    query without hits counts 0)."""
    best = min(k, copies)
    hits = [sum(source_of(u) == source_of(q.name) for u in tops.get(q.name, [])[:best]) / best for q in queries]
    return sum(hits) / len(hits) if hits else 0.0


# --------------------------------------------------------------------------- the benchmark


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--names", type=int, default=30, help="names (links) per file: 30 makes the issue's 1,140 images")
    ap.add_argument("--files", type=int, default=0, help="use only the N smallest files (0: all 38)")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2, help="processes of the decode pool, imagehash and patchhash index/query")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--big-mp", type=float, default=100.0, help="megapixels of the JPEG of step d")
    ap.add_argument("--model", default="fashion-mnist", help="model directory or built-in name")
    ap.add_argument("--also-shard-size", type=int, help="also time step b with this explicit --shard-size (e.g. 10000, "
                    "the fixed default before issue 18)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of step b (and of --also-shard-size, alternately); the "
                    "median run is reported")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the packages are unpacked and the big JPEG kept")
    ap.add_argument("--debs", type=Path, help="a folder holding the .deb files already (else apt-get download)")
    ap.add_argument("--workdir", help="where the corpus and indexes go (default: a temporary directory, removed)")
    ap.add_argument("--skip-unfetchable", action="store_true",
                    help="exit 0 with {\"skipped\": reason} when the packages cannot be fetched (no network); --smoke implies it")
    add_smoke_and_out_json(ap, "3 small files x 2 names, 3 queries, a 4 MP JPEG, 1 worker; skipped without network")
    args = ap.parse_args(argv)
    if args.smoke:
        args.names, args.files, args.queries, args.big_mp, args.workers = 2, 3, 3, 4.0, 1
        args.skip_unfetchable = True
    args.cache.mkdir(parents=True, exist_ok=True)
    try:
        files = wallpapers(args.cache, args.debs)
    except FetchError as exc:
        if not args.skip_unfetchable:
            sys.exit(f"cannot get the wallpapers: {exc}")
        print(f"skipped: {exc}")
        result = {"skipped": str(exc)}
        write_json(args.out_json, result)
        return result
    if args.files:
        files = sorted(files, key=lambda p: (p.stat().st_size, p.name))[: args.files]
    big = big_jpeg(args.cache, args.big_mp)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        corpus = link_corpus(files, args.names, work / "corpus")
        if args.smoke:  # step d measured within step b: one command less
            os.symlink(big, work / "corpus" / f"999-{big.name}")
            corpus.append(work / "corpus" / f"999-{big.name}")
        queries = write_queries(files, args.queries, work / "queries")
        paths = work / "paths.json"
        paths.write_text(json.dumps({"corpus": [str(p) for p in corpus], "queries": [str(p) for p in queries]}))
        n, w = len(corpus), str(args.workers)
        print(f"{len(files)} files x {args.names} names = {n} images ({sum(p.stat().st_size for p in files) / 1e6:.1f} MB of "
              f"distinct files), {len(queries)} queries, {args.workers} workers", flush=True)

        refs = [sys.executable, str(HERE / "photo_refs.py")]
        decode = run_measured([*refs, "decode", "--paths", str(paths), "--out", str(work / "decode.json"), "--processes", w], "decode")
        decode.update(json.loads((work / "decode.json").read_text()))
        index_url = str(work / "index")
        runs: dict[str, list[dict]] = {"auto": [], "fixed": []}
        for r in range(args.repeats):  # the default shard size and --also-shard-size alternately
            for label in ("auto", "fixed") if r % 2 == 0 else ("fixed", "auto"):
                if label == "fixed" and not args.also_shard_size:
                    continue
                url = index_url if (label, r) == ("auto", 0) else str(work / f"index-{label}-{r}")
                extra = ["--shard-size", str(args.also_shard_size)] if label == "fixed" else []
                run = run_measured(patchhash("index", "--corpus", str(work / "corpus"), "--index", url, "--model", args.model,
                                             "--workers", w, *extra), "patchhash index")
                run["images_per_s"] = n / run["wall_s"]
                run["worker_cpu_s"] = [round(d["cpu_s"], 1) for d in run["descendants"] if "spawn_main" in d["cmd"]]
                run["shard_size"] = json.loads((Path(url) / "manifest.json").read_text())["shard_size"]
                runs[label].append(run)
        build, fixed = _median_run(runs["auto"]), _median_run(runs["fixed"])
        # the commands a user runs, default settings: a corpus under --in-process-max needs no worker processes
        plain = run_measured(patchhash("index", "--corpus", str(work / "corpus"), "--index", str(work / "index-defaults"),
                                       "--model", args.model), "patchhash index (defaults)")
        plain_search = run_measured(patchhash("query", "--index", str(work / "index-defaults"), "--queries",
                                              str(work / "queries"), "--out", str(work / "results-defaults.parquet"),
                                              "--k", str(args.k)), "patchhash query (defaults)")
        manifest = json.loads((work / "index" / "manifest.json").read_text())
        results = work / "results.parquet"
        search = run_measured(patchhash("query", "--index", index_url, "--queries", str(work / "queries"), "--out", str(results),
                                        "--k", str(args.k), "--workers", w), "patchhash query")
        import pyarrow.parquet as pq

        table = pq.read_table(results).to_pydict()
        ranked: dict[str, list[tuple[int, str]]] = {}
        for q, rank, uri in zip(table["query_uri"], table["rank"], table["image_uri"]):
            if uri is not None:
                ranked.setdefault(os.path.basename(q), []).append((rank, uri))
        ours_p10 = precision_at_k({q: [u for _, u in sorted(r)] for q, r in ranked.items()}, queries, args.k, args.names)

        hashes = {}
        for kind in ("dhash", "phash"):
            out = work / f"{kind}.json"
            hashes[kind] = run_measured([*refs, "imagehash", "--kind", kind, "--paths", str(paths), "--out", str(out),
                                         "--processes", w, "--k", str(args.k)], kind)
            got = json.loads(out.read_text())
            hashes[kind]["images_per_s"] = n / hashes[kind]["wall_s"]
            tops = {q.name: [str(corpus[i]) for i in top] for q, top in zip(queries, got["top"])}
            hashes[kind]["precision_at_k"] = precision_at_k(tops, queries, args.k, args.names)

        memory, baseline, big_manifest = build, None, manifest
        if not args.smoke:
            small_folder, big_folder = work / "small", work / "big"
            link_corpus(files[:3], 1, small_folder)
            link_corpus(files[:3], 1, big_folder)
            os.symlink(big, big_folder / f"999-{big.name}")
            baseline = run_measured(patchhash("index", "--corpus", str(small_folder), "--index", str(work / "small-index"),
                                              "--model", args.model, "--workers", "1"), "patchhash index of 3 wallpapers")
            memory = run_measured(patchhash("index", "--corpus", str(big_folder), "--index", str(work / "big-index"),
                                            "--model", args.model, "--workers", "1"), "patchhash index of the big JPEG")
            big_manifest = json.loads((work / "big-index" / "manifest.json").read_text())

    ours_cpu = plain["cpu_s"] + plain_search["cpu_s"]
    workers_cpu = build["cpu_s"] + search["cpu_s"]
    figures = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "files": len(files), "images": n, "queries": len(queries),
        "distinct_bytes": sum(p.stat().st_size for p in files),
        "decode_limit": without_samples(decode),
        "patchhash_index": {**without_samples(build), "shard_size": manifest["shard_size"], "shards": len(manifest["shards"])},
        "patchhash_query": {**without_samples(search), "precision_at_k": ours_p10},
        "patchhash_index_defaults": without_samples(plain),
        "patchhash_query_defaults": without_samples(plain_search),
        "imagehash": {kind: without_samples(h) for kind, h in hashes.items()},
        "patchhash_index_fixed_shard_size": without_samples(fixed) if fixed else None,
        "ratio_index_to_decode_limit": build["images_per_s"] / decode["images_per_s"],
        "patchhash_cpu_s": ours_cpu,
        "cpu_ratio_to_dhash": ours_cpu / hashes["dhash"]["cpu_s"],
        "cpu_ratio_to_phash": ours_cpu / hashes["phash"]["cpu_s"],
        "patchhash_cpu_s_with_workers": workers_cpu,
        "cpu_ratio_to_dhash_with_workers": workers_cpu / hashes["dhash"]["cpu_s"],
        "big_jpeg": {"megapixels": args.big_mp, "file": big.name, "bytes": big.stat().st_size,
                     "indexed_ok": sum(s["n_ok"] for s in big_manifest["shards"]),
                     "errors": sum(s["n_errors"] for s in big_manifest["shards"]),
                     "worker_peak_rss_mb": memory["largest_descendant_peak_rss_mb"],
                     "worker_peak_rss_mb_without_it": baseline["largest_descendant_peak_rss_mb"] if baseline else None,
                     "measured_in": "step b (smoke)" if args.smoke else "its own run, --workers 1",
                     "client_peak_rss_mb": memory["peak_rss_mb"], "wall_s": memory["wall_s"],
                     "descendants": memory["descendants"]},
    }
    _print(figures, args)
    write_json(args.out_json, figures)
    return figures


def _median_run(runs: list[dict]) -> dict | None:
    """The run of median images/s (its figures kept whole), with every run's images/s."""
    if not runs:
        return None
    ordered = sorted(runs, key=lambda r: r["images_per_s"])
    return {**ordered[(len(ordered) - 1) // 2], "runs_images_per_s": [r["images_per_s"] for r in runs],
            "runs_cpu_s": [r["cpu_s"] for r in runs]}


def without_samples(measured: dict) -> dict:
    """A :func:`run_measured` result without its per-process samples and output, as the JSON keeps it."""
    return {k: v for k, v in measured.items() if k not in ("descendants", "stdout")}


def _print(f: dict, args) -> None:
    d, ix, q, ih, big = f["decode_limit"], f["patchhash_index"], f["patchhash_query"], f["imagehash"], f["big_jpeg"]
    print(f"\n| step | wall s | images/s | CPU s (sampled) | P@{args.k} |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| a. decode limit ({args.workers}-process Pillow pool, reduced decode) | {d['seconds']:.1f} | {d['images_per_s']:.1f} | "
          f"{d['cpu_s']:.1f} ({d['sampled_cpu_s']:.1f}) | |")
    print(f"| b. patchhash index --workers {args.workers} (whole command; shard size {ix['shard_size']}, {ix['shards']} shards; "
          f"workers' CPU s {ix['worker_cpu_s']}) | {ix['wall_s']:.1f} | {ix['images_per_s']:.1f} | {ix['cpu_s']:.1f} "
          f"({ix['sampled_cpu_s']:.1f}) | |")
    if f["patchhash_index_fixed_shard_size"]:
        fx = f["patchhash_index_fixed_shard_size"]
        print(f"| b. the same with --shard-size {fx['shard_size']} (workers' CPU s {fx['worker_cpu_s']}) | {fx['wall_s']:.1f} | "
              f"{fx['images_per_s']:.1f} | {fx['cpu_s']:.1f} ({fx['sampled_cpu_s']:.1f}) | |")
    print(f"| c. patchhash query ({f['queries']} queries, whole command) | {q['wall_s']:.1f} | | {q['cpu_s']:.1f} "
          f"({q['sampled_cpu_s']:.1f}) | {q['precision_at_k']:.2f} |")
    for name, run in (("index", f["patchhash_index_defaults"]), ("query", f["patchhash_query_defaults"])):
        print(f"| c. patchhash {name}, default settings (in-process) | {run['wall_s']:.1f} | | {run['cpu_s']:.1f} "
              f"({run['sampled_cpu_s']:.1f}) | |")
    for kind, h in ih.items():
        print(f"| c. imagehash {kind} (hash corpus + queries, exact Hamming top-{args.k}) | {h['wall_s']:.1f} | "
              f"{h['images_per_s']:.1f} | {h['cpu_s']:.1f} ({h['sampled_cpu_s']:.1f}) | {h['precision_at_k']:.2f} |")
    print(f"\nindex / decode limit: {f['ratio_index_to_decode_limit']:.2f} (target >= 0.7)")
    print(f"CPU, patchhash index + query (default settings) / imagehash: {f['cpu_ratio_to_dhash']:.2f}x dHash, "
          f"{f['cpu_ratio_to_phash']:.2f}x pHash (target <= 1 x dHash); with --workers {args.workers}: "
          f"{f['cpu_ratio_to_dhash_with_workers']:.2f}x dHash")
    without = big["worker_peak_rss_mb_without_it"]
    print(f"d. {big['megapixels']:g} MP JPEG ({big['bytes'] / 1e6:.1f} MB) + 3 wallpapers ({big['measured_in']}): "
          f"worker peak RSS {big['worker_peak_rss_mb']:.0f} MB (target < 1024)"
          + (f", {without:.0f} MB for the 3 wallpapers alone" if without else "")
          + f"; client {big['client_peak_rss_mb']:.0f} MB; {big['indexed_ok']} indexed, {big['errors']} unreadable")


if __name__ == "__main__":
    main()

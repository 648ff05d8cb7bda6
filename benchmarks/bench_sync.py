"""Nights of churn on a mirrored index: is every night's cost flat, and the index as small and fast
as a fresh build of the same files?

Each night ``--churn`` of the live images change (adds, deletes and overwrites in the ratio
``--mix``), then the nightly job runs as an operator would run it: ``patchhash index`` on the
same corpus (the sync), the automatic compaction that follows it (the same policy and budget
as ``patchhash index`` applies; run as a step of its own here so that its cost is measured
apart), then ``patchhash gc`` (here with ``--min-age 0``, so that the bytes kept are the
steady state, not a day's worth of old versions). Per night it records the seconds and bytes
written (files created or rewritten under the index) of the sync and of the compaction, the
objects and bytes the current version references, gc's seconds, and default-mode ms/query (median of ``--repeats`` runs of ``--queries`` Fashion-MNIST
test images, one block). At the end a fresh index of the same live files is built with the
index's own partition size, and the two answer the queries alternately (``--repeats + 2``
runs each, medians): the ratios current / fresh are the point.

Two corpus layouts, both through the real listing, fingerprinting and encoding path:

* ``files`` (default): PNG files in folders of 1,000; an overwrite writes new pixels to a file.
  Modification times are set to simulated nights in the past, as a real nightly job sees them.
* ``rows``: a Parquet list of ``chunk.npy#row`` uris into ``.npy`` files of 1,000 images each
  (cheap to create at 1M images); adds go to a new file per night, deletes drop uris from the
  list, and an overwrite rewrites whole files (every row of the file changes).

Images are Fashion-MNIST's 70,000, then copies shifted by up to 3 pixels, flipped and with a
little noise. ``--model tiny`` trains a small model (16 bits, 16 filters) on 512 images first:
it encodes ~50x faster than the shipped one, which keeps a 1M-image run to minutes::

    python benchmarks/bench_sync.py --images 100000 --nights 30 --partitions 10           # shipped model, PNG files
    python benchmarks/bench_sync.py --images 1000000 --nights 10 --partitions 10 --layout rows --model tiny
    python benchmarks/bench_sync.py --smoke
"""

from __future__ import annotations

import gzip
import logging
import os
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from _common import TEST_IMAGES, TRAIN_IMAGES, add_smoke_and_out_json, parser, write_json

PER_FOLDER = 1000
DAY = 86_400


def fashion_mnist(path: str) -> np.ndarray:
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)


class Pool:
    """Distinct images on demand: Fashion-MNIST, then shifted, flipped, noisy copies."""

    def __init__(self, seed: int = 0):
        self.base = np.concatenate([fashion_mnist(TRAIN_IMAGES), fashion_mnist(TEST_IMAGES)])
        self.rng = np.random.default_rng(seed)
        self.next = 0

    def take(self, n: int) -> np.ndarray:
        out = np.empty((n, 28, 28), np.uint8)
        for i in range(n):
            j = self.next + i
            image = self.base[j % len(self.base)]
            if j >= len(self.base):
                dy, dx = self.rng.integers(-3, 4, 2)
                image = np.roll(np.roll(image, dy, 0), dx, 1)
                image = image[:, ::-1] if self.rng.random() < 0.5 else image
                image = np.clip(image.astype(np.int16) + self.rng.integers(-8, 9, image.shape), 0, 255).astype(np.uint8)
            out[i] = image
        self.next += n
        return out


class FilesCorpus:
    """PNG files in folders of PER_FOLDER, with simulated modification times."""

    def __init__(self, root: Path):
        self.root = root
        self.files: list[Path] = []
        self.serial = 0

    @property
    def url(self) -> str:
        return str(self.root)

    def _write(self, path: Path, pixels: np.ndarray, when: float) -> None:
        from PIL import Image

        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
        os.utime(path, (when, when))

    def add(self, images: np.ndarray, when: float) -> None:
        for pixels in images:
            path = self.root / f"d{self.serial // PER_FOLDER:05d}" / f"img{self.serial:08d}.png"
            self._write(path, pixels, when)
            self.files.append(path)
            self.serial += 1

    def delete(self, picks: np.ndarray) -> None:
        for i in sorted(picks.tolist(), reverse=True):
            self.files.pop(i).unlink()

    def overwrite(self, n: int, rng, pool: Pool, when: float) -> int:
        """New pixels in ``n`` files picked at random; returns the images changed."""
        for i, pixels in zip(rng.choice(len(self.files), n, replace=False).tolist(), pool.take(n)):
            self._write(self.files[i], pixels, when)
        return n

    def __len__(self) -> int:
        return len(self.files)


class RowsCorpus:
    """A Parquet list of ``file.npy#row`` uris into .npy files of PER_FOLDER images."""

    def __init__(self, root: Path):
        self.root = root
        (root / "chunks").mkdir(parents=True, exist_ok=True)
        self.uris: list[str] = []
        self.serial = 0

    @property
    def url(self) -> str:
        return str(self.root / "list.parquet")

    def _chunk(self, images: np.ndarray, when: float, name: str | None = None) -> Path:
        path = self.root / "chunks" / (name or f"c{self.serial:06d}.npy")
        np.save(path, images)
        os.utime(path, (when, when))
        return path

    def add(self, images: np.ndarray, when: float) -> None:
        for start in range(0, len(images), PER_FOLDER):
            part = images[start : start + PER_FOLDER]
            path = self._chunk(part, when)
            self.serial += 1
            self.uris += [f"{path}#{r}" for r in range(len(part))]

    def delete(self, picks: np.ndarray) -> None:
        drop = set(picks.tolist())
        self.uris = [u for i, u in enumerate(self.uris) if i not in drop]

    def overwrite(self, n: int, rng, pool: Pool, when: float) -> int:
        """Rewrite about ``n`` images' worth of whole files (every row of a file changes); returns
        the images changed that the list still names."""
        files = sorted({u.rpartition("#")[0] for u in self.uris})
        listed = {}
        for u in self.uris:
            listed[u.rpartition("#")[0]] = listed.get(u.rpartition("#")[0], 0) + 1
        changed = 0
        for path in rng.choice(files, max(1, round(n / PER_FOLDER)), replace=False).tolist():
            rows = len(np.load(path, mmap_mode="r"))
            self._chunk(pool.take(rows), when, Path(path).name)
            changed += listed[path]
        return changed

    def save_list(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"uri": self.uris}), self.url)

    def __len__(self) -> int:
        return len(self.uris)


def files_state(root: str) -> dict[str, tuple[int, int]]:
    out = {}
    for path in Path(root).rglob("*"):
        if path.is_file():
            st = path.stat()
            out[str(path)] = (st.st_size, st.st_mtime_ns)
    return out


def written_bytes(before: dict, after: dict) -> tuple[int, int]:
    """Bytes and files created or rewritten between two :func:`files_state`."""
    changed = [p for p, meta in after.items() if before.get(p) != meta]
    return sum(after[p][0] for p in changed), len(changed)


def current_size(url: str) -> tuple[int, int]:
    """Objects and bytes the current version references."""
    from storage.gc import plan_gc

    plan = plan_gc(url, 1, 0)
    return plan.referenced, plan.referenced_bytes


def ms_per_query(url: str, queries: str, client, repeats: int) -> float:
    from workflows.query import QuerySettings, query

    times = []
    for r in range(repeats + 1):
        out = tempfile.mktemp(suffix=".parquet")
        started = time.perf_counter()
        report = query(url, queries, out, QuerySettings(k=10, block_size=10_000), client=client)
        times.append(1000 * (time.perf_counter() - started) / report.n_queries)
        os.unlink(out)
    return statistics.median(times[1:])  # the first run warms each worker's cache


def train_tiny(work: Path) -> str:
    from pipeline.model import ModelConfig
    from pipeline.train import TrainSettings, save_model, train_autoencoder

    config = ModelConfig((28, 28, 1), bits=16, patch=8, stride=4, filters=16, widths=(16,))
    result = train_autoencoder(fashion_mnist(TRAIN_IMAGES)[:512, :, :, None], config, TrainSettings(epochs=1, batch_size=64, seed=1))
    out = str(work / "tiny-model")
    save_model(out, "tiny", config, result, {"corpus": "fashion-mnist[:512]"})
    return out


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--nights", type=int, default=30)
    ap.add_argument("--churn", type=float, default=0.02, help="share of the live images changed each night")
    ap.add_argument("--mix", default="0.4,0.3,0.3", help="shares of adds, deletes and overwrites in the churn")
    ap.add_argument("--layout", choices=("files", "rows"), default="files")
    ap.add_argument("--model", default="fashion-mnist", help="a model directory, fashion-mnist, or tiny (trained first)")
    ap.add_argument("--partitions", type=int, default=10)
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", help="where corpus and indexes go (default: a temporary directory, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the corpus and indexes in --workdir (to look at them)")
    add_smoke_and_out_json(ap, "600 images, 3 nights, the tiny model")
    args = ap.parse_args(argv)
    if args.smoke:
        args.images, args.nights, args.churn, args.model = 600, 3, 0.05, "tiny"
        args.partitions, args.shard_size, args.queries, args.repeats, args.workers = 3, 100, 20, 1, 1
    adds, deletes, overwrites = (float(v) for v in args.mix.split(","))
    logging.basicConfig(level=logging.WARNING)

    from workflows.cluster import ClusterSettings, dask_client
    from workflows.index import IndexSettings, index
    from workflows.maintenance import GcSettings, compact, run_gc

    rng = np.random.default_rng(1)
    pool = Pool()
    with (nullcontext(tempfile.mkdtemp(dir=args.workdir)) if args.keep else tempfile.TemporaryDirectory(dir=args.workdir)) as tmp:
        work = Path(tmp)
        model = train_tiny(work) if args.model == "tiny" else args.model
        queries = str(work / "queries.npy")
        np.save(queries, fashion_mnist(TEST_IMAGES)[: args.queries])
        corpus = (FilesCorpus if args.layout == "files" else RowsCorpus)(work / "corpus")
        night0 = time.time() - (args.nights + 2) * DAY
        corpus.add(pool.take(args.images), night0)
        if isinstance(corpus, RowsCorpus):
            corpus.save_list()
        url = str(work / "index")
        settings = IndexSettings(shard_size=args.shard_size, partitions=args.partitions)
        sync_only = IndexSettings(compaction=None)
        rows = []
        with dask_client(ClusterSettings(workers=args.workers)) as client:
            started = time.perf_counter()
            index(corpus.url, url, model, settings, client=client)
            build_s = time.perf_counter() - started
            objects, size = current_size(url)
            print(f"built {args.images:,} images in {build_s:.1f} s: {objects} objects, {size / 1e6:.1f} MB", flush=True)
            print("| night | added | removed | changed | sync s | sync wrote MB (files) | compacted | compaction s | compaction wrote MB "
                  "| objects | MB | gc s | ms/query |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
            for night in range(1, args.nights + 1):
                when = night0 + night * DAY
                n = round(args.churn * len(corpus))
                corpus.overwrite(round(n * overwrites), rng, pool, when)
                corpus.delete(rng.choice(len(corpus), round(n * deletes), replace=False))
                corpus.add(pool.take(round(n * adds)), when)
                if isinstance(corpus, RowsCorpus):
                    corpus.save_list()
                before = files_state(url)
                started = time.perf_counter()
                report = index(corpus.url, url, None, sync_only, client=client)
                sync_s = time.perf_counter() - started
                after_sync = files_state(url)
                written, n_written = written_bytes(before, after_sync)
                started = time.perf_counter()
                compacted = compact(url, settings.compaction, client=client, auto=True)
                compact_s = time.perf_counter() - started
                compact_written, _ = written_bytes(after_sync, files_state(url))
                started = time.perf_counter()
                run_gc(url, GcSettings(keep_versions=1, min_age=0))
                gc_s = time.perf_counter() - started
                objects, size = current_size(url)
                row = {"night": night, **report.counts(), "sync_s": sync_s, "written_bytes": written, "written_files": n_written,
                       "compacted": compacted.partitions if compacted else 0, "compact_s": compact_s,
                       "compact_written_bytes": compact_written, "objects": objects, "bytes": size,
                       "gc_s": gc_s, "ms_per_query": ms_per_query(url, queries, client, args.repeats), "live": report.n_images,
                       "phases_s": report.phases}
                rows.append(row)
                print(f"| {night} | {row['added']} | {row['removed']} | {row['changed']} | {sync_s:.1f} | {written / 1e6:.2f} ({n_written}) | "
                      f"{row['compacted']} | {compact_s:.1f} | {compact_written / 1e6:.2f} | {objects} | {size / 1e6:.1f} | {gc_s:.1f} | "
                      f"{row['ms_per_query']:.2f} |", flush=True)
            fresh_url = str(work / "fresh")
            # the same geometry: partitions of the index's own partition_size (set when it was created)
            from storage.manifest import read_manifest

            size = read_manifest(url).partition_size
            fresh_settings = IndexSettings(shard_size=args.shard_size, partitions=-(-rows[-1]["live"] // size))
            started = time.perf_counter()
            index(corpus.url, fresh_url, model, fresh_settings, client=client)
            assert read_manifest(fresh_url).partition_size == size, "the fresh build's partitions differ from the index's"
            fresh_s = time.perf_counter() - started
            fresh_objects, fresh_size = current_size(fresh_url)
            # side by side: the two indexes answered alternately, medians of the runs
            pairs = [(ms_per_query(url, queries, client, 1), ms_per_query(fresh_url, queries, client, 1)) for _ in range(args.repeats + 2)]
            last = rows[-1]
            last["ms_per_query"] = statistics.median(a for a, _ in pairs)
            fresh_ms = statistics.median(b for _, b in pairs)
            summary = {
                "build_s": build_s, "fresh_build_s": fresh_s, "fresh_objects": fresh_objects, "fresh_bytes": fresh_size,
                "fresh_ms_per_query": fresh_ms,
                "objects_ratio": last["objects"] / fresh_objects, "bytes_ratio": last["bytes"] / fresh_size,
                "ms_per_query_ratio": last["ms_per_query"] / fresh_ms,
                # shares of the index's bytes that night
                "median_written_share": statistics.median(r["written_bytes"] / r["bytes"] for r in rows),
                "max_written_share": max(r["written_bytes"] / r["bytes"] for r in rows),
                "compaction_nights": sum(1 for r in rows if r["compacted"]),
                "max_compaction_written_share": max(r["compact_written_bytes"] / r["bytes"] for r in rows),
                "mean_night_written_share": statistics.mean((r["written_bytes"] + r["compact_written_bytes"]) / r["bytes"] for r in rows),
                "median_sync_s": statistics.median(r["sync_s"] for r in rows),
                "max_sync_s": max(r["sync_s"] for r in rows),
            }
    print(f"\nafter {args.nights} nights vs a fresh build of the same {last['live']:,} files: objects x{summary['objects_ratio']:.2f} "
          f"({last['objects']} / {fresh_objects}), bytes x{summary['bytes_ratio']:.2f} ({last['bytes'] / 1e6:.1f} / {fresh_size / 1e6:.1f} MB), "
          f"ms/query x{summary['ms_per_query_ratio']:.2f} ({last['ms_per_query']:.2f} / {fresh_ms:.2f})\n"
          f"a sync wrote median {100 * summary['median_written_share']:.1f}%, max {100 * summary['max_written_share']:.1f}% of the index's bytes; "
          f"compaction ran on {summary['compaction_nights']} of {args.nights} nights and wrote at most "
          f"{100 * summary['max_compaction_written_share']:.1f}%; all writes averaged {100 * summary['mean_night_written_share']:.1f}% a night; "
          f"sync median {summary['median_sync_s']:.1f} s, max {summary['max_sync_s']:.1f} s (fresh build {fresh_s:.1f} s)")
    result = {"args": vars(args), "nights": rows, "summary": summary}
    write_json(args.out_json, result)
    return result


if __name__ == "__main__":
    main()

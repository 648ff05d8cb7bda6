"""``benchmarks/bench_photos.py`` (issue 18): its smoke run, and its helpers on small files.

The smoke run needs Debian's ``mate-backgrounds`` and ``sway-backgrounds`` (``apt-get
download``, once per machine, into ``~/.cache/patchhash-bench/photos``); without network or
apt-get it is skipped. No timing is asserted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from smoke_runs import smoke_run

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_photos  # noqa: E402 - after the path above
import photo_refs  # noqa: E402


@smoke_run("bench_photos.py", "--skip-unfetchable")
def test_bench_photos_smoke(smoke):
    figures, stdout = smoke
    if "skipped" in figures:
        pytest.skip(f"the wallpaper packages cannot be fetched here: {figures['skipped']}")
    assert figures["images"] == 3 * 2 + 1 and figures["queries"] == 3  # 3 files x 2 names + the big JPEG
    assert figures["decode_limit"]["images_per_s"] > 0 and figures["patchhash_index"]["images_per_s"] > 0
    assert figures["patchhash_index"]["shards"] >= 1 and figures["patchhash_cpu_s"] > 0
    assert figures["imagehash"]["dhash"]["cpu_s"] > 0 and figures["imagehash"]["phash"]["cpu_s"] > 0
    assert figures["imagehash"]["dhash"]["precision_at_k"] == 1.0  # exact copies and mild rescales: dHash finds them
    big = figures["big_jpeg"]
    assert big["indexed_ok"] == 7 and big["worker_peak_rss_mb"] > big["client_peak_rss_mb"] / 10
    assert "index / decode limit" in stdout and "worker peak RSS" in stdout


def test_corpus_names_tell_the_source_and_queries_are_smaller_jpegs(tmp_path):
    files = []
    for i, size in enumerate([(64, 48), (40, 90)]):
        path = tmp_path / f"w{i}.png"
        Image.fromarray(np.full((size[1], size[0], 3), 40 * i, np.uint8)).save(path)
        files.append(path)
    corpus = bench_photos.link_corpus(files, 3, tmp_path / "corpus")
    assert len(corpus) == 6 and [bench_photos.source_of(str(p)) for p in corpus] == [0, 1] * 3
    assert all(p.stat().st_ino == files[bench_photos.source_of(str(p))].stat().st_ino for p in corpus)  # hard links
    queries = bench_photos.write_queries(files, 3, tmp_path / "queries")
    assert [bench_photos.source_of(q.name) for q in queries] == [0, 1, 0]
    with Image.open(queries[0]) as q:
        assert q.format == "JPEG" and q.size == (32, 24)  # scaled by 0.5
    tops = {queries[0].name: [str(corpus[0]), str(corpus[2]), str(corpus[1])], queries[1].name: [str(corpus[1])]}
    assert bench_photos.precision_at_k(tops, queries, k=10, copies=3) == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)


def test_reduced_decode_and_hamming_rank(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8)).save(path)
    pixels = photo_refs.reduced_decode(str(path))
    assert pixels.shape == (28, 28) and pixels.dtype == np.uint8
    corpus = np.array([0b1111, 0b0001, 0b0111, 0], dtype=np.uint64)
    assert photo_refs.rank(corpus, np.array([0b0011], dtype=np.uint64), 3) == [[1, 2, 0]]


def test_big_jpeg_is_made_once(tmp_path):
    path = bench_photos.big_jpeg(tmp_path, 0.5)
    with Image.open(path) as image:
        assert image.format == "JPEG" and abs(image.width * image.height - 500_000) < 2_000
    stamp = path.stat().st_mtime_ns
    assert bench_photos.big_jpeg(tmp_path, 0.5) == path and path.stat().st_mtime_ns == stamp

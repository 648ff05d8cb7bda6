"""Batch queries: exact seed-mode results, error rows, formats, the HTML report, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import zarr
from PIL import Image
from reference import reference_rerank_search, reference_seed_search

from storage import ConfigError, CorpusError
from workflows.query import QuerySettings, query


@pytest.fixture(scope="module")
def small_index(make_index, fmnist_train):
    """An index of 500 real images cut into 4 partitions."""
    return make_index(fmnist_train[:500], shard_size=64, partitions=4)[1]


@pytest.fixture(scope="module")
def query_npy(tmp_path_factory, fmnist_train):
    path = tmp_path_factory.mktemp("queries") / "q.npy"
    # 40 unseen images and 10 indexed ones (which must find themselves first)
    np.save(path, np.concatenate([fmnist_train[1000:1040, :, :, 0], fmnist_train[100:110, :, :, 0]]))
    return str(path)


def _encode(model_dir: str, images: np.ndarray) -> np.ndarray:
    from pipeline.encode import load_encoder

    return load_encoder(model_dir).encode(images).reshape(len(images), -1)


def _results(path: str) -> dict[int, list[tuple[int, float]]]:
    table = pq.read_table(path).to_pydict()
    out: dict[int, list] = {}
    for q, r, i, s in zip(table["query_id"], table["rank"], table["image_id"], table["score"]):
        out.setdefault(q, []).append((r, i, s))
    return {q: [(i, s) for _, i, s in sorted(v)] for q, v in out.items()}


@pytest.mark.parametrize("threshold, k", [(3, 10), (0, 5), (2, 40), (5, 3)])
def test_seed_mode_equals_brute_force_reference(client, small_index, query_npy, tmp_path, threshold, k):
    out = str(tmp_path / "r.parquet")
    report = query(small_index, query_npy, out, QuerySettings(k=k, threshold=threshold, mode="seed", block_size=16), client=client)
    assert report.n_queries == 50 and report.n_failed == 0
    codes = zarr.open_array(f"{small_index}/codes", mode="r")[:].reshape(500, -1)
    queries = _encode(f"{small_index}/model", np.load(query_npy)[..., None])
    expected = reference_seed_search(queries, codes, np.arange(500), threshold, k)
    got = _results(out)
    for q in range(50):
        assert got.get(q, []) == [(i, float(s)) for i, s in expected[q]], f"query {q}"
    assert all(got[q][0][0] == 100 + (q - 40) for q in range(40, 50))  # indexed images find themselves


@pytest.mark.parametrize("threshold, k, shortlist, fraction, cap, budget", [
    (3, 10, 400, 0.1, 300, 100_000), (1, 10, 100, 1.0, 300, 100_000), (0, 5, 20, 0.3, 300, 100_000), (2, 3, 1, 1.0, 300, 100_000),
    (3, 10, 50, 1.0, 20, 400),  # the bucket cap in images and the vote budget both bind
])
def test_default_mode_equals_reference_per_partition(client, small_index, query_npy, tmp_path, threshold, k, shortlist, fraction, cap, budget):
    """The whole job (4 partitions, Dask, merge) against the reference run on each partition."""
    from storage.manifest import read_manifest

    out = str(tmp_path / "r.parquet")
    query(small_index, query_npy, out,
          QuerySettings(k=k, threshold=threshold, shortlist=shortlist, max_bucket_fraction=fraction, max_bucket=cap,
                        vote_budget=budget, block_size=16), client=client)
    codes = zarr.open_array(f"{small_index}/codes", mode="r")[:].reshape(500, -1)
    queries = _encode(f"{small_index}/model", np.load(query_npy)[..., None])
    parts = [reference_rerank_search(queries, codes[p.start:p.stop], np.arange(p.start, p.stop), threshold, 16, k, shortlist,
                                     max_bucket=min(cap, int(fraction * (p.stop - p.start))), vote_budget=budget)
             for p in read_manifest(small_index).partitions]
    assert len(parts) == 4
    got = _results(out)
    for q in range(50):
        expected = sorted((hit for part in parts for hit in part[q]), key=lambda h: (-h[1], h[0]))[:k]
        assert got.get(q, []) == [(i, float(s)) for i, s in expected], f"query {q}"
    if fraction == 1.0 and cap == 300:  # indexed images find themselves (or an identical code grid) first, with every bit equal
        assert all(got[q][0][1] == 16 * 49 for q in range(40, 50))


def test_results_do_not_depend_on_blocks_or_window(client, small_index, query_npy, tmp_path):
    a, b = str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")
    query(small_index, query_npy, a, QuerySettings(mode="seed", block_size=7, max_blocks_in_flight=1), client=client)
    query(small_index, query_npy, b, QuerySettings(mode="seed", block_size=1000), client=client)
    assert pq.read_table(a).equals(pq.read_table(b))


def test_a_tree_of_merges_gives_the_results_of_one_merge(client, small_index, query_npy, tmp_path, monkeypatch):
    import workflows.query as query_module

    one, tree = str(tmp_path / "one.parquet"), str(tmp_path / "tree.parquet")
    query(small_index, query_npy, one, QuerySettings(block_size=20), client=client)
    monkeypatch.setattr(query_module, "_MERGE_FAN_IN", 2)  # 4 partitions: two levels of merges
    query(small_index, query_npy, tree, QuerySettings(block_size=20), client=client)
    assert pq.read_table(one).equals(pq.read_table(tree))


def test_csv_and_jsonl_hold_the_same_rows(client, small_index, query_npy, tmp_path):
    base = pq.read_table(_run(client, small_index, query_npy, tmp_path / "r.parquet")).to_pylist()
    csv_rows = pacsv.read_csv(_run(client, small_index, query_npy, tmp_path / "r.csv")).to_pylist()
    jsonl = [json.loads(line) for line in open(_run(client, small_index, query_npy, tmp_path / "r.jsonl"))]
    assert jsonl == base
    assert [(r["query_id"], r["rank"], r["image_id"], r["score"]) for r in csv_rows] == [
        (r["query_id"], r["rank"], r["image_id"], r["score"]) for r in base
    ]


def _run(client, index_url, queries, out) -> str:
    query(index_url, queries, str(out), QuerySettings(mode="seed"), client=client)
    return str(out)


def test_unreadable_queries_get_an_error_row_and_the_others_are_answered(client, small_index, fmnist_train, tmp_path):
    folder = tmp_path / "queries"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(fmnist_train[100 + i, :, :, 0]).save(folder / f"{i}.png")
    (folder / "1.png").write_bytes(b"\x89PNG truncated")
    out = str(tmp_path / "r.parquet")
    report = query(small_index, str(folder), out, QuerySettings(mode="seed", k=3), client=client)
    assert (report.n_queries, report.n_failed) == (4, 1)
    rows = pq.read_table(out).to_pylist()
    errors = [r for r in rows if r["error"]]
    assert len(errors) == 1 and errors[0]["query_id"] == 1 and errors[0]["query_uri"].endswith("1.png")
    assert errors[0]["image_id"] is None and errors[0]["rank"] is None and errors[0]["score"] is None
    answered = {r["query_id"] for r in rows if not r["error"]}
    assert answered == {0, 2, 3}
    assert [r["query_id"] for r in rows] == sorted(r["query_id"] for r in rows)


def test_a_block_encoded_in_parts_gives_the_results_of_one_part(client, small_index, fmnist_train, tmp_path, monkeypatch):
    import pipeline.encode
    from storage import open_corpus
    from workflows.query import encode_parts

    folder = tmp_path / "queries"
    folder.mkdir()
    for i in range(13):
        Image.fromarray(fmnist_train[100 + i, :, :, 0]).save(folder / f"{i:02d}.png")
    (folder / "02.png").write_bytes(b"\x89PNG truncated")  # the first part has one query fewer
    settings = QuerySettings(k=5, flip=True)  # two rows of codes per query: each part's owners count from its own
    whole, parts = str(tmp_path / "whole.parquet"), str(tmp_path / "parts.parquet")
    query(small_index, str(folder), whole, settings, client=client)
    monkeypatch.setattr(pipeline.encode, "ENCODE_BATCH", 4)
    shard = open_corpus(str(folder)).shards(1000)[0]
    cut = encode_parts(shard, 2)  # the test cluster's 2 threads
    assert [(p.start, p.stop) for p in cut] == [(0, 8), (8, 13)] and cut[1].uris == shard.uris[8:]
    assert [len(p) for p in encode_parts(shard, 4)] == [4, 4, 4, 1] and [len(p) for p in encode_parts(shard, 1)] == [13]
    report = query(small_index, str(folder), parts, settings, client=client)
    assert (report.n_queries, report.n_failed) == (13, 1)
    assert pq.read_table(parts).equals(pq.read_table(whole))


def test_every_query_unreadable_fails(client, small_index, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"nope")
    with pytest.raises(CorpusError, match="none of the 1 queries"):
        query(small_index, str(folder), str(tmp_path / "r.parquet"), client=client)


def test_threshold_defaults_per_mode():
    assert QuerySettings().threshold == 3 and QuerySettings(mode="seed").threshold == 3
    assert QuerySettings(mode="default", threshold=1).threshold == 1
    assert QuerySettings(mode="seed", threshold=0).threshold == 0


@pytest.mark.parametrize("kwargs", [dict(k=0), dict(threshold=-1), dict(mode="fast"), dict(block_size=0), dict(shortlist=0),
                                    dict(max_bucket_fraction=0), dict(max_bucket_fraction=1.5), dict(max_bucket=0), dict(vote_budget=-1)])
def test_options_are_validated(kwargs):
    with pytest.raises(ConfigError):
        QuerySettings(**kwargs)


def test_threshold_above_code_length_is_refused(client, small_index, query_npy, tmp_path):
    with pytest.raises(ConfigError, match="code length 16"):
        query(small_index, query_npy, str(tmp_path / "r.parquet"), QuerySettings(threshold=17), client=client)


def test_html_report_is_self_contained(client, small_index, query_npy, tmp_path):
    out, html = str(tmp_path / "r.parquet"), tmp_path / "report.html"
    query(small_index, query_npy, out, QuerySettings(mode="seed", k=5), client=client, report=str(html), report_limit=6)
    text = html.read_text()
    assert text.count('<details class="view">') == 6 * (1 + 5)  # each image: its original, the model input a click away
    assert text.count("data:image/") == 2 * 6 * (1 + 5)
    assert "http://" not in text and "https://" not in text
    assert "query #5" in text and "query #6" not in text


def test_query_cli_end_to_end(small_index, query_npy, tmp_path):
    out = tmp_path / "r.csv"
    result = subprocess.run(
        [sys.executable, "-m", "workflows.cli", "query", "--index", small_index, "--queries", query_npy, "--out", str(out),
         "--mode", "seed", "--k", "4"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "answered 50 queries" in result.stdout and "dashboard" in result.stderr
    assert pacsv.read_csv(out).num_rows == 50 * 4


def test_query_cli_failed_rows_exit_codes(small_index, fmnist_train, tcp_scheduler, tmp_path):
    folder = tmp_path / "queries"
    folder.mkdir()
    Image.fromarray(fmnist_train[5, :, :, 0]).save(folder / "good.png")
    (folder / "bad.png").write_bytes(b"")
    base = [sys.executable, "-m", "workflows.cli", "query", "--index", small_index, "--queries", str(folder),
            "--scheduler", tcp_scheduler]
    lenient = subprocess.run([*base, "--out", str(tmp_path / "a.parquet")], capture_output=True, text=True, timeout=600)
    assert lenient.returncode == 0, lenient.stderr
    assert "1 query row(s) could not be read" in lenient.stderr
    strict = subprocess.run([*base, "--out", str(tmp_path / "b.parquet"), "--strict"], capture_output=True, text=True, timeout=600)
    assert strict.returncode == 1 and "--strict is set" in strict.stderr
    assert pq.read_table(tmp_path / "b.parquet").num_rows == 1 + 10  # the error row is still written


# --------------------------------------------------------------------------- worker cache, affinity


def _parts(*sizes: int) -> list[dict]:
    starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    return [{"start": a, "stop": b, "path": f"p{i}"} for i, (a, b) in enumerate(zip(starts, starts[1:]))]


def test_partition_affinity_balances_by_images_or_pins_nothing():
    from workflows.query import partition_affinity

    workers = ["tcp://b:1", "tcp://a:1"]
    assert partition_affinity(_parts(*[1_000_000] * 10), workers).count("tcp://a:1") == 5
    assert partition_affinity(_parts(1000, 1000, 600, 400), workers) == ["tcp://a:1", "tcp://b:1", "tcp://a:1", "tcp://b:1"]
    assert partition_affinity(_parts(1000, 1000, 200, 800), workers) == [None] * 4  # 1800:1200 at best
    assert partition_affinity(_parts(1000, 1000, 1000), workers) == [None] * 3  # 2:1, unbalanced
    assert partition_affinity(_parts(1000), workers) == [None]  # fewer partitions than workers
    assert partition_affinity(_parts(1000, 1000), []) == [None, None]


def test_search_tasks_of_a_partition_run_on_its_worker_only(client, small_index, query_npy, tmp_path, monkeypatch):
    """4 partitions on 2 workers: each worker loads and searches only its 2 partitions."""
    import distributed

    import workflows.query as query_module

    used: dict[str, set[str]] = {}
    real = query_module.load_partition

    def spy(index_url, path, storage_options=None):
        used.setdefault(path, set()).add(distributed.get_worker().address)
        return real(index_url, path, storage_options)

    monkeypatch.setattr(query_module, "load_partition", spy)
    query(small_index, query_npy, str(tmp_path / "r.parquet"), QuerySettings(block_size=8), client=client)
    assert len(used) == 4 and all(len(workers) == 1 for workers in used.values()), used
    per_worker = [w for workers in used.values() for w in workers]
    assert sorted(per_worker.count(w) for w in set(per_worker)) == [2, 2]


def test_worker_cache_evicts_least_recently_used_beyond_its_byte_budget(monkeypatch):
    from workflows.worker_cache import WorkerCache

    monkeypatch.setenv("PATCHHASH_CACHE_BYTES", "2500")
    cache = WorkerCache()
    a = cache.get(("a",), lambda: np.zeros(1000, np.uint8))
    cache.get(("b",), lambda: np.zeros(1000, np.uint8))
    assert cache.get(("a",), lambda: None) is a  # a hit: a becomes the most recent
    cache.get(("c",), lambda: np.zeros(1000, np.uint8))  # over 2500 bytes: b goes
    assert cache.nbytes == 2000 and cache.loads == 3
    assert cache.get(("b",), lambda: np.ones(1000, np.uint8))[0] == 1  # loaded again
    big = cache.get(("d",), lambda: np.zeros(5000, np.uint8))  # alone over budget: kept alone
    assert cache.nbytes == 5000 and cache.get(("d",), lambda: None) is big


def test_worker_cache_counts_the_multi_index_tables_built_on_a_bucket_map(monkeypatch):
    from pipeline.buckets import build_bucket_map
    from pipeline.mih import prepare_index
    from workflows.worker_cache import WorkerCache, entry_nbytes

    codes = np.random.default_rng(0).integers(0, 2**32, (2000, 4), dtype=np.uint64).astype(np.uint32)
    bmap = build_bucket_map(codes, np.arange(2000), positional=True)
    before = entry_nbytes(bmap)
    assert before == sum(a.nbytes for a in (bmap.keys, bmap.offsets, bmap.ids, bmap.key_bounds))
    index = prepare_index(bmap, 32, 3)
    assert entry_nbytes(bmap) == before + index.nbytes
    monkeypatch.setenv("PATCHHASH_CACHE_BYTES", str(before + 10))
    cache = WorkerCache()
    cache.get(("map",), lambda: bmap)
    cache.get(("codes",), lambda: np.zeros(8, np.uint8))
    assert cache.nbytes == 8  # the map with its tables no longer fits beside the newer entry


@pytest.mark.parametrize("variable, value, message", [
    ("PATCHHASH_CACHE_BYTES", "lots", r"PATCHHASH_CACHE_BYTES='lots' is not a size; set it to e\.g\. 2GiB"),
    ("PATCHHASH_URI_CACHE_BYTES", "lots", r"PATCHHASH_URI_CACHE_BYTES='lots' is not a size; set it to e\.g\. 1GiB"),
    ("PATCHHASH_LOCAL_BYTES", "-1", r"PATCHHASH_LOCAL_BYTES='-1' is not a size; set it to e\.g\. 20GiB"),
    ("PATCHHASH_STORAGE_ATTEMPTS", "0", r"PATCHHASH_STORAGE_ATTEMPTS='0' must be an integer >= 1"),
])
def test_a_bad_setting_in_the_environment_fails_before_any_work_naming_the_variable(small_index, query_npy, tmp_path, monkeypatch,
                                                                                    variable, value, message):
    import workflows.query

    monkeypatch.setenv(variable, value)
    monkeypatch.setattr(workflows.query, "QueryJob", lambda *a, **k: pytest.fail("the job started before the check"))
    with pytest.raises(ConfigError, match=message):
        query(small_index, query_npy, str(tmp_path / "r.parquet"))
    assert not (tmp_path / "r.parquet").exists()

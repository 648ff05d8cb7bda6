"""The seed 000 reference of ``benchmarks/`` follows the seed's rule and agrees with
:func:`pipeline.seed.seed_search`; the benchmark script runs end to end (smoke size)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.buckets import build_bucket_map
from pipeline.seed import seed_search

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # where a script finds its sibling modules (_common)


def _load(name: str):
    """Import ``benchmarks/<name>.py`` (registered under ``name``, as a script would see it)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


sr = _load("seed_reference")

# Three images of 4-bit codes. Distances from 0b0000: 0 -> 0, 0b0001 -> 1, 0b0011 -> 2,
# 0b1111 -> 4; from 0b0011: 0 -> 2, 0b0001 -> 1, 0b0011 -> 0, 0b1111 -> 2.
HAND_CODES = np.array([[0b0000, 0b0001], [0b0011, 0b0011], [0b1111, 0b0000]], np.uint32)
HAND_IDS = [10, 11, 12]


@pytest.fixture()
def hand_table():
    table = sr.SemanticHashTable()
    sr.populate_table(HAND_CODES, HAND_IDS, table)
    return table


def as_pairs(hits):
    return [(int(i), float(s)) for i, s in hits]


@pytest.mark.parametrize("query, t, expected", [
    # image 10 holds codes at d=0 (4) and d=1 (2): it keeps the maximum, 4
    ([0b0000], 2, [(10, 4), (12, 4), (11, 1)]),
    # a repeated query code counts twice
    ([0b0000, 0b0000], 2, [(10, 8), (12, 8), (11, 2)]),
    # image 12: both codes at d=2 -> max 1, not their sum
    ([0b0011], 2, [(11, 4), (10, 2), (12, 1)]),
    # scores add up over the query codes
    ([0b0000, 0b0011], 2, [(10, 6), (11, 5), (12, 5)]),
    # the score is 2**(t - d), not the seed's hard-coded 2**(3 - d); d > t scores nothing
    ([0b0000], 1, [(10, 2), (12, 2)]),
    ([0b0000], 0, [(10, 1), (12, 1)]),
    ([0b0000], 4, [(10, 16), (12, 16), (11, 4)]),
    ([0b0101], 0, []),
])
def test_rule_on_hand_made_codes(hand_table, query, t, expected):
    assert as_pairs(sr.search_with_tiebreak(query, hand_table, t, top_n=10)) == expected
    faithful = as_pairs(sr.search(query, hand_table, t, top_n=10))
    assert sorted(faithful, key=lambda x: (-x[1], x[0])) == expected


def test_top_n_cuts_the_ranking(hand_table):
    assert as_pairs(sr.search_with_tiebreak([0b0000, 0b0011], hand_table, 2, top_n=2)) == [
        (10, 6), (11, 5)]
    assert [s for _, s in as_pairs(sr.search([0b0000, 0b0011], hand_table, 2, top_n=2))] == [6, 5]


def test_table_as_in_the_seed(hand_table):
    codes = hand_table.codes
    assert codes.dtype == np.int64
    assert codes.tolist() == [0b0000, 0b0001, 0b0011, 0b1111]  # insertion order
    assert hand_table.codes is not codes  # rebuilt on every access
    assert hand_table.fetch_bucket(0) == {10, 12}
    assert hand_table.fetch_bucket(np.int64(3)) == {11}  # a bucket holds an image once


def test_populate_table_refuses_bad_input():
    with pytest.raises(ValueError, match="n ids"):
        sr.populate_table(HAND_CODES, [1, 2], sr.SemanticHashTable())
    with pytest.raises(ValueError, match="2\\*\\*63"):
        sr.populate_table(np.array([[2**63]], np.uint64), [0], sr.SemanticHashTable())


def test_hamming_distance_is_popcount():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 2**32, 500, dtype=np.int64)
    b = rng.integers(0, 2**32, 500, dtype=np.int64)
    expected = [bin(int(x) ^ int(y)).count("1") for x, y in zip(a, b)]
    assert sr._hamming_distance(a, b).tolist() == expected
    assert sr._hamming_distance(np.uint32(0), np.array([2**32 - 1], np.int64)).tolist() == [32]


def collision_case(seed: int, bits: int = 16, m: int = 60, grid: int = 6, n_queries: int = 8):
    """Codes drawn from a small pool of near-duplicates (so buckets collide and many codes
    lie at each distance), non-contiguous ids, and queries with repeated codes."""
    rng = np.random.default_rng(seed)
    pool = []
    for centre in rng.integers(0, 2**bits, 4).tolist():
        for _ in range(6):
            flips = rng.choice(bits, int(rng.integers(0, 4)), replace=False)
            pool.append(centre ^ sum(1 << int(b) for b in flips))
    pool = np.array(pool, np.uint32)
    codes = pool[rng.integers(0, pool.size, (m, grid))]
    ids = np.sort(rng.choice(5 * m, m, replace=False)).astype(np.int64)
    queries = pool[rng.integers(0, pool.size, (n_queries, grid - 1))]
    queries[:, -1] = queries[:, 0]  # every query repeats a code
    return codes, ids, queries, bits


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("t", [0, 1, 2, 3, 5])
def test_agrees_with_seed_search(seed, t):
    codes, ids, queries, bits = collision_case(seed)
    table = sr.SemanticHashTable()
    sr.populate_table(codes, ids, table)
    bmap = build_bucket_map(codes, ids, positional=False)
    for k in (5, 1000):
        top = seed_search(queries, bmap, t, bits, k)
        for q, query in enumerate(queries):
            expected = [(int(i), float(s)) for i, s in zip(top.ids[q], top.scores[q]) if i >= 0]
            assert as_pairs(sr.search_with_tiebreak(query, table, t, top_n=k)) == expected
            assert [s for _, s in as_pairs(sr.search(query, table, t, top_n=k))] == [
                s for _, s in expected]


@pytest.mark.slow
def test_benchmark_smoke(tmp_path, tiny_model):
    bench = _load("bench_query_vs_seed")
    out = tmp_path / "figures.json"
    bench.main(["--smoke", "--skip-patchhash", "--model", tiny_model, "--workers", "1",
                "--seed-queries", "3", "--workdir", str(tmp_path / "work"),
                "--out-json", str(out)])
    figures = json.loads(out.read_text())
    assert figures["n_images"] == bench.SMOKE_CORPUS
    assert figures["n_queries"] == bench.SMOKE_QUERIES
    assert figures["agreement"] == dict(
        compared_with="pipeline.seed.seed_search (in process)", queries_checked=3,
        mismatches={})
    assert len(figures["seed_query_s"]) == 3 and figures["seed_ms_per_query"] > 0
    assert figures["patchhash_ms_per_query"] is None

"""Seed scoring, per-partition top-k and merging against the brute-force reference."""

from __future__ import annotations

import platform

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import hamming, reference_seed_search

from pipeline import hamming as hm
from pipeline.buckets import build_bucket_map
from pipeline.search import TopK, choose_method, merge_topk, seed_search

METHODS = ("scan", "enumerate", "auto")
PARTITIONS = (1, 2, 3, 7)


def key_dtype(bits):
    return np.uint32 if bits <= 32 else np.uint64


def flip(code, n_flips, bits, rng):
    for bit in rng.choice(bits, n_flips, replace=False):
        code ^= 1 << int(bit)
    return code


def clustered_pool(rng, bits, n_centres=3, per_centre=5):
    """Codes around a few centres at distances 0..4 (so every threshold matters), plus the
    all-ones code (top bit set) and its neighbour."""
    pool = []
    for _ in range(n_centres):
        centre = int(rng.integers(0, 2**bits, dtype=np.uint64)) if bits < 64 else int(
            rng.integers(0, 2**63, dtype=np.uint64)) | 2**63
        pool += [flip(centre, int(rng.integers(0, 5)), bits, rng) for _ in range(per_centre)]
    pool += [2**bits - 1, (2**bits - 1) ^ 1]
    return np.array(pool, dtype=np.uint64).astype(key_dtype(bits))


def make_case(rng, bits, m=40, n_positions=5, n_queries=6, n_query_codes=5):
    pool = clustered_pool(rng, bits)
    codes = pool[rng.integers(0, pool.size, (m, n_positions))]
    ids = np.sort(rng.choice(4 * m, m, replace=False)).astype(np.int64)
    queries = np.array(
        [[flip(int(pool[rng.integers(pool.size)]), int(rng.integers(0, 3)), bits, rng)
          for _ in range(n_query_codes)] for _ in range(n_queries)], dtype=np.uint64)
    return codes, ids, queries.astype(key_dtype(bits))


def partitioned_search(queries, codes, ids, t, bits, k, n_parts, method):
    """Split the id space into ``n_parts`` ranges, search each range, merge."""
    bounds = np.linspace(0, int(ids.max()) + 1 if ids.size else 1, n_parts + 1).astype(np.int64)
    parts = []
    for start, stop in zip(bounds, bounds[1:]):
        rows = (ids >= start) & (ids < stop)
        bmap = build_bucket_map(codes[rows], ids[rows], positional=False)
        part = seed_search(queries, bmap, t, bits, k, id_range=(start, stop), method=method)
        assert_topk_well_formed(part, k)
        parts.append(part)
    return merge_topk(parts, k)


def assert_topk_well_formed(result: TopK, k):
    assert result.ids.dtype == np.int64 and result.scores.dtype == np.float64
    assert result.n_candidates.dtype == np.int64
    assert result.ids.shape == result.scores.shape == (result.n_candidates.size, k)
    assert np.all(np.isfinite(result.scores))
    assert np.all(result.scores[result.ids < 0] == 0)
    assert np.all(result.scores[result.ids >= 0] > 0)


def as_lists(result: TopK):
    return [[(int(i), float(s)) for i, s in zip(row_ids, row_scores) if i >= 0]
            for row_ids, row_scores in zip(result.ids, result.scores)]


def assert_matches_reference(result, queries, codes, ids, t, k):
    full = reference_seed_search(queries, codes, ids, t, None)
    assert as_lists(result) == [[(i, float(s)) for i, s in ranked[:k]] for ranked in full]
    assert result.n_candidates.tolist() == [len(ranked) for ranked in full]
    # Padding only after the hits, never before.
    for row, ranked in zip(result.ids, full):
        n_hits = min(k, len(ranked))
        assert np.all(row[:n_hits] >= 0) and np.all(row[n_hits:] == -1)


@pytest.mark.parametrize("bits", [8, 16, 32, 64])
@pytest.mark.parametrize("t", [0, 1, 2, 3, 4])
def test_seed_search_matches_reference(bits, t):
    rng = np.random.default_rng(10 * bits + t)
    codes, ids, queries = make_case(rng, bits)
    methods = METHODS if hm.ball_size(bits, t) < 50_000 else ("scan", "auto")
    for k in (1, 5, 50):
        for n_parts in PARTITIONS:
            for method in methods:
                result = partitioned_search(queries, codes, ids, t, bits, k, n_parts, method)
                assert_matches_reference(result, queries, codes, ids, t, k)


def test_ties_break_by_ascending_id():
    codes = np.full((30, 4), 77, np.uint32)
    ids = np.arange(100, 130, dtype=np.int64)
    queries = np.array([[77, 76, 1000, 77]], np.uint32)
    for method in METHODS:
        result = partitioned_search(queries, codes, ids, 3, 32, 10, 3, method)
        assert result.ids[0].tolist() == list(range(100, 110))
        assert result.scores[0].tolist() == [8 + 4 + 8] * 10
        assert_matches_reference(result, queries, codes, ids, 3, 10)


def test_duplicate_query_codes_count_with_multiplicity():
    codes = np.array([[1, 2], [3, 3], [2, 8]], np.uint32)
    ids = np.array([0, 1, 2], np.int64)
    queries = np.array([[3, 3, 3, 2], [2, 3, 3, 3]], np.uint32)
    for method in METHODS:
        result = seed_search(queries, build_bucket_map(codes, ids, False), 1, 8, 3, method=method)
        # t=1: image 1 (code 3) scores 2 per 3 and 1 for 2; images 0, 2 (code 2) 1 per 3, 2 for 2
        assert result.ids.tolist() == [[1, 0, 2]] * 2
        assert result.scores.tolist() == [[7.0, 5.0, 5.0]] * 2
        assert_matches_reference(result, queries, codes, ids, 1, 3)


def test_no_hits_gives_padding():
    codes = np.array([[0b0000, 0b0001]], np.uint32)
    bmap = build_bucket_map(codes, np.array([5]), False)
    far = np.array([[0b1111_0000, 0b1111_0001]], np.uint32)
    for method in METHODS:
        for t, queries in ((0, np.array([[0b0011, 0b0010]], np.uint32)), (3, far)):
            result = seed_search(queries, bmap, t, 8, 4, method=method)
            assert result.ids.tolist() == [[-1] * 4]
            assert result.scores.tolist() == [[0.0] * 4]
            assert result.n_candidates.tolist() == [0]


def test_k_larger_than_hits_and_empty_partitions():
    rng = np.random.default_rng(3)
    codes, ids, queries = make_case(rng, 16, m=8)
    for method in METHODS:
        result = partitioned_search(queries, codes, ids, 2, 16, 100, 7, method)
        assert_matches_reference(result, queries, codes, ids, 2, 100)
    empty = build_bucket_map(np.empty((0, 5), np.uint32), np.empty(0, np.int64), False)
    result = seed_search(queries, empty, 2, 16, 3)
    assert result.ids.tolist() == [[-1] * 3] * len(queries)
    assert result.n_candidates.tolist() == [0] * len(queries)


def test_top_bit_of_64_bit_codes():
    top = 2**63
    codes = np.array([[top | 5, 1], [top | 4, top | 5], [5, 5]], np.uint64)
    ids = np.array([0, 1, 2], np.int64)
    queries = np.array([[top | 5], [5]], np.uint64)
    for method in METHODS:
        result = seed_search(queries, build_bucket_map(codes, ids, False), 1, 64, 3, method=method)
        # top|5 vs 5 differ in the top bit only: distance 1.
        assert result.ids.tolist() == [[0, 1, 2], [2, 0, 1]]
        assert result.scores.tolist() == [[2.0, 2.0, 1.0], [2.0, 1.0, 1.0]]
    # Python ints and signed arrays are accepted for queries as long as they fit.
    assert seed_search([[5]], build_bucket_map(codes, ids, False), 0, 64, 1).ids.tolist() == [[2]]


def test_query_block_with_no_queries():
    bmap = build_bucket_map(np.array([[1]], np.uint32), np.array([0]), False)
    result = seed_search(np.empty((0, 3), np.uint32), bmap, 2, 8, 4)
    assert result.ids.shape == (0, 4) and result.n_candidates.shape == (0,)


def test_seed_search_rejects_bad_arguments():
    codes = np.array([[1, 2], [3, 4]], np.uint32)
    bmap = build_bucket_map(codes, np.array([10, 11]), False)
    queries = np.array([[1, 2]], np.uint32)
    with pytest.raises(ValueError, match="position-free"):
        seed_search(queries, build_bucket_map(codes, np.array([10, 11]), True), 1, 8, 2)
    with pytest.raises(ValueError, match="method"):
        seed_search(queries, bmap, 1, 8, 2, method="magic")
    with pytest.raises(ValueError, match="threshold"):
        seed_search(queries, bmap, 9, 8, 2)
    with pytest.raises(ValueError, match="threshold"):
        seed_search(queries, bmap, -1, 8, 2)
    with pytest.raises(ValueError, match="k must"):
        seed_search(queries, bmap, 1, 8, 0)
    with pytest.raises(ValueError, match="2\\*\\*8"):
        seed_search(np.array([[256]]), bmap, 1, 8, 2)
    with pytest.raises(ValueError, match="2\\*\\*8"):
        seed_search(np.array([[-1]]), bmap, 1, 8, 2)
    with pytest.raises(ValueError, match="bits"):
        seed_search(queries, bmap, 1, 33, 2)
    with pytest.raises(ValueError, match="wider"):
        wide = build_bucket_map(codes << np.uint32(8), np.array([1, 2]), False)
        seed_search(queries, wide, 1, 8, 2)
    with pytest.raises(ValueError, match="id_range"):
        seed_search(queries, bmap, 1, 8, 2, id_range=(11, 20))
    with pytest.raises(ValueError, match="2-d"):
        seed_search(np.array([1, 2], np.uint32), bmap, 1, 8, 2)


def test_merge_topk():
    a = TopK(np.array([[4, 2, -1]]), np.array([[3.0, 1.0, 0.0]]), np.array([2]))
    b = TopK(np.array([[7, 9, 1]]), np.array([[3.0, 2.0, 1.0]]), np.array([3]))
    merged = merge_topk([a, b], 4)
    assert merged.ids.tolist() == [[4, 7, 9, 1]]
    assert merged.scores.tolist() == [[3.0, 3.0, 2.0, 1.0]]
    assert merged.n_candidates.tolist() == [5]
    wide = merge_topk([a], 5)
    assert wide.ids.tolist() == [[4, 2, -1, -1, -1]]
    assert wide.scores.tolist() == [[3.0, 1.0, 0.0, 0.0, 0.0]]
    truncated = TopK(b.ids, b.scores, np.array([5]))  # kept 3 of its 5 hits
    with pytest.raises(ValueError, match="exact"):
        merge_topk([truncated], 4)
    assert merge_topk([truncated], 2).ids.tolist() == [[7, 9]]
    with pytest.raises(ValueError, match="numbers of queries"):
        two_queries = TopK(np.zeros((2, 3), np.int64), np.zeros((2, 3)), np.zeros(2, np.int64))
        merge_topk([a, two_queries], 3)
    with pytest.raises(ValueError):
        merge_topk([], 3)


def test_choose_method_cost_model():
    assert choose_method(0, 32, 3) == "scan"
    assert choose_method(20_000, 32, 3) == "scan"
    assert choose_method(50_000_000, 32, 3) == "enumerate"
    assert choose_method(1_000_000, 16, 1) == "enumerate"
    assert choose_method(1_000_000, 64, 4) == "scan"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    bits=st.sampled_from([8, 16, 32, 64]),
    t=st.integers(0, 3),
    m=st.integers(0, 25),
    n_positions=st.integers(1, 6),
    k=st.integers(1, 12),
    n_parts=st.sampled_from(PARTITIONS),
    method=st.sampled_from(METHODS),
)
def test_property_matches_reference(data, bits, t, m, n_positions, k, n_parts, method):
    if method == "enumerate" and hm.ball_size(bits, t) > 50_000:
        method = "scan"
    alphabet = data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=1, max_size=6, unique=True))
    dtype = key_dtype(bits)
    draw_code = st.sampled_from(alphabet)
    flat = data.draw(st.lists(draw_code, min_size=m * n_positions, max_size=m * n_positions))
    codes = np.array(flat, dtype=np.uint64).astype(dtype).reshape(m, n_positions)
    ids = np.array(sorted(data.draw(st.sets(st.integers(0, 200), min_size=m, max_size=m))), np.int64)
    # Query codes from the alphabet or anywhere; short rows padded with repeats of their
    # first code (so duplicates are common).
    near = st.one_of(draw_code, st.integers(0, 2**bits - 1))
    rows = data.draw(st.lists(st.lists(near, min_size=1, max_size=5), min_size=1, max_size=3))
    rows = [row + row[:1] * (5 - len(row)) for row in rows]
    queries = np.array(rows, dtype=np.uint64).astype(dtype)
    result = partitioned_search(queries, codes, ids, t, bits, k, n_parts, method)
    assert_matches_reference(result, queries, codes, ids, t, k)


# --- kernels -----------------------------------------------------------------------------


def test_popcount_and_distances():
    values = [0, 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1, 0x0123_4567_89AB_CDEF]
    for v in values:
        assert hm.popcount64(np.uint64(v)) == bin(v).count("1")
    a = np.array(values, np.uint64)
    expected = [[hamming(x, y) for y in values] for x in values]
    assert hm.hamming_distances(a[:, None], a[None, :]).tolist() == expected
    assert hm.hamming_distances(5, [1, 4, 7]).tolist() == [1, 1, 1]


@pytest.mark.parametrize("bits", [16, 32, 64])
def test_scan_and_enumerate_find_the_same_keys(bits):
    rng = np.random.default_rng(bits)
    pool = clustered_pool(rng, bits, n_centres=10, per_centre=40)
    keys = np.unique(pool)
    out_idx = np.empty(keys.size, np.int64)
    out_dist = np.empty(keys.size, np.int64)
    for query in pool[:: 7]:
        for t in range(4):
            expected = {i: hamming(int(query), int(key)) for i, key in enumerate(keys)
                        if hamming(int(query), int(key)) <= t}
            n = hm.scan_within(query, keys, t, out_idx, out_dist)
            assert dict(zip(out_idx[:n].tolist(), out_dist[:n].tolist())) == expected
            assert hm.count_within(query, keys, t) == len(expected)
            n = hm.enumerate_within(query, keys, bits, t, out_idx, out_dist)
            assert dict(zip(out_idx[:n].tolist(), out_dist[:n].tolist())) == expected
            assert np.all(np.diff(out_dist[:n]) >= 0), "enumeration yields by distance"


def test_ball_size():
    assert hm.ball_size(32, 3) == 1 + 32 + 496 + 4960
    assert hm.ball_size(8, 10) == 256


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 mnemonic")
def test_scan_kernel_uses_hardware_popcount():
    # Recompile from source: inspect_asm says nothing about kernels loaded from the cache.
    kernel = numba.njit(hm.scan_within.py_func)
    buf = np.empty(4, np.int64)
    for dtype in (np.uint32, np.uint64):
        kernel(dtype(1), np.arange(4, dtype=dtype), 1, buf, buf)
    for sig in kernel.signatures:
        assert "popcnt" in kernel.inspect_asm(sig)

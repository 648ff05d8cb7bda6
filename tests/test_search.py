"""Seed scoring, per-partition top-k and merging against the brute-force reference."""

from __future__ import annotations

import contextlib
import gc
import platform
import weakref

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import hamming, reference_seed_search

from pipeline import hamming as hm
from pipeline import mih, seed, topk
from pipeline.buckets import build_bucket_map
from pipeline.mih import choose_method, prepare_index
from pipeline.seed import seed_search
from pipeline.topk import TopK, merge_topk

METHODS = ("scan", "enumerate", "mih", "auto")
PARTITIONS = (1, 2, 3, 7)

# Settings of seed_search's internal thresholds and budgets (read on each call) that force
# each of its scoring paths: a list of touched images or dense totals, per-hit stamps or
# per-image best weights ("heavy" codes), best weights and matches kept for the block or
# not, and a query switching from one to the other part way.
NEVER = 2**62
TUNINGS = {
    "default": {},
    "sparse only": dict(_scoring_thresholds=lambda n: (NEVER, NEVER)),
    "dense, light codes": dict(_scoring_thresholds=lambda n: (1, NEVER)),
    "dense, heavy codes": dict(_scoring_thresholds=lambda n: (1, 1)),
    "heavy, nothing shared": dict(_scoring_thresholds=lambda n: (1, 1), _SHARED_BYTES=0,
                                  _SHARED_MATCHES_BYTES=0),
    "switch part way": dict(_scoring_thresholds=lambda n: (4, 3)),
    "small budgets": dict(_scoring_thresholds=lambda n: (2, 2), _SHARED_BYTES=300,
                          _SHARED_MATCHES_BYTES=60),
}


@contextlib.contextmanager
def tuning(name):
    saved = {attr: getattr(seed, attr) for attr in TUNINGS[name]}
    try:
        for attr, value in TUNINGS[name].items():
            setattr(seed, attr, value)
        yield
    finally:
        for attr, value in saved.items():
            setattr(seed, attr, value)


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


@pytest.mark.parametrize("tuned", sorted(TUNINGS))
@pytest.mark.parametrize("bits, t", [(16, 1), (32, 3), (64, 2)])
def test_scoring_paths_match_reference(tuned, bits, t):
    rng = np.random.default_rng(bits + t)
    # Many queries sharing codes, so that block-level sharing has something to share.
    codes, ids, queries = make_case(rng, bits, m=60, n_queries=12, n_query_codes=7)
    with tuning(tuned):
        for method in ("mih", "scan"):
            for k, n_parts in ((1, 1), (5, 3), (100, 2)):
                result = partitioned_search(queries, codes, ids, t, bits, k, n_parts, method)
                assert_matches_reference(result, queries, codes, ids, t, k)


@pytest.mark.parametrize("bits, t, n_query_codes", [(16, 8, 5), (16, 12, 9), (16, 16, 9),
                                                    (32, 28, 8)])
def test_wide_radii_and_accumulators(bits, t, n_query_codes):
    # Totals up to n_query_codes * 2**t: int16, int32 and int64 accumulators; best weights
    # wider than a byte; t == bits matches every key.
    rng = np.random.default_rng(t)
    codes, ids, queries = make_case(rng, bits, n_query_codes=n_query_codes)
    for tuned in ("default", "dense, heavy codes"):
        with tuning(tuned):
            for method in ("mih", "scan"):
                result = partitioned_search(queries, codes, ids, t, bits, 7, 2, method)
                assert_matches_reference(result, queries, codes, ids, t, 7)


def test_prepare_index_is_built_once_per_map():
    rng = np.random.default_rng(5)
    codes, ids, queries = make_case(rng, 32)
    bmap = build_bucket_map(codes, ids, False)
    index = prepare_index(bmap, 32, 3)
    assert prepare_index(bmap, 32, 3) is index
    assert prepare_index(bmap, 32, 2, n_substrings=index.n_substrings) is index
    one = prepare_index(bmap, 32, 3, n_substrings=1)
    assert one is not index and one.n_substrings == 1
    assert prepare_index(build_bucket_map(codes, ids, False), 32, 3) is not index
    assert index.nbytes > 0
    # Any index of the map serves any radius; "auto" takes a given index.
    for t in (0, 3, 4):
        for prepared in (index, one):
            for method in ("auto", "mih"):
                result = seed_search(queries, bmap, t, 32, 5, method=method, index=prepared)
                assert_matches_reference(result, queries, codes, ids, t, 5)
    # The cache does not keep maps alive.
    alive = weakref.ref(bmap)
    del bmap
    gc.collect()
    assert alive() is None


def test_prepare_index_rejects_bad_arguments():
    codes = np.array([[1, 2], [3, 4]], np.uint32)
    bmap = build_bucket_map(codes, np.array([10, 11]), False)
    with pytest.raises(ValueError, match="bits"):
        prepare_index(bmap, 33, 1)
    with pytest.raises(ValueError, match="substrings"):
        prepare_index(bmap, 8, 1, n_substrings=9)
    other = build_bucket_map(np.array([[1, 2, 5]], np.uint32), np.array([0]), False)
    with pytest.raises(ValueError, match="index"):
        seed_search(codes, bmap, 1, 8, 2, method="mih", index=prepare_index(other, 8, 1))
    with pytest.raises(ValueError, match="index"):
        seed_search(codes, bmap, 1, 8, 2, method="mih", index=prepare_index(bmap, 16, 1))


def test_dense_topk_selection():
    rng = np.random.default_rng(11)
    for n in (0, 1, 63, 64, 65, 130, 1000):
        for k in (1, 3, 10, 70):
            for high in (1, 6, 1000):  # all ties, many ties, few ties
                totals = rng.integers(0, high + 1, n) * (rng.random(n) < 0.7)
                totals = totals.astype(np.int16)
                out_ids = np.full(k, -1, np.int64)
                out_scores = np.zeros(k, np.int64)
                n_nonzero = topk.select_topk_dense(totals, 100, out_ids, out_scores)
                ranked = sorted((-int(v), i + 100) for i, v in enumerate(totals) if v)[:k]
                assert n_nonzero == np.count_nonzero(totals)
                assert out_ids.tolist() == [i for _, i in ranked] + [-1] * (k - len(ranked))
                assert out_scores.tolist() == [-v for v, _ in ranked] + [0] * (k - len(ranked))


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
    assert choose_method(300, 32, 3) == "scan"
    assert choose_method(20_000, 32, 3) == "mih"
    assert choose_method(50_000_000, 32, 3) == "mih"
    assert choose_method(1_000_000, 16, 1) == "enumerate"
    assert choose_method(1_000_000, 64, 4) == "mih"
    # Fashion-MNIST partitions: 429k 32-bit keys, t = 3: two 16-bit substrings, radius 1.
    assert mih.mih_substrings(429_000, 32, 3) == 2
    assert mih.mih_substrings(1_000_000, 64, 3) == 4


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
    tuned=st.sampled_from(sorted(TUNINGS)),
)
def test_property_matches_reference(data, bits, t, m, n_positions, k, n_parts, method, tuned):
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
    with tuning(tuned):
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


@pytest.mark.parametrize("bits", [16, 32, 64])
def test_mih_finds_each_key_once(bits):
    rng = np.random.default_rng(bits + 1)
    pool = clustered_pool(rng, bits, n_centres=10, per_centre=40)
    keys = np.unique(pool)
    out_idx = np.empty(keys.size, np.int64)
    out_dist = np.empty(keys.size, np.int64)
    far = rng.integers(0, 2**bits - 1, 3, dtype=np.uint64).astype(keys.dtype)
    queries = list(pool[::9]) + list(far)
    for t in range(5):
        expected = [{i: hamming(int(q), int(key)) for i, key in enumerate(keys)
                     if hamming(int(q), int(key)) <= t} for q in queries]
        for m in range(1, t + 3):  # m = t + 2: more substrings than the pigeonhole needs
            shifts, widths = hm.mih_split(bits, m)
            if sum(hm.ball_size(int(w), t // m) for w in widths) > 5_000:
                continue
            # The planned tables; tables as wide as the substrings (no hashing, up to 16
            # bits); tiny hashed tables (many substrings per bucket).
            for table_bits in (hm.mih_table_bits(widths, keys.size), np.minimum(widths, 16),
                               np.minimum(widths, 2)):
                order, table_keys, starts = hm.mih_build(keys, shifts, widths, table_bits)
                for s in range(m):
                    assert sorted(order[s].tolist()) == list(range(keys.size))
                    assert np.array_equal(table_keys[s], keys[order[s]])
                    assert np.all(np.diff(starts[s]) >= 0) and starts[s, -1] == keys.size
                for q, want in zip(queries, expected):
                    n = hm.mih_within(q, t, shifts, widths, table_bits, order, table_keys,
                                      starts, out_idx, out_dist)
                    assert sorted(out_idx[:n].tolist()) == sorted(want), (t, m, table_bits)
                    assert dict(zip(out_idx[:n].tolist(), out_dist[:n].tolist())) == want


def test_mih_split_and_cost():
    for bits in (8, 13, 32, 64):
        for m in range(1, 9):
            shifts, widths = hm.mih_split(bits, m)
            assert widths.sum() == bits and widths.max() - widths.min() <= 1
            assert shifts.tolist() == np.concatenate([[0], np.cumsum(widths)[:-1]]).tolist()
    with pytest.raises(ValueError):
        hm.mih_split(8, 9)
    with pytest.raises(ValueError):
        hm.mih_split(8, 0)
    # 429k keys, 32 bits, t = 3, two substrings: 2 x 17 probes of tables of 2**16 buckets.
    probes, candidates = hm.mih_cost(32, 3, 2, 429_000)
    assert probes == 34 and candidates == pytest.approx(34 * 429_000 / 2**16)


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

"""The default mode's shortlist and re-rank against the brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import reference_rerank_search

from pipeline.buckets import build_bucket_map
from pipeline.rerank import rerank_search
from pipeline.mih import prepare_index
from pipeline.seed import seed_search
from pipeline.topk import merge_topk


def clustered_codes(rng, n, grid, bits, n_centres=4, flips=2):
    """Codes around a few centres, so that buckets are shared and distances vary."""
    dtype = np.uint32 if bits <= 32 else np.uint64
    centres = rng.integers(0, 2**bits, (n_centres, grid), dtype=np.uint64)
    rows = centres[rng.integers(0, n_centres, n)]
    for _ in range(flips):
        rows ^= np.uint64(1) << rng.integers(0, bits, rows.shape).astype(np.uint64)
    return rows.astype(dtype)


def as_lists(topk):
    return [[(int(i), int(s)) for i, s in zip(row_ids, row_scores) if i >= 0]
            for row_ids, row_scores in zip(topk.ids, topk.scores)]


@pytest.mark.parametrize("bits", [8, 16, 32, 64])
@pytest.mark.parametrize("t", [0, 1, 3])
@pytest.mark.parametrize("shortlist", [1, 5, 50])
@pytest.mark.parametrize("method", ["scan", "enumerate", "mih"])
def test_matches_reference(bits, t, shortlist, method):
    rng = np.random.default_rng(bits * 100 + t * 10 + shortlist)
    grid, n, start = 6, 80, 1000
    codes = clustered_codes(rng, n, grid, bits)
    ids = np.arange(start, start + n)
    queries = np.concatenate([clustered_codes(rng, 6, grid, bits), codes[:3]])
    bmap = build_bucket_map(codes, ids, positional=True)
    got = rerank_search(queries, bmap, codes, t, bits, k=7, shortlist=shortlist, id_range=(start, start + n), method=method)
    assert as_lists(got) == reference_rerank_search(queries, codes, ids, t, bits, 7, shortlist)
    assert np.all(got.n_candidates >= (got.ids >= 0).sum(axis=1))


def test_indexed_image_finds_itself_first():
    rng = np.random.default_rng(3)
    codes = clustered_codes(rng, 200, 9, 32, n_centres=3, flips=4)
    ids = np.arange(200)
    bmap = build_bucket_map(codes, ids, positional=True)
    got = rerank_search(codes, bmap, codes, 0, 32, k=3, shortlist=10)
    # duplicates of a row may tie with it; the row itself always has every bit equal
    assert np.all(got.scores[:, 0] == 9 * 32)
    assert np.all(np.any(got.ids == ids[:, None], axis=1))


def test_max_bucket_skips_common_codes():
    rng = np.random.default_rng(5)
    codes = clustered_codes(rng, 60, 4, 16, n_centres=1, flips=1)
    codes[:, 0] = 7  # one code every image shares
    ids = np.arange(60)
    bmap = build_bucket_map(codes, ids, positional=True)
    q = codes[:2]
    full = rerank_search(q, bmap, codes, 0, 16, k=5, shortlist=5)
    skipped = rerank_search(q, bmap, codes, 0, 16, k=5, shortlist=5, max_bucket=59)
    assert np.all(full.n_candidates == 60)
    assert np.all(skipped.n_candidates < 60)
    assert as_lists(skipped) == reference_rerank_search(q, codes, ids, 0, 16, 5, 5, max_bucket=59)


@pytest.mark.parametrize("budget", [0, 40, 150, 400, 10_000])
@pytest.mark.parametrize("method", ["scan", "enumerate", "mih"])
def test_vote_budget_matches_reference(budget, method):
    rng = np.random.default_rng(budget + 7)
    codes = clustered_codes(rng, 300, 5, 16, n_centres=4, flips=2)
    ids = np.arange(300)
    queries = np.concatenate([clustered_codes(rng, 8, 5, 16, n_centres=4, flips=2), codes[:4]])
    bmap = build_bucket_map(codes, ids, positional=True)
    got = rerank_search(queries, bmap, codes, 3, 16, k=6, shortlist=20, max_bucket=100, vote_budget=budget, method=method)
    assert as_lists(got) == reference_rerank_search(queries, codes, ids, 3, 16, 6, 20, max_bucket=100, vote_budget=budget)


def test_vote_budget_shrinks_the_radius_only_where_it_binds():
    rng = np.random.default_rng(17)
    codes = clustered_codes(rng, 400, 6, 16, n_centres=3, flips=2)
    bmap = build_bucket_map(codes, np.arange(400), positional=True)
    queries = codes[:10]
    free = rerank_search(queries, bmap, codes, 2, 16, k=5, shortlist=30)
    roomy = rerank_search(queries, bmap, codes, 2, 16, k=5, shortlist=30, vote_budget=6 * 400)  # every image at every position
    assert as_lists(roomy) == as_lists(free)
    huge = rerank_search(queries, bmap, codes, 2, 16, k=5, shortlist=30, max_bucket=10**20, vote_budget=10**20)  # beyond int64
    assert as_lists(huge) == as_lists(free)
    tight = rerank_search(queries, bmap, codes, 2, 16, k=5, shortlist=30, vote_budget=0)
    exact_only = rerank_search(queries, bmap, codes, 0, 16, k=5, shortlist=30)
    assert as_lists(tight) == as_lists(exact_only)  # radius 0 is always searched
    assert np.all(tight.n_candidates <= free.n_candidates) and np.any(tight.n_candidates < free.n_candidates)


def test_multi_index_tables_of_a_positional_map():
    """Each position gets its own tables; a larger map (where "auto" picks them) matches the
    reference, with any number of substrings."""
    rng = np.random.default_rng(11)
    codes = clustered_codes(rng, 3000, 5, 32, n_centres=50, flips=3)
    queries = np.concatenate([clustered_codes(rng, 20, 5, 32, n_centres=50, flips=3), codes[:5]])
    bmap = build_bucket_map(codes, np.arange(3000), positional=True)
    index = prepare_index(bmap, 32, 3, n_substrings=4)
    assert index.n_groups == 5 and index.order.shape == (4, bmap.keys.size)
    expected = reference_rerank_search(queries, codes, np.arange(3000), 3, 32, 6, 40, max_bucket=500)
    for method in ("mih", "scan"):
        got = rerank_search(queries, bmap, codes, 3, 32, k=6, shortlist=40, max_bucket=500, method=method)
        assert as_lists(got) == expected
    for m in (1, 2, 3, 4):  # the substrings the cost model did not choose find the same keys
        got = rerank_search(queries, bmap, codes, 3, 32, k=6, shortlist=40, max_bucket=500, method="mih", n_substrings=m)
        assert as_lists(got) == expected
    with pytest.raises(ValueError, match="index"):  # seed mode takes position-free tables only
        seed_search(queries, build_bucket_map(codes, np.arange(3000), False), 3, 32, 5, method="mih", index=index)


@pytest.mark.parametrize("n_substrings", [1, 2, 3])
@pytest.mark.parametrize("t", [2, 3, 5])
def test_keys_matched_in_two_stages_under_a_vote_budget_match_the_reference(n_substrings, t):
    """With a vote budget, multi-index tables are probed at each substring's own value first;
    the other probes only for the queries whose radius that does not settle. Budgets from
    none of a query's rings to all of them give the reference's lists and candidates."""
    rng = np.random.default_rng(100 * n_substrings + t)
    codes = clustered_codes(rng, 3000, 5, 32, n_centres=10, flips=2)
    queries = codes[rng.integers(0, 3000, 25)]  # indexed rows, most with a bit or two flipped
    for flipped in (queries[5:], queries[15:]):
        flipped ^= np.uint32(1) << rng.integers(0, 32, flipped.shape).astype(np.uint32)
    bmap = build_bucket_map(codes, np.arange(3000), positional=True)
    candidates = set()
    for budget in (0, 60, 300, 1500, 6000):
        got = rerank_search(queries, bmap, codes, t, 32, k=6, shortlist=40, max_bucket=500, vote_budget=budget,
                            method="mih", n_substrings=n_substrings)
        scan = rerank_search(queries, bmap, codes, t, 32, k=6, shortlist=40, max_bucket=500, vote_budget=budget,
                             method="scan")
        assert as_lists(got) == reference_rerank_search(queries, codes, np.arange(3000), t, 32, 6, 40, max_bucket=500,
                                                        vote_budget=budget)
        assert np.array_equal(got.n_candidates, scan.n_candidates)
        candidates.add(int(got.n_candidates.sum()))
    assert len(candidates) >= 3  # the budgets bind at several radii


def test_partitions_merge_like_separate_searches():
    rng = np.random.default_rng(11)
    codes = clustered_codes(rng, 90, 5, 32)
    queries = clustered_codes(rng, 4, 5, 32)
    parts = []
    for lo, hi in [(0, 30), (30, 75), (75, 90)]:
        bmap = build_bucket_map(codes[lo:hi], np.arange(lo, hi), positional=True)
        parts.append(rerank_search(queries, bmap, codes[lo:hi], 1, 32, k=4, shortlist=8, id_range=(lo, hi)))
    merged = merge_topk(parts, 4)
    best = []
    for lo, hi in [(0, 30), (30, 75), (75, 90)]:
        ref = reference_rerank_search(queries, codes[lo:hi], np.arange(lo, hi), 1, 32, 4, 8)
        best.append(ref)
    expected = [sorted(sum((b[q] for b in best), []), key=lambda x: (-x[1], x[0]))[:4] for q in range(4)]
    assert as_lists(merged) == expected


def test_no_match_gives_padding():
    codes = np.array([[1, 2], [3, 4]], np.uint32)
    bmap = build_bucket_map(codes, np.arange(2), positional=True)
    got = rerank_search(np.array([[1000, 2000]], np.uint32), bmap, codes, 0, 16, k=3)
    assert got.ids.tolist() == [[-1, -1, -1]] and got.n_candidates.tolist() == [0]


@pytest.mark.parametrize("bad", [
    dict(threshold=-1), dict(threshold=17), dict(k=0), dict(shortlist=0), dict(bits=4), dict(method="brute"),
])
def test_rejects_bad_arguments(bad):
    codes = np.array([[1, 2], [3, 4]], np.uint32)
    bmap = build_bucket_map(codes, np.arange(2), positional=True)
    args = dict(threshold=0, bits=16, k=1, shortlist=1) | bad
    with pytest.raises(ValueError):
        rerank_search(codes, bmap, codes, **args)


def test_rejects_mismatched_shapes():
    codes = np.array([[1, 2], [3, 4]], np.uint32)
    bmap = build_bucket_map(codes, np.arange(2), positional=True)
    with pytest.raises(ValueError, match="query codes"):
        rerank_search(codes[:, :1], bmap, codes, 0, 16, 1)
    with pytest.raises(ValueError, match="partition codes"):
        rerank_search(codes, bmap, codes[:1], 0, 16, 1)
    with pytest.raises(ValueError, match="below 2"):
        rerank_search(np.array([[1 << 20, 0]]), bmap, codes, 0, 16, 1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), t=st.integers(0, 4), shortlist=st.integers(1, 30),
       k=st.integers(1, 12), max_bucket=st.one_of(st.none(), st.integers(0, 20)),
       method=st.sampled_from(["auto", "scan", "enumerate", "mih"]))
def test_random_cases_match_reference(seed, t, shortlist, k, max_bucket, method):
    rng = np.random.default_rng(seed)
    codes = clustered_codes(rng, 40, 3, 8, n_centres=3, flips=1)
    queries = clustered_codes(rng, 3, 3, 8, n_centres=3, flips=1)
    bmap = build_bucket_map(codes, np.arange(40), positional=True)
    got = rerank_search(queries, bmap, codes, t, 8, k, shortlist, max_bucket, method=method)
    assert as_lists(got) == reference_rerank_search(queries, codes, np.arange(40), t, 8, k, shortlist, max_bucket)


def test_default_shortlist_grows_with_large_partitions():
    from pipeline.rerank import DEFAULT_SHORTLIST, default_shortlist

    assert default_shortlist(0) == default_shortlist(30_000) == default_shortlist(200_000) == DEFAULT_SHORTLIST == 400
    assert default_shortlist(1_000_000) == 2000 and default_shortlist(10_000_000) == 20_000


@pytest.mark.parametrize("method", ["scan", "enumerate", "mih"])
@pytest.mark.parametrize("budget", [None, 3000])
def test_many_matches_grow_the_match_buffer(method, budget):
    """More keys match than the kernel's first buffer holds (4x the largest position's keys)."""
    rng = np.random.default_rng(23)
    codes = rng.integers(0, 2**8, size=(600, 8)).astype(np.uint32)  # ~250 distinct keys per position
    queries = codes[:3]
    bmap = build_bucket_map(codes, np.arange(600), positional=True)
    got = rerank_search(queries, bmap, codes, 8, 8, k=5, shortlist=20, vote_budget=budget, method=method)  # t = bits: every key
    assert as_lists(got) == reference_rerank_search(queries, codes, np.arange(600), 8, 8, 5, 20, vote_budget=budget)


@pytest.mark.parametrize("method", ["scan", "mih"])
def test_large_blocks_are_matched_in_batches_with_the_same_results(method):
    """Keys are matched position by position for batches of queries (1, 8, 64, ... queries):
    a block of 700 queries gives each query what it gets alone and what the reference gives."""
    rng = np.random.default_rng(31)
    grid, n, bits = 5, 300, 16
    codes = clustered_codes(rng, n, grid, bits, n_centres=6, flips=3)
    queries = np.concatenate([clustered_codes(rng, 650, grid, bits, n_centres=6, flips=3), codes[:50]])
    bmap = build_bucket_map(codes, np.arange(n), positional=True)
    got = rerank_search(queries, bmap, codes, 3, bits, k=6, shortlist=15, max_bucket=40, vote_budget=120, method=method)
    alone = [as_lists(rerank_search(q[None], bmap, codes, 3, bits, k=6, shortlist=15, max_bucket=40, vote_budget=120,
                                    method=method))[0] for q in queries[::7]]
    assert as_lists(got)[::7] == alone
    assert as_lists(got) == reference_rerank_search(queries, codes, np.arange(n), 3, bits, 6, 15, 40, vote_budget=120)


def test_grids_of_256_positions_or_more_count_votes_in_wider_integers():
    """Votes are one byte per image for grids under 256 positions; a 16x16 grid (the cifar
    preset's) can give an image 256 votes, so it takes the int32 path."""
    rng = np.random.default_rng(41)
    grid, n, bits = 256, 30, 8
    codes = clustered_codes(rng, n, grid, bits, n_centres=2, flips=1)
    queries = np.concatenate([codes[:2], clustered_codes(rng, 3, grid, bits, n_centres=2, flips=1)])
    bmap = build_bucket_map(codes, np.arange(n), positional=True)
    got = rerank_search(queries, bmap, codes, 1, bits, k=5, shortlist=4)
    assert as_lists(got) == reference_rerank_search(queries, codes, np.arange(n), 1, bits, 5, 4)
    assert got.ids[0, 0] == 0 and got.scores[0, 0] == grid * bits  # all 256 positions voted for it



def test_a_block_scored_in_several_passes_and_chunks_of_rows_matches_brute_force():
    """The shortlisted rows of a block are scored together, chunk of rows by chunk of rows
    (1,024 rows of 49 32-bit codes each), in passes of 2**21 (row, query) pairs. Here every
    image is shortlisted for every query (t = bits, shortlist = n): 5,000 rows in 5 chunks and
    2.25M pairs in 2 passes give the exact top 10 by Hamming distance, ties by id, as a
    brute-force ranking of the whole partition does."""
    from pipeline import rerank

    rng = np.random.default_rng(43)
    grid, n, bits, start, k = 49, 5000, 32, 7000, 10
    codes = clustered_codes(rng, n, grid, bits, n_centres=8, flips=6)
    queries = np.concatenate([clustered_codes(rng, 440, grid, bits, n_centres=8, flips=6), codes[:10]])
    rows_per_chunk = 1 << int(np.log2(rerank._CHUNK_BYTES / (grid * 4)))
    assert len(queries) * n > rerank._RERANK_PAIRS and n > 4 * rows_per_chunk
    bmap = build_bucket_map(codes, np.arange(start, start + n), positional=True)
    got = rerank_search(queries, bmap, codes, bits, bits, k=k, shortlist=n, id_range=(start, start + n), method="scan")
    distances = np.stack([np.bitwise_count(codes ^ q).sum(axis=1, dtype=np.int64) for q in queries])
    best = np.argsort(distances, axis=1, kind="stable")[:, :k]  # stable: ties stay in id order
    assert np.array_equal(got.ids, best + start)
    assert np.array_equal(got.scores, grid * bits - np.take_along_axis(distances, best, axis=1))
    assert np.all(got.n_candidates == n)


@pytest.mark.parametrize("penalty", [0, 40, 150])
def test_a_grid_of_two_placements_scores_the_better_placement(penalty):
    """Codes of two placements one after the other (2 x 12 positions): every image shortlisted
    (t = bits, shortlist = n), the scores are the better placement's equal bits, the second
    counting ``penalty`` less, as a brute-force ranking gives them; one placement scores the
    whole grid as before."""
    rng = np.random.default_rng(penalty)
    grid, n, bits, start, k = 24, 300, 16, 50, 8
    codes = clustered_codes(rng, n, grid, bits, n_centres=5, flips=5)
    queries = np.concatenate([clustered_codes(rng, 20, grid, bits, n_centres=5, flips=5), codes[:5]])
    bmap = build_bucket_map(codes, np.arange(start, start + n), positional=True)
    got = rerank_search(queries, bmap, codes, bits, bits, k=k, shortlist=n, id_range=(start, start + n), method="scan",
                        placements=2, penalty=penalty)
    half = grid // 2 * bits
    parts = [np.stack([np.bitwise_count(codes[:, s] ^ q[s]).sum(axis=1, dtype=np.int64) for q in queries])
             for s in (slice(0, grid // 2), slice(grid // 2, grid))]
    scores = np.maximum(half - parts[0], half - parts[1] - penalty)
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    assert np.array_equal(got.scores, np.take_along_axis(scores, best, axis=1))
    assert np.array_equal(got.ids, best + start)
    whole = rerank_search(queries, bmap, codes, bits, bits, k=k, shortlist=n, id_range=(start, start + n), method="scan")
    assert np.array_equal(whole.scores, grid * bits - np.sort(parts[0] + parts[1], axis=1)[:, :k])
    for bad in (dict(placements=5), dict(placements=0), dict(placements=2, penalty=half), dict(penalty=-1)):
        with pytest.raises(ValueError, match="placements must divide|penalty must be between"):
            rerank_search(queries, bmap, codes, 2, bits, k=k, **bad)

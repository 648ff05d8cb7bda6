"""Small indexes and common codes: a query always finds an indexed copy of itself (issue 19).

The default mode skips buckets shared by more than ``--max-bucket-fraction`` of a partition's
images; in a 7-image index that was every bucket, so queries answered nothing. Seed mode has
no skipping rule and is checked alongside.
"""

from __future__ import annotations

import numpy as np
import pytest
from mirror_helpers import query_ids
from test_rerank import clustered_codes

from pipeline.buckets import build_bucket_map
from pipeline.rerank import rerank_search
from pipeline.seed import seed_search
from workflows.query import DEFAULT_THRESHOLD, QuerySettings

GRID, BITS = 16, 16


@pytest.mark.parametrize("n", range(1, 21))
def test_every_image_of_a_small_partition_finds_itself_in_both_modes(n):
    rng = np.random.default_rng(n)
    codes = clustered_codes(rng, n, GRID, BITS, n_centres=2, flips=1)  # most codes shared
    ids = np.arange(n)
    settings = QuerySettings()
    shortlist, max_bucket = settings.partition_limits(n)
    positional = build_bucket_map(codes, ids, positional=True)
    default = rerank_search(codes, positional, codes, DEFAULT_THRESHOLD["default"], BITS, k=10,
                            shortlist=shortlist, max_bucket=max_bucket)
    seed = seed_search(codes, build_bucket_map(codes, ids, positional=False), DEFAULT_THRESHOLD["seed"], BITS, k=10)
    for mode, got in (("default", default), ("seed", seed)):
        found = np.any(got.ids == ids[:, None], axis=1)
        assert found.all(), f"{mode} mode, {n} images: rows {np.flatnonzero(~found)} do not find themselves"
    assert np.all(default.scores[:, 0] == GRID * BITS)  # itself (or an exact copy) first


def test_partition_limits_skip_nothing_where_the_shortlist_reranks_every_image():
    settings = QuerySettings()
    assert settings.partition_limits(7) == (400, 7)
    assert settings.partition_limits(400) == (400, 400)
    assert settings.partition_limits(401) == (400, 40)
    assert settings.partition_limits(100_000) == (400, 300)
    assert QuerySettings(shortlist=5).partition_limits(7) == (5, 0)


def test_a_query_whose_exact_buckets_are_all_too_common_keeps_the_smallest():
    rng = np.random.default_rng(0)
    common = rng.integers(0, 2**BITS, (1, GRID), dtype=np.uint32)
    codes = np.concatenate([np.repeat(common, 30, axis=0), clustered_codes(rng, 50, GRID, BITS, n_centres=5, flips=3)])
    codes[5, 0] ^= 1  # row 5 shares every code of row 0 but one, whose bucket holds 1 image
    ids = np.arange(len(codes))
    bmap = build_bucket_map(codes, ids, positional=True)
    got = rerank_search(codes[[0, 5]], bmap, codes, 0, BITS, k=3, shortlist=10, max_bucket=10)
    assert got.n_candidates.tolist() == [29, 1]  # row 0: the smallest common bucket (29 rows); row 5: its own
    assert got.scores[:, 0].tolist() == [GRID * BITS] * 2
    assert got.ids[0, 0] in range(30) and got.ids[1, 0] == 5
    # a bucket kept as usual is no reason to add a skipped one
    assert rerank_search(codes[[5]], bmap, codes, 0, BITS, k=3, shortlist=10, max_bucket=1).n_candidates.tolist() == [1]


def test_a_seven_image_index_answers_its_own_files(make_index, fmnist_train, client, tmp_path):
    corpus, index_url = make_index(fmnist_train[100:107], shard_size=8, partitions=1)
    for mode in ("default", "seed"):
        hits = query_ids(index_url, corpus, str(tmp_path / f"{mode}.parquet"), client, mode=mode)
        assert sorted(hits) == list(range(7)), f"{mode}: queries without hits"
        for q, row in hits.items():
            assert q in [image_id for image_id, _ in row], f"{mode}: query {q} does not find itself: {row}"

"""Bucket maps against the brute-force dict reference."""

from __future__ import annotations

import numpy as np
import pytest
from reference import brute_force_buckets, bucket_map_as_dict

from pipeline.buckets import BucketMap, build_bucket_map, merge_bucket_maps

BITS = (8, 16, 32, 64)


def key_dtype(bits):
    return np.uint32 if bits <= 32 else np.uint64


def random_codes(rng, m, n_positions, bits, alphabet):
    """Codes drawn from a small pool so that buckets collide; top code bit always used."""
    pool = rng.integers(0, 2**bits, alphabet, dtype=np.uint64, endpoint=False)
    pool[0] = 2**bits - 1
    return pool[rng.integers(0, alphabet, (m, n_positions))].astype(key_dtype(bits))


def sparse_ids(rng, m):
    """Ascending ids with gaps (images that failed to read)."""
    return np.sort(rng.choice(10 * m + 10, m, replace=False)).astype(np.int64)


def assert_valid(bmap: BucketMap):
    assert bmap.offsets[0] == 0 and bmap.offsets[-1] == bmap.ids.size
    assert np.all(np.diff(bmap.offsets) > 0), "every bucket holds at least one id"
    for b in range(bmap.n_groups):
        assert np.all(bmap.group_keys(b)[1:] > bmap.group_keys(b)[:-1])
    for i in range(bmap.keys.size):
        bucket = bmap.ids[bmap.offsets[i] : bmap.offsets[i + 1]]
        assert np.all(bucket[1:] > bucket[:-1])


def assert_same_map(a: BucketMap, b: BucketMap):
    for name in ("keys", "offsets", "ids", "key_bounds"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert a.id_base == b.id_base


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("n_positions", [1, 4, 49])
@pytest.mark.parametrize("positional", [False, True])
def test_build_matches_brute_force(bits, n_positions, positional):
    rng = np.random.default_rng(bits * 100 + n_positions)
    m = 60
    codes = random_codes(rng, m, n_positions, bits, alphabet=12)
    ids = sparse_ids(rng, m)
    bmap = build_bucket_map(codes, ids, positional)
    assert bmap.keys.dtype == codes.dtype
    assert bmap.n_groups == (n_positions if positional else 1)
    assert_valid(bmap)
    assert bucket_map_as_dict(bmap, positional) == brute_force_buckets(codes, ids, positional)


@pytest.mark.parametrize("bits", BITS)
def test_build_many_distinct_codes(bits):
    # Spread over all bits: every radix pass does real work.
    rng = np.random.default_rng(bits)
    codes = random_codes(rng, 500, 7, bits, alphabet=3000)
    ids = np.arange(1000, 1500, dtype=np.int64)
    for positional in (False, True):
        bmap = build_bucket_map(codes, ids, positional)
        assert bucket_map_as_dict(bmap, positional) == brute_force_buckets(codes, ids, positional)


def test_repeated_code_in_a_row_counts_once():
    codes = np.array([[5, 5, 5, 7], [7, 5, 7, 7]], np.uint32)
    bmap = build_bucket_map(codes, np.array([3, 9]), positional=False)
    assert bmap.bucket(5).tolist() == [3, 9]
    assert bmap.bucket(7).tolist() == [3, 9]
    assert bmap.stats()["pairs"] == 4


def test_all_codes_equal_and_high_bits_only():
    # No radix digit varies; then only the top byte varies.
    ids = np.arange(6, dtype=np.int64)
    same = np.full((6, 3), 2**63 + 1, np.uint64)
    same_map = build_bucket_map(same, ids, False)
    assert bucket_map_as_dict(same_map, False) == {2**63 + 1: list(range(6))}
    high = (np.arange(18, dtype=np.uint64) % 3 << np.uint64(56)).reshape(6, 3)
    high_map = build_bucket_map(high, ids, False)
    assert bucket_map_as_dict(high_map, False) == brute_force_buckets(high, ids, False)


@pytest.mark.parametrize("positional", [False, True])
@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_empty_input(positional, dtype):
    bmap = build_bucket_map(np.empty((0, 5), dtype), np.empty(0, np.int64), positional)
    assert bmap.keys.dtype == dtype and bmap.keys.size == 0 and bmap.ids.size == 0
    assert bmap.offsets.tolist() == [0]
    assert bmap.key_bounds.tolist() == ([0] * 6 if positional else [0, 0])
    assert bmap.bucket(0, group=4 if positional else 0).size == 0
    assert bmap.stats() == dict(distinct_codes=0, pairs=0, min_density=0, median_density=0.0,
                                mean_density=0.0, max_density=0)
    assert bmap.id_span == (0, 0)


def test_bucket_lookup():
    codes = np.array([[1, 2], [2, 3], [2**32 - 1, 1]], np.uint32)
    bmap = build_bucket_map(codes, np.array([10, 20, 30]), positional=False)
    assert bmap.bucket(2).tolist() == [10, 20]
    assert bmap.bucket(2**32 - 1).tolist() == [30]
    assert bmap.bucket(4).size == 0
    assert bmap.bucket(0).size == 0
    assert bmap.bucket(2**40).size == 0 and bmap.bucket(-1).size == 0
    assert bmap.bucket(1).dtype == np.int64
    with pytest.raises(IndexError):
        bmap.bucket(1, group=1)
    pos = build_bucket_map(codes, np.array([10, 20, 30]), positional=True)
    assert pos.positional
    assert pos.bucket(1, group=0).tolist() == [10]
    assert pos.bucket(1, group=1).tolist() == [30]
    assert pos.bucket(2, group=1).tolist() == [10]


def test_stats_match_seed_describe():
    codes = np.array([[1, 2, 2], [1, 3, 4], [1, 2, 5], [1, 6, 6]], np.uint32)
    stats = build_bucket_map(codes, np.arange(4), positional=False).stats()
    # buckets: 1 -> 4 images, 2 -> 2, 3, 4, 5, 6 -> 1 each
    assert stats == dict(distinct_codes=6, pairs=10, min_density=1, median_density=1.0,
                         mean_density=10 / 6, max_density=4)
    assert all(type(v) in (int, float) for v in stats.values())


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("positional", [False, True])
def test_merge_of_chunks_equals_build_on_all(bits, positional):
    rng = np.random.default_rng(bits + positional)
    m = 90
    codes = random_codes(rng, m, 6, bits, alphabet=15)
    ids = sparse_ids(rng, m)
    whole = build_bucket_map(codes, ids, positional)
    cuts = [0, 7, 7, 40, 41, 90]  # includes an empty chunk
    chunks = [build_bucket_map(codes[a:b], ids[a:b], positional) for a, b in zip(cuts, cuts[1:])]
    assert_same_map(merge_bucket_maps(chunks), whole)
    assert_same_map(merge_bucket_maps(chunks[::-1]), whole)
    assert_same_map(merge_bucket_maps([whole]), whole)


def test_merge_of_interleaved_id_sets():
    rng = np.random.default_rng(7)
    codes = random_codes(rng, 50, 3, 16, alphabet=6)
    ids = np.arange(50, dtype=np.int64)
    even, odd = slice(0, None, 2), slice(1, None, 2)
    merged = merge_bucket_maps([build_bucket_map(codes[even], ids[even], False),
                                build_bucket_map(codes[odd], ids[odd], False)])
    assert_same_map(merged, build_bucket_map(codes, ids, False))


def test_merge_rejects_shared_ids_and_mixed_layouts():
    codes = np.array([[1, 2]], np.uint32)
    one = build_bucket_map(codes, np.array([4]), False)
    with pytest.raises(ValueError, match="share image ids"):
        merge_bucket_maps([one, one])
    with pytest.raises(ValueError, match="layouts"):
        merge_bucket_maps([one, build_bucket_map(codes, np.array([5]), True)])
    with pytest.raises(ValueError, match="layouts"):
        merge_bucket_maps([one, build_bucket_map(codes.astype(np.uint64), np.array([5]), False)])
    with pytest.raises(ValueError):
        merge_bucket_maps([])


def test_build_rejects_bad_input():
    codes = np.array([[1, 2], [3, 4]], np.uint32)
    with pytest.raises(ValueError, match="ascending"):
        build_bucket_map(codes, np.array([2, 1]), False)
    with pytest.raises(ValueError, match="ascending"):
        build_bucket_map(codes, np.array([1, 1]), False)
    with pytest.raises(ValueError, match="uint32 or uint64"):
        build_bucket_map(codes.astype(np.int64), np.array([1, 2]), False)
    with pytest.raises(ValueError, match="one per row"):
        build_bucket_map(codes, np.array([1, 2, 3]), False)
    with pytest.raises(ValueError, match="grid position"):
        build_bucket_map(np.empty((2, 0), np.uint32), np.array([1, 2]), True)


def test_bucket_map_checks_its_layout():
    good = build_bucket_map(np.array([[1, 2]], np.uint32), np.array([0]), False)
    with pytest.raises(ValueError, match="offsets"):
        BucketMap(good.keys, good.offsets[:-1], good.ids, good.key_bounds)
    with pytest.raises(ValueError, match="key_bounds"):
        BucketMap(good.keys, good.offsets, good.ids, np.array([0, 1], np.int64))
    with pytest.raises(ValueError, match="int32 or int64"):
        BucketMap(good.keys, good.offsets, good.ids.astype(np.int16), good.key_bounds)
    with pytest.raises(ValueError, match="int32 or int64"):
        BucketMap(good.keys, good.offsets.astype(np.uint32), good.ids, good.key_bounds)


def test_maps_hold_4_byte_ids_relative_to_their_first_image_and_8_byte_ones_where_needed():
    rng = np.random.default_rng(3)
    codes = random_codes(rng, 40, 4, 32, alphabet=9)
    ids = 5_000_000_000 + sparse_ids(rng, 40)
    for positional in (False, True):
        bmap = build_bucket_map(codes, ids, positional)
        assert (bmap.ids.dtype, bmap.offsets.dtype, bmap.id_base) == (np.int32, np.int32, ids[0])
        assert bmap.id_span == (ids[0], ids[-1] + 1)
        assert bucket_map_as_dict(bmap, positional) == brute_force_buckets(codes, ids, positional)
        assert sorted(set(bmap.image_ids().tolist())) == ids.tolist()
        wide = bmap.rebased(0)  # 5e9 does not fit 4 bytes
        assert (wide.ids.dtype, wide.offsets.dtype, wide.id_base) == (np.int64, np.int32, 0)
        assert bucket_map_as_dict(wide, positional) == bucket_map_as_dict(bmap, positional)
        assert_same_map(wide.rebased(int(ids[0])), bmap)
        with pytest.raises(ValueError, match="above the map's smallest id"):
            bmap.rebased(int(ids[0]) + 1)
    far = build_bucket_map(codes[:2], np.array([0, 2**31 + 5]), False)  # a span of more than 2**31 ids
    assert far.ids.dtype == np.int64 and far.bucket(int(codes[1, 0])).tolist()[-1] == 2**31 + 5

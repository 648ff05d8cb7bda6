"""Pixel baselines of ``patchhash evaluate`` against direct numpy statements."""

from __future__ import annotations

import numpy as np
import pytest
from reference import hamming

from pipeline.baselines import hamming_knn, lsh_codes, pixel_knn


def brute_knn(dist: np.ndarray, k: int) -> np.ndarray:
    return np.array([np.lexsort((np.arange(len(row)), row))[:k] for row in dist])


@pytest.mark.parametrize("k", [1, 5, 40])
def test_pixel_knn_is_exact_with_ties_by_id(k):
    rng = np.random.default_rng(k)
    index = rng.integers(0, 3, (40, 4, 4, 1), dtype=np.uint8)  # few values: many ties
    index[7] = index[3]
    queries = np.concatenate([rng.integers(0, 3, (6, 4, 4, 1), dtype=np.uint8), index[3:4]])
    dist = ((queries.reshape(len(queries), 1, -1).astype(int) - index.reshape(1, len(index), -1)) ** 2).sum(-1)
    np.testing.assert_array_equal(pixel_knn(index, queries, k), brute_knn(dist, k))


def test_pixel_knn_pads_when_k_exceeds_index():
    got = pixel_knn(np.zeros((3, 2, 2, 1)), np.ones((2, 2, 2, 1)), 5)
    assert got.tolist() == [[0, 1, 2, -1, -1]] * 2


def test_pixel_knn_rejects_other_shapes():
    with pytest.raises(ValueError, match="values each"):
        pixel_knn(np.zeros((3, 2, 2, 1)), np.zeros((1, 3, 3, 1)), 1)


@pytest.mark.parametrize("words, k", [(1, 1), (1, 7), (4, 10), (2, 100)])
def test_hamming_knn_is_exact_with_ties_by_id(words, k):
    rng = np.random.default_rng(words * 10 + k)
    index = rng.integers(0, 2**63, (60, words), dtype=np.uint64) & np.uint64(0xFF0F)  # few distinct bits
    queries = rng.integers(0, 2**63, (5, words), dtype=np.uint64) & np.uint64(0xFF0F)
    dist = np.array([[sum(hamming(int(a), int(b)) for a, b in zip(q, x)) for x in index] for q in queries])
    expected = brute_knn(dist, k)
    got = hamming_knn(index, queries, k)
    np.testing.assert_array_equal(got[:, :expected.shape[1]], expected)
    assert np.all(got[:, expected.shape[1]:] == -1)


def test_lsh_codes_are_random_hyperplane_signs():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (50, 28, 28, 1), dtype=np.uint8)
    mean = pixels.reshape(50, -1).mean(0)
    codes = lsh_codes(pixels, 70, mean, seed=3)
    assert codes.shape == (50, 2) and codes.dtype == np.uint64
    assert np.all(codes[:, 1] >> np.uint64(6) == 0)  # only 70 bits used
    np.testing.assert_array_equal(codes, lsh_codes(pixels, 70, mean, seed=3))
    assert not np.array_equal(codes, lsh_codes(pixels, 70, mean, seed=4))
    # a vector and its reflection through the mean lie on opposite sides of every hyperplane
    mirrored = (2 * mean - pixels.reshape(50, -1)[0])[None]
    a, b = lsh_codes(pixels[:1], 70, mean, seed=3), lsh_codes(mirrored, 70, mean, seed=3)
    assert sum(hamming(int(x), int(y)) for x, y in zip(a[0], b[0])) == 70


def test_lsh_codes_rank_near_copies_first():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (200, 8, 8, 1)).astype(np.float32)
    noisy = pixels[:20] + rng.normal(0, 5, pixels[:20].shape)
    mean = pixels.reshape(200, -1).mean(0)
    top = hamming_knn(lsh_codes(pixels, 256, mean), lsh_codes(noisy, 256, mean), 1)
    assert np.mean(top[:, 0] == np.arange(20)) >= 0.9

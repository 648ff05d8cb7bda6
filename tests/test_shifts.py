"""Query-time shift tolerance: the shifted copies and the merge of their results."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.topk import TopK
from pipeline.shifts import best_of_copies, best_of_groups, offsets, query_copies, shifted_copies


def test_offsets_start_unshifted_and_cover_the_square():
    assert offsets(0) == [(0, 0)]
    got = offsets(1)
    assert got[0] == (0, 0) and len(got) == 9 and set(got) == {(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    with pytest.raises(ValueError):
        offsets(-1)


def test_shifted_copies_move_content_and_replicate_edges():
    img = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1)
    copies = shifted_copies(img, 1)
    assert copies.shape == (9, 4, 4, 1)
    np.testing.assert_array_equal(copies[0], img[0])
    down_right = copies[offsets(1).index((1, 1))][..., 0]
    np.testing.assert_array_equal(down_right[1:, 1:], img[0, :3, :3, 0])  # content moved by (1, 1)
    np.testing.assert_array_equal(down_right[0, 1:], img[0, 0, :3, 0])  # top row replicated
    np.testing.assert_array_equal(down_right[1:, 0], img[0, :3, 0, 0])  # left column replicated
    two = shifted_copies(np.stack([img[0], img[0] + 100]), 1)
    np.testing.assert_array_equal(two[9:], shifted_copies(img + 100, 1))  # image-major order
    with pytest.raises(ValueError, match="not smaller"):
        shifted_copies(img, 4)


def test_best_of_copies_keeps_each_image_best_score():
    ids = np.array([[5, 7, -1], [7, 9, 5], [1, 2, 3], [3, 2, -1]])
    scores = np.array([[10., 8, 0], [12, 8, 3], [5, 4, 3], [6, 4, 0]])
    merged = best_of_copies(TopK(ids, scores, np.array([2, 3, 3, 2])), 2, 3)
    assert merged.ids.tolist() == [[7, 5, 9], [3, 1, 2]]
    assert merged.scores.tolist() == [[12, 10, 8], [6, 5, 4]]
    assert merged.n_candidates.tolist() == [5, 5]
    with pytest.raises(ValueError, match="whole number"):
        best_of_copies(TopK(ids[:3], scores[:3], np.zeros(3, np.int64)), 2, 3)


def test_best_of_copies_pads_and_breaks_ties_by_id():
    ids = np.array([[4, -1], [2, -1]])
    scores = np.array([[7., 0], [7, 0]])
    merged = best_of_copies(TopK(ids, scores, np.array([1, 1])), 2, 3)
    assert merged.ids.tolist() == [[2, 4, -1]] and merged.scores.tolist() == [[7, 7, 0]]


def test_best_of_groups_merges_any_number_of_copies_per_query():
    ids = np.array([[5, 7], [1, 2], [7, 9], [2, 3], [6, -1]])
    scores = np.array([[10., 8], [5, 4], [12, 8], [6, 4], [1, 0]])
    merged = best_of_groups(TopK(ids, scores, np.array([2, 2, 2, 2, 1])), np.array([0, 1, 0, 1, 0]), 3, 3)
    assert merged.ids.tolist() == [[7, 5, 9], [2, 1, 3], [-1, -1, -1]]  # query 2 has no copy: nothing found
    assert merged.scores.tolist() == [[12, 10, 8], [6, 5, 4], [0, 0, 0]]
    assert merged.n_candidates.tolist() == [5, 4, 0]
    with pytest.raises(ValueError, match="owners must name one of 2 queries"):
        best_of_groups(TopK(ids, scores, np.zeros(5, np.int64)), np.array([0, 1, 0, 1, 2]), 2, 3)


def test_half_pixel_offsets_and_copies():
    got = offsets(1, 0.5)
    assert got[0] == (0, 0) and len(got) == 25 and (0.5, -1) in got and (-0.5, -0.5) in got
    assert len(offsets(0.5, 0.5)) == 9
    for bad in [(1, 0.3), (1, 0), (1, 1.5)]:
        with pytest.raises(ValueError):
            offsets(*bad)
    with pytest.raises(ValueError, match="at most 4 steps each way"):
        offsets(5, 1)
    img = np.zeros((1, 6, 6, 1), np.uint8)
    img[0, :, 3:] = 200  # a vertical edge between columns 2 and 3
    copies = shifted_copies(img, 0.5, 0.5)
    assert copies.dtype == np.uint8 and copies.shape == (9, 6, 6, 1)
    np.testing.assert_array_equal(copies[0], img[0])
    right = copies[offsets(0.5, 0.5).index((0, 0.5))][:, :, 0]
    # moved right by half a pixel, the edge is interpolated (column 3 half-way, 100); the
    # unsharp mask keeps flat regions flat and steepens the edge (233 = 2 * 200 - 500 / 3)
    assert right[0].tolist() == [0, 0, 0, 100, 233, 200] and np.all(right == right[0])


def test_query_copies_follow_the_shifts_with_those_of_the_mirror():
    img = np.arange(2 * 16, dtype=np.uint8).reshape(2, 4, 4, 1)
    assert query_copies(img) is img or np.array_equal(query_copies(img), img)
    plain = query_copies(img, flip=True)
    assert plain.shape == (4, 4, 4, 1)
    np.testing.assert_array_equal(plain[[0, 2]], img)
    np.testing.assert_array_equal(plain[[1, 3]], img[:, :, ::-1])  # left-right mirror
    both = query_copies(img, 1, flip=True)
    assert both.shape == (2 * 18, 4, 4, 1)
    np.testing.assert_array_equal(both[:9], shifted_copies(img[:1], 1))
    np.testing.assert_array_equal(both[9:18], shifted_copies(img[:1, :, ::-1], 1))
    np.testing.assert_array_equal(both[18:27], shifted_copies(img[1:], 1))


def test_flip_finds_mirrored_copies_first(make_index, fmnist_train, client, tmp_path):
    from mirror_helpers import results

    from workflows.query import QuerySettings, query

    images = fmnist_train[:300]
    _, index_url = make_index(images, shard_size=64, partitions=2)
    originals = np.arange(0, 300, 15)
    mirrored = tmp_path / "mirrored.npy"
    np.save(mirrored, images[originals][:, :, ::-1])
    found = {}
    for flip in (False, True):
        out = str(tmp_path / f"flip-{flip}.parquet")
        query(index_url, str(mirrored), out, QuerySettings(flip=flip), client=client)
        found[flip] = results(out, column="image_id")
    full = max(score for hits in found[True].values() for _, score in hits)
    for q, image_id in enumerate(originals):
        top_score = found[True][q][0][1]
        assert top_score == full and image_id in [i for i, s in found[True][q] if s == full], (q, found[True][q][:3])
    assert sum(found[False][q][0][0] == i for q, i in enumerate(originals)) < len(originals)  # without it some are missed


def test_balanced_queries_are_searched_both_ways_with_the_mirror_rule(make_index, fmnist_train, client, tmp_path, monkeypatch):
    """With a model whose card has ``mirror: mean`` (``icons-photos``), a query whose brightness is
    balanced within ``BALANCED`` is searched as with ``--flip``, any other as without it."""
    from mirror_helpers import results

    from pipeline.encode import load_encoder
    from storage.canonical import mirror_margin
    from workflows import query as query_module
    from workflows.query import QuerySettings, query

    images = fmnist_train[:300]
    _, index_url = make_index(images, shard_size=64, partitions=2, model="icons-photos")
    queries = np.concatenate([images[:20], images[20:40, :, ::-1]])
    np.save(tmp_path / "queries.npy", queries)
    spec = load_encoder("icons-photos").card.image_spec
    from storage.images import convert_batch

    margins = mirror_margin(convert_batch(queries, spec)[0][:, :spec.height])  # the first placement's, as the query job judges

    def run(label, **kwargs):
        out = str(tmp_path / f"{label}.parquet")
        query(index_url, str(tmp_path / "queries.npy"), out, QuerySettings(**kwargs), client=client)
        return results(out, column="image_id")

    flipped = run("flip", flip=True)
    monkeypatch.setattr(query_module, "BALANCED", -1.0)  # no query balanced: each searched once
    plain = run("plain")
    monkeypatch.setattr(query_module, "BALANCED", 2.0)  # every query balanced
    assert run("all") == flipped
    monkeypatch.undo()
    auto = run("auto")
    balanced = margins < query_module.BALANCED
    assert 0 < balanced.sum() < len(queries), margins  # both kinds of query are in the test
    assert any(plain[q] != flipped[q] for q in np.flatnonzero(balanced))  # and searching both ways changes something
    for q in range(len(queries)):
        assert auto[q] == (flipped[q] if balanced[q] else plain[q]), q

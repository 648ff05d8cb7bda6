"""Brute-force reference implementations (plain Python dicts), for the tests only.

They follow seed 000's ``SemanticHashTable`` and ``search``/``_score_items`` literally,
with the threshold used in the score (``2**(t - d)``) where the seed hard-coded 3.
"""

from __future__ import annotations

import numpy as np


def hamming(a: int, b: int) -> int:
    """Hamming distance of two non-negative Python ints."""
    return bin(a ^ b).count("1")


def brute_force_buckets(codes, ids, positional: bool) -> dict:
    """The bucket map as a dict: key -> sorted list of image ids.

    The key is ``(position, code)`` for a positional map and ``code`` otherwise, as Python
    ints.
    """
    table: dict = {}
    for row, image_id in zip(np.asarray(codes).tolist(), np.asarray(ids).tolist()):
        for position, code in enumerate(row):
            key = (position, code) if positional else code
            table.setdefault(key, set()).add(image_id)
    return {key: sorted(bucket) for key, bucket in table.items()}


def bucket_map_as_dict(bmap, positional: bool) -> dict:
    """A :class:`pipeline.buckets.BucketMap` in the form of :func:`brute_force_buckets`.

    ``positional`` is given, not read from the map: a 1-position positional map looks
    position-free.
    """
    table = {}
    for block in range(bmap.key_bounds.size - 1):
        for i in range(bmap.key_bounds[block], bmap.key_bounds[block + 1]):
            code = int(bmap.keys[i])
            key = (block, code) if positional else code
            table[key] = (bmap.ids[bmap.offsets[i] : bmap.offsets[i + 1]].astype(np.int64) + bmap.id_base).tolist()
    return table


def reference_seed_search(query_codes, codes, ids, t: int, k: int | None) -> list:
    """Seed 000's scoring of each query against images ``ids`` with grid codes ``codes``.

    Returns, per query, the list of ``(image_id, score)`` sorted by score descending then
    id ascending, cut to the first ``k`` (all of them if ``k`` is None); only images with a
    non-zero score appear.
    """
    table = brute_force_buckets(codes, ids, positional=False)
    results = []
    for query in np.asarray(query_codes).tolist():
        scores: dict = {}
        for query_code in query:
            for item_id, score in _score_items(query_code, table, t).items():
                scores[item_id] = scores.get(item_id, 0) + score
        ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
        results.append(ranked if k is None else ranked[:k])
    return results


def _score_items(query_code: int, table: dict, t: int) -> dict:
    item_scores: dict = {}
    for code, bucket in table.items():
        d = hamming(query_code, code)
        if d <= t:
            for item_id in bucket:
                item_scores[item_id] = max(2 ** (t - d), item_scores.get(item_id, 0))
    return item_scores


def reference_rerank_search(query_codes, codes, ids, t: int, bits: int, k: int, shortlist: int,
                            max_bucket: int | None = None, vote_budget: int | None = None) -> list:
    """The default mode (``pipeline.rerank``) stated directly with dicts and sets.

    Returns, per query, ``[(image_id, equal_bits), ...]`` best first (equal bits descending,
    then id ascending), at most ``k`` entries.
    """
    table = brute_force_buckets(codes, ids, positional=True)
    grid_of = {image_id: row for image_id, row in zip(np.asarray(ids).tolist(), np.asarray(codes).tolist())}
    shortlist = max(shortlist, k)
    results = []
    for query in np.asarray(query_codes).tolist():
        within = [(hamming(code, query[position]), bucket) for (position, code), bucket in table.items()
                  if hamming(code, query[position]) <= t]
        matched = [(d, b) for d, b in within if max_bucket is None or len(b) <= max_bucket]
        # the query's own codes: one bucket per position, in position order
        exact = [b for (position, code), b in sorted(table.items()) if code == query[position]]
        if exact and not any(d == 0 for d, _ in matched):  # the smallest exact bucket is kept, the first position among equals
            matched.append((0, min(exact, key=len)))
        radius = 0  # the largest radius whose buckets hold at most vote_budget images (0 always)
        for r in range(1, t + 1):
            if vote_budget is None or sum(len(b) for d, b in matched if d <= r) <= vote_budget:
                radius = r
            else:
                break
        votes: dict = {}
        for d, bucket in matched:
            if d <= radius:
                for image_id in bucket:
                    votes[image_id] = votes.get(image_id, 0) + 1
        cut = max((c for c in range(1, len(query) + 1) if sum(v >= c for v in votes.values()) >= shortlist), default=1)
        chosen = [i for i, v in votes.items() if v >= cut]
        equal = {i: bits * len(query) - sum(hamming(a, b) for a, b in zip(grid_of[i], query)) for i in chosen}
        results.append(sorted(equal.items(), key=lambda item: (-item[1], item[0]))[:k])
    return results

"""REFERENCE ONLY: seed 000's Python search, restated from the blog post, for benchmarks.

This is not part of the ``patchhash`` package and is deliberately slow. It keeps the post's
data structures and algorithm (*Image Search Take 2 - Convolutional Autoencoders*, its
``SemanticHashTable``, ``populate_table``, ``search``, ``_score_items`` and
``_hamming_distance``) so that its timings and results stand for the post's code:

- the table is a dict ``code -> set of item ids``, and :attr:`SemanticHashTable.codes`
  rebuilds an ``int64`` array of all the distinct codes on every access (twice per query
  code, as in the post);
- every query code is compared with *all* distinct codes by a ``numba.vectorize`` popcount
  loop, and the items of the matching buckets are visited by Python loops.

Differences from the post, on purpose:

- the score of a code at Hamming distance ``d <= threshold`` is ``2**(threshold - d)``: the
  post hard-codes ``2**(3 - d)``, which agrees only for its default ``threshold=3``; this is
  the post's one bug, and ``2**(t - d)`` is the rule that ``patchhash query --mode seed``
  implements;
- items are integer image ids instead of ``id(item)`` of the image arrays, and
  :func:`search` returns ``(image_id, score)`` pairs instead of fetching the images;
- the functions take codes that are already encoded (the post calls ``encoder.predict``
  inside ``search`` and ``populate_table``); encoding is not part of the reference;
- the post's unused ``top_n`` argument of ``_score_items`` is dropped.

Like the post, the table works on codes below ``2**63`` (they are held as ``int64``).
"""

from __future__ import annotations

import collections

import numba
import numpy as np

__all__ = ["SemanticHashTable", "populate_table", "search", "search_with_tiebreak"]


class SemanticHashTable:
    """The post's semantic hash table: a dict from code to the set of ids of its items."""

    def __init__(self) -> None:
        self._semantic_hash_table: dict = {}

    @property
    def codes(self) -> np.ndarray:
        """All distinct codes, ``int64``, in insertion order (rebuilt on every access)."""
        return np.array(list(self._semantic_hash_table.keys()), dtype="int64")

    def fetch_bucket(self, code) -> set:
        """The ids of the items that hold ``code``."""
        return self._semantic_hash_table[code]

    def add_item(self, code, item_id: int) -> None:
        """Record that item ``item_id`` holds ``code``."""
        if code not in self._semantic_hash_table:
            self._semantic_hash_table[code] = set()
        self._semantic_hash_table[code].add(item_id)


def populate_table(codes: np.ndarray, ids, table: SemanticHashTable) -> None:
    """Add every code of every image to ``table``, as the post's ``populate_table`` does.

    Parameters
    ----------
    codes : numpy.ndarray
        Non-negative integer codes [n, G], below ``2**63``: row ``i`` holds the G patch
        codes of image ``ids[i]``.
    ids : sequence of int
        The n image ids.
    table : SemanticHashTable
        Table to fill.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2 or len(ids) != codes.shape[0]:
        raise ValueError(f"expected codes [n, G] and n ids, got {codes.shape} and {len(ids)} ids")
    if codes.size and (codes.min() < 0 or int(codes.max()) >> 63):
        raise ValueError("the seed's table holds codes in [0, 2**63) only")
    for item_id, item_codes in zip(ids, codes):
        for code in item_codes:
            table.add_item(code, item_id)


def search(query_codes, table: SemanticHashTable, threshold: int = 3, top_n: int = 10) -> list:
    """The post's ``search``: the ``top_n`` images by score, ties in arbitrary order.

    Parameters
    ----------
    query_codes : sequence of int
        The G' codes of one query image; a code that appears r times counts r times.
    table : SemanticHashTable
        The indexed images.
    threshold : int
        Hamming radius ``t``.
    top_n : int
        Number of images to return.

    Returns
    -------
    list of (int, int)
        ``(image_id, score)`` by score descending; images of equal score come in the
        (arbitrary) order of the score dict, as in the post.
    """
    scores = _accumulate_scores(query_codes, table, threshold)
    return sorted(scores.items(), key=lambda x: x[1], reverse=True)[:top_n]


def search_with_tiebreak(query_codes, table: SemanticHashTable, threshold: int = 3,
                         top_n: int = 10) -> list:
    """:func:`search` with a deterministic order: score descending, then image id ascending.

    This is the ranking of :func:`pipeline.seed.seed_search`, for comparisons.
    """
    scores = _accumulate_scores(query_codes, table, threshold)
    return sorted(scores.items(), key=lambda x: (-x[1], x[0]))[:top_n]


def _accumulate_scores(query_codes, table: SemanticHashTable, threshold: int) -> dict:
    """The loop of the post's ``search``: each image's score summed over the query codes."""
    scores = collections.defaultdict(int)
    for query_code in query_codes:
        raw_scores = _score_items(query_code, table, threshold)
        for item_id, score in raw_scores:
            scores[item_id] += score
    return scores


def _score_items(query_code, table: SemanticHashTable, threshold: int):
    """Each image's best score for one query code: ``(image_id, score)`` pairs.

    A code at distance ``d <= threshold`` scores ``2**(threshold - d)`` (the post:
    ``2**(3 - d)``); an image keeps the maximum over the matching codes it holds.
    """
    item_scores = {}
    # first score each code, then score items stored in each code
    d = _hamming_distance(query_code, table.codes)
    within_threshold = np.argwhere(d <= threshold).reshape(-1)
    code_scores = 2 ** (threshold - d[within_threshold])
    for score, code in zip(code_scores, table.codes[within_threshold]):
        for item_id in table.fetch_bucket(code):
            item_score = max(score, item_scores.get(item_id, 0))
            item_scores[item_id] = item_score
    return item_scores.items()


@numba.vectorize
def _hamming_distance(n1, n2):
    """Number of differing bits, clearing the lowest set bit of ``n1 ^ n2`` per step."""
    v = n1 ^ n2
    d = 0
    while v != 0:
        d += 1
        v &= v - 1
    return d

"""The default retrieval mode: a positional shortlist from the bucket maps, re-ranked by the
Hamming distance of the whole code grid (Krizhevsky & Hinton's short-list-then-re-rank).

For one partition and each query:

1. **Candidates.** At every grid position ``g`` the positional bucket map gives the images
   whose code at ``g`` lies within Hamming distance ``threshold`` of the query's code at
   ``g``. An image's *votes* are the number of positions at which it matched. Buckets
   holding more than ``max_bucket`` images (codes nearly every image shares, such as the
   blank background) are skipped: they cost the most and say the least. One exception: a
   query whose own codes (distance 0) all fall in skipped buckets keeps the smallest of
   those (the first position among equals), so that an indexed copy of the query is always
   a candidate.

   **Radius under a budget.** The matching buckets' sizes are summed by distance before
   any vote is cast. The query uses the largest radius ``r <= threshold`` whose buckets
   hold at most ``vote_budget`` entries in all, the votes it would cast (radius 0 always).
   In a small partition every query gets the full ``threshold``; in a large one, where a
   ball of radius 3 reaches a large share of the images, the radius shrinks instead of the
   work growing with the partition. The rule depends only on bucket sizes, never on
   visiting order.
2. **Shortlist.** The images with the most votes: the largest vote count ``c`` such that at
   least ``shortlist`` images have ``c`` votes or more; all of those images (ties included,
   so the shortlist never depends on visiting order).
3. **Re-rank.** Each shortlisted image is scored by the number of equal bits of its whole
   code grid and the query's (``G * bits`` minus the Hamming distance of the concatenated
   codes); the best ``k`` by that score, then by image id, are returned.

   The scores of a block's queries are computed together, in the order of the partition's
   rows: in a large partition most rows are shortlisted by several queries of a block (each
   by 9 of 1,000 queries at 1M images), and read at random query by query they were the
   search's largest memory traffic. Taken chunk by chunk, each row comes from memory once.

Images outside every matching bucket are never looked at: this is a hashing index, not a
brute-force scan. ``n_candidates`` counts the images with at least one vote.
"""

from __future__ import annotations

import operator

import numpy as np
from numba import njit

from .buckets import BucketMap
from .hamming import PROBES_ALL, PROBES_EXACT, PROBES_OTHER, ball_size, distance, enumerate_within, mih_rings, scan_within
from .jit import PREFETCH_AHEAD, grow, prefetch
from .mih import METHOD_CODE, METHODS, MIH, SCAN, choose_method, no_tables, prepare_index
from .topk import TopK, check_id_range, offer_at, sort_heap

__all__ = ["DEFAULT_SHORTLIST", "default_shortlist", "rerank_search"]

DEFAULT_SHORTLIST = 400
"""The fewest images re-ranked per query and partition unless told otherwise (docs/QUALITY.md)."""
_SHORTLIST_SHARE = 500  # one image in this many of a large partition is re-ranked
# Queries are matched in batches, position by position. The first batch is one query; each
# next one is sized by the matches per query so far to hold about _BATCH_MATCHES matched keys
# (4 bytes each in the outermost ring, 9 closer in) at once, and at most _BATCH_GROWTH times
# the previous one.
_MAX_BATCH = 1024
_BATCH_MATCHES = 8 << 20
_BATCH_GROWTH = 8
# Shortlisted (row, query) pairs are gathered until there are this many (16 MB), then scored
# in order of the rows' chunks of _CHUNK_BYTES of codes (a chunk, the block's query codes and
# top-k heaps stay in a core's cache). Neither changes results.
_RERANK_PAIRS = 1 << 21
_CHUNK_BYTES = 1 << 18


def default_shortlist(n_images: int) -> int:
    """Images re-ranked per query in a partition of ``n_images``: 400, or 0.2% of a partition
    of more than 200,000 images.

    Votes count matching positions, at most one per position, so in a large partition many
    images tie around the shortlist's cut; a shortlist that grows with the partition keeps
    the true nearest grids in it (docs/BENCHMARKS.md section 5: recall@10 0.57 with 400 and
    0.78 with 2,000 images at 1M).
    """
    return max(DEFAULT_SHORTLIST, operator.index(n_images) // _SHORTLIST_SHARE)


def rerank_search(
    query_codes: np.ndarray,
    bmap: BucketMap,
    codes: np.ndarray,
    threshold: int,
    bits: int,
    k: int,
    shortlist: int = DEFAULT_SHORTLIST,
    max_bucket: int | None = None,
    vote_budget: int | None = None,
    id_range: tuple[int, int] | None = None,
    method: str = "auto",
    n_substrings: int | None = None,
    placements: int = 1,
    penalty: int = 0,
) -> TopK:
    """Answer a block of queries against one partition in the default mode (module docstring).

    Parameters
    ----------
    query_codes : numpy.ndarray
        Integer ``[q, G]`` code grids (flattened), below ``2**bits``.
    bmap : BucketMap
        Positional bucket map of the partition (``G`` key groups).
    codes : numpy.ndarray
        ``[n, G]`` code grids of the partition's images; row ``i`` is image ``start + i``.
    threshold : int
        Per-position Hamming radius for candidates, ``0 <= threshold <= bits``.
    bits : int
        Code width (8..64).
    k : int
        Images returned per query (>= 1).
    shortlist : int
        Minimum number of images re-ranked per query (>= 1; raised to ``k``).
    max_bucket : int, optional
        Skip buckets with more images than this (default: none skipped), except a query's
        smallest exact-match bucket when all of them would be skipped.
    vote_budget : int, optional
        Per query, the largest radius ``r <= threshold`` is used whose buckets (those not
        skipped) hold at most this many entries in all, summed over positions; radius 0 is
        always used (default: no budget, ``r = threshold``).
    id_range : (int, int), optional
        The partition's ``(start, stop)`` image ids; defaults to the span of the map's ids.
    method : {"auto", "scan", "enumerate", "mih"}
        How each position's keys within ``threshold`` are found; ``"auto"`` lets
        :func:`pipeline.mih.choose_method` pick by the mean keys per position. Results
        never depend on it.
    n_substrings : int, optional
        With ``method="mih"``: the substrings of the multi-index tables (default: the cost
        model's choice, :func:`pipeline.mih.mih_substrings`). Results never depend on it.
    placements : int
        How many placements of each image the code grid holds, one after the other (equal
        parts of ``G``; a model card's ``"placements"``). An image scores the best of its
        placements' numbers of equal bits, each placement after the first counting ``penalty``
        bits less. One placement scores the whole grid.
    penalty : int
        Bits a placement after the first counts less (``0 <= penalty`` < its bits).

    Returns
    -------
    TopK
        Per query, the best ``k`` shortlisted images; scores are numbers of equal bits.
    """
    threshold, bits, k, shortlist = (operator.index(v) for v in (threshold, bits, k, shortlist))
    if not 8 <= bits <= 64:
        raise ValueError(f"bits must be between 8 and 64, got {bits}")
    if not 0 <= threshold <= bits:
        raise ValueError(f"threshold must be between 0 and {bits}, got {threshold}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if k < 1 or shortlist < 1:
        raise ValueError(f"k and shortlist must be >= 1, got {k} and {shortlist}")
    placements, penalty = operator.index(placements), operator.index(penalty)
    if placements < 1 or bmap.n_groups % placements:
        raise ValueError(f"placements must divide the {bmap.n_groups} positions of the grid, got {placements}")
    if not 0 <= penalty < bmap.n_groups // placements * bits:
        raise ValueError(f"penalty must be between 0 and a placement's {bmap.n_groups // placements * bits} bits, got {penalty}")
    start, stop = check_id_range(bmap, id_range)
    n_range = stop - start
    grid = bmap.n_groups
    queries = np.asarray(query_codes)
    if queries.ndim != 2 or queries.shape[1] != grid:
        raise ValueError(f"query codes must have shape [q, {grid}] for this map, got {queries.shape}")
    if codes.shape != (n_range, grid):
        raise ValueError(f"partition codes must have shape [{n_range}, {grid}], got {codes.shape}")
    if queries.size and (queries.min() < 0 or int(queries.max()) >> bits):
        raise ValueError(f"query codes must be below 2**{bits}")
    if bmap.keys.size >= 2**31 or n_range >= 2**31:  # the kernel keeps matched keys and shortlisted rows as int32
        raise ValueError(f"the default mode searches maps of fewer than 2**31 keys and images, got {bmap.keys.size} "
                         f"keys and {n_range} images")
    dtype = bmap.keys.dtype
    queries = queries.astype(dtype, copy=False)
    codes = np.ascontiguousarray(codes, dtype=dtype)
    max_bucket = n_range if max_bucket is None else min(max(0, operator.index(max_bucket)), n_range)
    most = int(np.iinfo(np.int64).max)  # the kernel's integers; a larger budget is no budget
    vote_budget = most if vote_budget is None else min(max(0, operator.index(vote_budget)), most)
    n_queries = queries.shape[0]
    ids = np.full((n_queries, k), -1, np.int64)
    scores = np.zeros((n_queries, k), np.int64)
    n_candidates = np.zeros(n_queries, np.int64)
    if n_queries and n_range:
        # the keys of a position are matched as seed mode would match a key group of that size
        if method == "auto":
            method = choose_method(bmap.keys.size // grid, bits, threshold)
        largest_group = int(np.diff(bmap.key_bounds).max(initial=0))
        buffer = min(largest_group, ball_size(bits, threshold)) if method == "enumerate" else largest_group
        if method == "mih":
            index = prepare_index(bmap, bits, threshold, n_substrings)
            tables = (index.shifts, index.widths, index.table_bits, index.order, index.table_keys, index.starts)
            sizes = index.sizes
        else:
            empty = no_tables(dtype)
            tables = (*empty[:5], empty[5][None])
            sizes = empty[6]
        matches = 1 if method == "mih" else max(buffer, 1)  # mih_rings writes the kernel's own buffers
        _rerank_queries(
            queries, bmap.keys, bmap.key_bounds, bmap.offsets, bmap.ids, codes, bits, threshold,
            METHOD_CODE[method], tables, sizes, start - bmap.id_base, max_bucket, vote_budget,
            max(shortlist, k), np.zeros(n_range, np.uint8 if grid < 256 else np.int32), np.empty(n_range, np.int64),
            max(buffer, 1), np.empty(matches, np.int64), np.empty(matches, np.int64), ids, scores, n_candidates,
            placements, penalty,
        )
        ids[ids >= 0] += bmap.id_base  # the kernel counts ids as the map stores them
    return TopK(ids, scores.astype(np.float64), n_candidates)


@njit(nogil=True, cache=True)
def _rerank_queries(queries, keys, key_bounds, offsets, bucket_ids, codes, bits, t, method,
                    tables, sizes, start, max_bucket, vote_budget, shortlist, votes, touched, largest, match_idx,
                    match_dist, out_ids, out_scores, n_candidates, placements, penalty):
    # largest: the most matches one code can have at one position; match_idx and match_dist
    # receive those of a key scan or an enumeration
    n_queries, grid = queries.shape
    # The buckets each code of a batch matched, position by position: key positions in the
    # map (int32: prepare_index and rerank_search check that they fit), with their bucket
    # sizes and distances; keys at distance exactly t (most matches: the outermost ring is the
    # largest) are kept as keys only, their buckets fetched for the queries whose radius
    # reaches t (in a large partition, many queries stop short of it).
    found_key = np.empty(max(1024, 4 * largest), np.int32)
    found_size = np.empty(found_key.size, np.int32)
    found_dist = np.empty(found_key.size, np.uint8)
    outer_key = np.empty(found_key.size, np.int32)
    used_at = np.empty(found_key.size, np.int64)  # one query's buckets within its radius
    used_size = np.empty(found_key.size, np.int32)
    ring_votes = np.zeros(t + 1, np.int64)
    hist = np.empty(grid + 1, np.int64)  # shortlisted images per vote count, one query at a time
    # each query's top k is a worst-at-root heap in its rows of out_*, sorted at the end
    heap_size = np.zeros(n_queries, np.int64)
    per = grid // placements  # each placement's positions
    seen = np.zeros(votes.size if placements > 1 else 1, np.uint8)  # rows already shortlisted for a query
    pair_row = np.empty(1 << 16, np.int32)  # shortlisted rows, with their queries, not scored yet
    pair_query = np.empty(pair_row.size, np.int32)
    by_chunk = np.empty(pair_row.size, np.int64)
    n_pairs = 0
    never = np.iinfo(np.int64).max
    # With multi-index tables whose substrings are probed beyond their own value, and a vote
    # budget, keys can be matched in two stages: the exact probes find every bucket within
    # ``exact_rings`` of a query (and some farther ones); a query whose radius they settle
    # (its budget is spent within exact_rings + 1) needs none of the other probes, which
    # hold most of the probing's work. Half the queries of a 1M partition stop at radius 1;
    # in a small partition few do, and a second pass would cost more than it saves
    # (+12% at 60k images), so a batch is staged when a quarter of the last one stopped there.
    n_substrings = tables[0].size
    can_stage = method == MIH and t // max(n_substrings, 1) > 0 and vote_budget < never
    staged = can_stage
    exact_rings = n_substrings - 1
    batch = 1
    b0 = 0
    while b0 < n_queries:
        b1 = min(b0 + batch, n_queries)
        nb = b1 - b0
        n_stages = 2 if staged else 1
        n_settled = 0  # queries whose radius is at most exact_rings
        # 1. Keys, one position at a time for the whole batch: that position's keys and
        #    tables stay in cache from one query to the next (on 30k images, 2.8x faster than
        #    query by query for a batch of 2000, 1.9x for 256). Queries sharing a code there
        #    share its matches (sorted by code, each code is matched once): on 1M images, a
        #    position's common codes (a blank background) hold the most matches. Query
        #    b0 + i's matches at g in stage e are found[seg_lo[e, g, i]:seg_hi[e, g, i]] and
        #    outer[outer_lo[e, g, i]:outer_hi[e, g, i]].
        seg_lo = np.empty((n_stages, grid, nb), np.int64)
        seg_hi = np.empty((n_stages, grid, nb), np.int64)
        outer_lo = np.empty((n_stages, grid, nb), np.int64)
        outer_hi = np.empty((n_stages, grid, nb), np.int64)
        votes_at = np.zeros((nb, t + 1), np.int64)  # votes the buckets at each distance would cast
        # per query: whether an exact-match bucket was kept, else the smallest one skipped
        exact_kept = np.zeros(nb, np.bool_)
        exact_size = np.full(nb, never, np.int64)
        exact_at = np.zeros(nb, np.int64)
        needed = np.ones(nb, np.bool_)  # whether a query needs the second stage's probes
        n_found = 0
        n_outer = 0
        for e in range(n_stages):
            stage = PROBES_ALL if not staged else (PROBES_EXACT if e == 0 else PROBES_OTHER)
            if e == 1:
                for i in range(nb):
                    cast = 0
                    for d in range(exact_rings + 2):
                        cast += votes_at[i, d]  # exact up to exact_rings, a lower bound beyond
                    needed[i] = cast <= vote_budget
            for g in range(grid):
                lo = key_bounds[g]
                hi = key_bounds[g + 1]
                by_code = np.argsort(queries[b0:b1, g])
                for ii in range(nb):
                    i = by_code[ii]
                    code = queries[b0 + i, g]
                    if ii == 0 or code != queries[b0 + by_code[ii - 1], g]:
                        # the queries sharing this code: matched if one of them needs it
                        wanted = False
                        jj = ii
                        while jj < nb and queries[b0 + by_code[jj], g] == code:
                            wanted |= needed[by_code[jj]]
                            jj += 1
                        if n_found + largest > found_key.size:
                            capacity = max(2 * found_key.size, n_found + largest)
                            found_key = grow(found_key, n_found, capacity)
                            found_size = grow(found_size, n_found, capacity)
                            found_dist = grow(found_dist, n_found, capacity)
                        if n_outer + largest > outer_key.size:
                            outer_key = grow(outer_key, n_outer, max(2 * outer_key.size, n_outer + largest))
                        ring_votes[:] = 0
                        n_in, n_out = 0, 0
                        if wanted:
                            n_in, n_out = _match_code(code, g, lo, hi, t, bits, method, stage, keys, offsets, tables,
                                                      sizes, max_bucket, match_idx, match_dist, found_key[n_found:],
                                                      found_size[n_found:], found_dist[n_found:], outer_key[n_outer:],
                                                      ring_votes)
                        code_lo, code_outer_lo = n_found, n_outer
                        n_found, n_outer, code_kept, code_exact_size, code_exact_at = _keep_matches(
                            lo, n_in, n_out, n_found, n_outer, found_key, found_size, found_dist, outer_key, offsets,
                            max_bucket)
                    seg_lo[e, g, i] = code_lo
                    seg_hi[e, g, i] = n_found
                    outer_lo[e, g, i] = code_outer_lo
                    outer_hi[e, g, i] = n_outer
                    for d in range(t + 1):
                        votes_at[i, d] += ring_votes[d]
                    exact_kept[i] |= code_kept
                    if code_exact_size < exact_size[i]:
                        exact_size[i] = code_exact_size
                        exact_at[i] = code_exact_at
        # 2. Each query of the batch on its own: radius, votes, shortlist, re-rank
        for i in range(nb):
            qi = b0 + i
            # the radius grows from 0 while the votes stay within the budget (radius 0 always)
            r = 0
            cast = votes_at[i, 0]
            while r < t and cast + votes_at[i, r + 1] <= vote_budget:
                r += 1
                cast += votes_at[i, r]
            n_settled += r <= exact_rings
            # each placement's positions vote and shortlist on their own (one placement: the whole
            # grid); the union of the shortlists is re-ranked
            first_pair = n_pairs
            n_candidates[qi] = 0
            for pl in range(placements):
                n_used = 0  # the buckets within the radius: map keys first, then where their ids are
                for e in range(n_stages):
                    for g in range(pl * per, (pl + 1) * per):
                        more = seg_hi[e, g, i] - seg_lo[e, g, i] + (outer_hi[e, g, i] - outer_lo[e, g, i] if r == t else 0)
                        if n_used + more + 1 > used_at.size:
                            used_at = grow(used_at, n_used, max(2 * used_at.size, n_used + more + 1))
                            used_size = grow(used_size, n_used, used_at.size)
                        for j in range(seg_lo[e, g, i], seg_hi[e, g, i]):
                            if found_dist[j] <= r:
                                used_at[n_used] = found_key[j]
                                used_size[n_used] = found_size[j]
                                n_used += 1
                        if r == t:
                            for j in range(outer_lo[e, g, i], outer_hi[e, g, i]):
                                used_at[n_used] = outer_key[j]
                                used_size[n_used] = -1  # not kept: read from the offsets below
                                n_used += 1
                n_kept = 0
                for j in range(n_used):
                    if j + PREFETCH_AHEAD < n_used:
                        prefetch(offsets, used_at[j + PREFETCH_AHEAD])
                    key = used_at[j]
                    size = used_size[j]
                    if size < 0:
                        size = offsets[key + 1] - offsets[key]
                        if size > max_bucket:
                            continue
                    used_at[n_kept] = offsets[key]
                    used_size[n_kept] = size
                    n_kept += 1
                n_used = n_kept
                if pl == placements - 1 and not exact_kept[i] and exact_size[i] != never:
                    used_at[n_used] = exact_at[i]
                    used_size[n_used] = exact_size[i]
                    n_used += 1
                n_touched, n_short = _vote_and_shortlist(used_at, used_size, n_used, bucket_ids, per, start,
                                                         shortlist, votes, touched, hist)
                n_candidates[qi] += n_touched
                if n_pairs + n_short > pair_row.size:
                    capacity = max(2 * pair_row.size, n_pairs + n_short)
                    pair_row = grow(pair_row, n_pairs, capacity)
                    pair_query = grow(pair_query, n_pairs, capacity)
                    by_chunk = np.empty(capacity, np.int64)
                for j in range(n_short):
                    row = touched[j]
                    if placements > 1:
                        if seen[row]:
                            continue
                        seen[row] = 1
                    pair_row[n_pairs] = row
                    pair_query[n_pairs] = qi
                    n_pairs += 1
            if placements > 1:
                for j in range(first_pair, n_pairs):
                    seen[pair_row[j]] = 0
            if n_pairs >= _RERANK_PAIRS or qi == n_queries - 1:
                _rerank_pairs(pair_row, pair_query, n_pairs, by_chunk, codes, queries, bits, start, out_scores, out_ids,
                              heap_size, placements, penalty)
                n_pairs = 0
        # the next batch: about _BATCH_MATCHES matches at this batch's rate, growing gradually
        batch = max(1, min(_MAX_BATCH, _BATCH_GROWTH * nb, _BATCH_MATCHES * nb // max(n_found + n_outer, 1)))
        staged = can_stage and 4 * n_settled >= nb
        b0 = b1
    for qi in range(n_queries):
        sort_heap(out_scores[qi], out_ids[qi], heap_size[qi])


@njit(nogil=True, cache=True)
def _match_code(code, g, lo, hi, t, bits, method, stage, keys, offsets, tables, sizes, max_bucket, match_idx,
                match_dist, found_key, found_size, found_dist, outer_key, ring_votes):
    """The keys of position ``g`` (map keys ``lo:hi``) within ``t`` of ``code``, as
    :func:`pipeline.hamming.mih_rings` gives them (positions within the key group, written from
    the start of ``found_*`` and ``outer_key``); ``ring_votes`` (all zero) receives each ring's
    votes. Returns ``(n_inner, n_outer)``."""
    if method == MIH:
        return mih_rings(code, t, tables[0], tables[1], tables[2], tables[3][:, lo:hi], tables[4][:, lo:hi],
                         sizes[:, lo:hi], tables[5][g], offsets[lo:], max_bucket, found_key, found_dist, found_size,
                         outer_key, ring_votes, stage)
    if method == SCAN:
        n_match = scan_within(code, keys[lo:hi], t, match_idx, match_dist)
    else:
        n_match = enumerate_within(code, keys[lo:hi], bits, t, match_idx, match_dist)
    return _split_rings(match_idx, match_dist, n_match, t, offsets[lo:], max_bucket, found_key, found_dist, found_size,
                        outer_key, ring_votes)


@njit(nogil=True, cache=True)
def _keep_matches(lo, n_in, n_out, n_found, n_outer, found_key, found_size, found_dist, outer_key, offsets,
                  max_bucket):
    """Keep a code's ``n_in`` closer and ``n_out`` outermost matches, written at ``n_found`` and
    ``n_outer``, as map key positions (key group starting at ``lo``). Closer buckets of more
    than ``max_bucket`` images go, but for the exact match's. Returns the new ``(n_found,
    n_outer)``, whether an exact-match bucket was kept, and else the size and place in the
    map's ids of the exact match's skipped bucket (size ``int64`` max: none)."""
    for j in range(n_outer, n_outer + n_out):
        outer_key[j] += lo
    kept = False
    exact_size = np.iinfo(np.int64).max
    exact_at = 0
    for j in range(n_found, n_found + n_in):
        key = lo + found_key[j]
        size = found_size[j]
        if size > max_bucket:
            if found_dist[j] == 0:
                exact_size = size
                exact_at = offsets[key]
            continue
        kept |= found_dist[j] == 0
        found_key[n_found] = key  # n_found <= j: compacting in place is safe
        found_size[n_found] = size
        found_dist[n_found] = found_dist[j]
        n_found += 1
    return n_found, n_outer + n_out, kept, exact_size, exact_at


@njit(nogil=True, cache=True)
def _split_rings(match_idx, match_dist, n_match, t, offsets, max_bucket, inner_idx, inner_dist, inner_size, outer_idx,
                 ring_votes):
    """What :func:`pipeline.hamming.mih_rings` gives, from the matches of a key scan or an
    enumeration (``offsets[i]``: where key position ``i`` of the key group begins)."""
    n_in = 0
    n_out = 0
    for j in range(n_match):
        if j + PREFETCH_AHEAD < n_match:  # the keys are scattered: fetch ahead
            prefetch(offsets, match_idx[j + PREFETCH_AHEAD])
        idx = match_idx[j]
        d = match_dist[j]
        size = offsets[idx + 1] - offsets[idx]
        if size <= max_bucket:
            ring_votes[d] += size
        if t > 0 and d == t:
            outer_idx[n_out] = idx
            n_out += 1
        else:
            inner_idx[n_in] = idx
            inner_dist[n_in] = d
            inner_size[n_in] = size
            n_in += 1
    return n_in, n_out


@njit(nogil=True, cache=True)
def _vote_and_shortlist(used_at, used_size, n_used, bucket_ids, grid, start, shortlist, votes, touched, hist):
    """Steps 1 (votes) and 2 of the module docstring for one query, whose matching buckets
    are ``bucket_ids[used_at[j]:used_at[j] + used_size[j]]`` for ``j < n_used``. Returns the
    numbers of candidates (images with a vote) and of shortlisted images, whose rows are left
    in ``touched[:n_short]``; ``votes`` is left all zero."""
    n_touched = 0
    for j in range(n_used):
        # the buckets are scattered: fetch ahead
        if j + PREFETCH_AHEAD < n_used:
            prefetch(bucket_ids, used_at[j + PREFETCH_AHEAD])
        for p in range(used_at[j], used_at[j] + used_size[j]):
            row = bucket_ids[p] - start
            if votes[row] == 0:
                touched[n_touched] = row
                n_touched += 1
            votes[row] += 1
    hist[:] = 0
    for j in range(n_touched):
        hist[votes[touched[j]]] += 1
    cut = grid
    above = hist[grid]
    while cut > 1 and above < shortlist:
        cut -= 1
        above += hist[cut]
    n_short = 0
    for j in range(n_touched):
        row = touched[j]
        if votes[row] >= cut:
            touched[n_short] = row  # n_short <= j: compacting in place is safe
            n_short += 1
        votes[row] = 0
    return n_touched, n_short


@njit(nogil=True, cache=True)
def _rerank_pairs(pair_row, pair_query, n_pairs, by_chunk, codes, queries, bits, start, heap_scores, heap_ids,
                  heap_size, placements, penalty):
    """Step 3 for ``n_pairs`` shortlisted (row, query) pairs: each row's score is offered to its
    query's heap (``heap_*[query]``, ``heap_size[query]`` entries). The pairs are counting-sorted
    into ``by_chunk`` by chunk of rows (``row << 32 | query``), and the chunks scored in order,
    the next one fetched while one is scored. A grid of several ``placements`` scores the best
    of its parts, each after the first ``penalty`` bits less."""
    n_rows, grid = codes.shape
    shift = 0  # a chunk holds 2**shift rows
    while (2 << shift) * grid * codes.itemsize <= _CHUNK_BYTES:
        shift += 1
    n_chunks = (n_rows >> shift) + 1
    bounds = np.zeros(n_chunks + 1, np.int64)
    for j in range(n_pairs):
        bounds[(pair_row[j] >> shift) + 1] += 1
    for c in range(n_chunks):
        bounds[c + 1] += bounds[c]
    cursor = bounds[:n_chunks].copy()
    for j in range(n_pairs):
        c = pair_row[j] >> shift
        by_chunk[cursor[c]] = (np.int64(pair_row[j]) << 32) | pair_query[j]
        cursor[c] += 1
    flat = codes.reshape(codes.size)
    per_line = max(1, 64 // codes.itemsize)
    total_bits = grid * bits
    per = grid // placements
    chunk_size = (1 << shift) * grid
    for c in range(n_chunks):
        # one cache line of the next chunk per pair scored here; and, since the pairs of a
        # chunk come in no order of rows, each pair's row a few pairs ahead, every cache line
        next_at = (c + 1) * chunk_size
        next_end = min(next_at + chunk_size, flat.size)
        for j in range(bounds[c], bounds[c + 1]):
            if next_at < next_end:
                prefetch(flat, next_at)
                next_at += per_line
            if j + PREFETCH_AHEAD < bounds[c + 1]:
                ahead = (by_chunk[j + PREFETCH_AHEAD] >> 32) * grid
                for e in range(0, grid, per_line):
                    prefetch(flat, ahead + e)
                prefetch(flat, ahead + grid - 1)  # a row that does not start a cache line ends in one more
            row = by_chunk[j] >> 32
            qi = by_chunk[j] & 0xFFFFFFFF
            if placements == 1:
                dist = 0
                for g in range(grid):
                    dist += distance(codes[row, g], queries[qi, g])
                score = total_bits - dist
            else:
                score = 0
                for p in range(placements):
                    dist = penalty if p else 0
                    for g in range(p * per, (p + 1) * per):
                        dist += distance(codes[row, g], queries[qi, g])
                    score = max(score, per * bits - dist)
            offer_at(heap_scores, heap_ids, heap_size, qi, score, row + start)

"""Where the ids a run allocates go: into which partition, and which encode task writes them.

New ids fill what the last partition lacks of ``partition_size`` live images, then start new
partitions. Encode tasks write rows of a codes array whose chunks hold ``chunk`` rows (the
index's shard size); a chunk written in parts by two tasks at once loses one of the writes,
so no chunk is ever split between two tasks of one run.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["IdRange", "place_ids", "encode_cuts"]


@dataclass(frozen=True)
class IdRange:
    """New ids ``[start, stop)`` in partition ``partition`` (its position in the new list of
    partitions), which is ``new`` or an existing one that grows."""

    start: int
    stop: int
    partition: int
    new: bool


def place_ids(n_partitions: int, n_old: int, n_new: int, partition_size: int, room: int = 0, chunk: int = 1) -> list[IdRange]:
    """The ranges of ids ``[n_old, n_new)``: about ``room`` of them to the last of ``n_partitions``
    existing partitions, then new partitions of at most ``partition_size`` ids.

    Every range but the last ends at a multiple of ``chunk`` (the last partition and the new
    ones may share the ``codes/`` array): the one at or below where it should end, or the next
    one above if that would leave the range empty.
    """

    def aligned(cur: int, target: int) -> int:
        below = target // chunk * chunk
        return min(n_new, below if below > cur else below + chunk)

    ranges: list[IdRange] = []
    cur = n_old
    if n_partitions and room > 0 and n_new > cur:
        stop = aligned(cur, cur + room)
        ranges.append(IdRange(cur, stop, n_partitions - 1, False))
        cur = stop
    index = n_partitions
    while cur < n_new:
        stop = aligned(cur, cur + partition_size)
        ranges.append(IdRange(cur, stop, index, True))
        cur, index = stop, index + 1
    return ranges


def encode_cuts(ranges: list[IdRange], chunk: int) -> list[tuple[int, int, int]]:
    """The encode tasks' ``(start, stop, partition)``: each range cut at multiples of ``chunk``."""
    cuts = []
    for r in ranges:
        bounds = [r.start, *range((r.start // chunk + 1) * chunk, r.stop, chunk), r.stop]
        cuts += [(a, b, r.partition) for a, b in zip(bounds[:-1], bounds[1:])]
    return cuts

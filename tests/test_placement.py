"""Placement of new ids: partitions filled as planned, and no codes chunk split between two encode tasks."""

from hypothesis import given
from hypothesis import strategies as st

from workflows.placement import encode_cuts, place_ids


def _chunks(a: int, b: int, chunk: int) -> set[int]:
    return set(range(a // chunk, (b - 1) // chunk + 1))


@given(st.integers(1, 16), st.integers(0, 5), st.integers(0, 200), st.integers(0, 200), st.integers(1, 6), st.integers(0, 40))
def test_ranges_tile_the_new_ids_and_no_chunk_is_written_by_two_tasks(chunk, n_partitions, n_old, n_added, chunks_per_partition, room):
    partition_size = chunk * chunks_per_partition
    n_new = n_old + n_added
    ranges = place_ids(n_partitions, n_old, n_new, partition_size, room, chunk)
    if not n_added:
        assert ranges == []
        return
    assert [r.start for r in ranges] == [n_old, *(r.stop for r in ranges[:-1])] and ranges[-1].stop == n_new
    grown = [r for r in ranges if not r.new]
    if n_partitions and room and n_added:
        assert len(grown) == 1 and grown[0].partition == n_partitions - 1
        assert abs(grown[0].stop - grown[0].start - min(room, n_added)) < chunk
    else:
        assert not grown
    assert [r.partition for r in ranges if r.new] == list(range(n_partitions, n_partitions + len(ranges) - len(grown)))
    assert all(r.stop - r.start <= partition_size for r in ranges if r.new)

    cuts = encode_cuts(ranges, chunk)
    assert sum(b - a for a, b, _ in cuts) == n_added
    seen: set[int] = set()
    for a, b, _ in cuts:
        assert a < b and not (_chunks(a, b, chunk) & seen), f"chunk of ids [{a}, {b}) written by two tasks: {cuts}"
        seen |= _chunks(a, b, chunk)


def test_the_last_partition_takes_its_room_up_to_a_chunk_boundary():
    # 40 ids in chunks of 8, the last partition lacks 1 image: ids 40..47 share one chunk,
    # so it takes all of them (two tasks writing halves of chunk 5 at once lose one half)
    ranges = place_ids(2, 40, 44, 20, room=1, chunk=8)
    assert [(r.start, r.stop, r.partition, r.new) for r in ranges] == [(40, 44, 1, False)]
    ranges = place_ids(2, 40, 60, 16, room=1, chunk=8)
    assert [(r.start, r.stop, r.partition, r.new) for r in ranges] == [(40, 48, 1, False), (48, 60, 2, True)]

"""The uri of each image id, as a query job gathers its hits' uris (storage.image_tables.ImageUris)."""

import numpy as np
import pyarrow as pa
import pytest

from storage.image_tables import ImageUris


def uris_in_three_chunks() -> tuple[ImageUris, list]:
    every = [f"u{i}" for i in range(10)]
    every[4] = None  # an unreadable image
    chunks = [pa.array(every[:3]), pa.array(every[3:3], pa.string()), pa.array(every[3:8]), pa.array(every[8:], pa.large_string())]
    return ImageUris(chunks, np.array([0, 3, 3, 8, 10])), every


def test_take_gathers_across_chunks_in_the_order_asked():
    uris, every = uris_in_three_chunks()
    ids = np.array([9, 0, 4, 3, 9, 7, 2, 8])
    assert uris.take(ids).to_pylist() == [every[i] for i in ids]
    assert uris.take(np.empty(0, np.int64)).to_pylist() == []
    assert len(uris) == 10 and uris.to_numpy().tolist() == every


def test_ids_out_of_range_and_chunks_that_do_not_tile_are_refused():
    uris, _ = uris_in_three_chunks()
    for bad in ([10], [-1]):
        with pytest.raises(IndexError, match=r"\[0, 10\)"):
            uris.take(np.array(bad))
    with pytest.raises(ValueError, match="each chunk"):
        ImageUris([pa.array(["a", "b"])], np.array([0, 3]))

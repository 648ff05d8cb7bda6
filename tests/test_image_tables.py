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


# ---------------------------------------------------------------- uris kept between jobs


def _tables(url: str, uris_of_shards: list[list[str]], version: int = 1):
    """Image tables of consecutive shards holding ``uris_of_shards``, and a manifest-like
    object with their entries (what read_image_uris reads of a manifest)."""
    from types import SimpleNamespace

    from storage.image_tables import IMAGES_SCHEMA, write_shard_tables

    shards, start = [], 0
    for uris in uris_of_shards:
        stop = start + len(uris)
        images = pa.table({"image_id": pa.array(range(start, stop), pa.int64()), "uri": uris,
                           "source": pa.array([0] * len(uris), pa.int32()), "fingerprint": pa.array([None] * len(uris), pa.string())},
                          schema=IMAGES_SCHEMA)
        errors = pa.table({name: pa.array([], f.type) for name, f in zip(IMAGES_SCHEMA.names, IMAGES_SCHEMA)})
        shards.append(write_shard_tables(url, start, stop, version, images, errors))
        start = stop
    return SimpleNamespace(shards=shards)


@pytest.fixture
def counted_reads(monkeypatch):
    """The image tables read from storage, by path, as read_image_uris reads them."""
    import storage.image_tables as image_tables
    from storage.uri_cache import clear_uri_cache

    clear_uri_cache()
    reads: list[str] = []
    real = image_tables._read

    def read(index, relative, columns=None):
        reads.append(relative)
        return real(index, relative, columns)

    monkeypatch.setattr(image_tables, "_read", read)
    yield reads
    clear_uri_cache()


@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_second_job_reads_no_table_and_gets_the_same_uris(tmp_path, where, counted_reads):
    from storage.image_tables import read_image_uris

    url = str(tmp_path / "idx") if where == "local" else f"memory://uri-cache-{tmp_path.name}"
    manifest = _tables(url, [["a", "b", "c"], ["d", "e"]])
    first = read_image_uris(url, manifest).to_numpy().tolist()
    assert first == ["a", "b", "c", "d", "e"] and len(counted_reads) == 2
    assert read_image_uris(url, manifest).to_numpy().tolist() == first
    assert len(counted_reads) == 2  # both tables came from memory


@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_table_written_again_at_the_same_url_is_read_again(tmp_path, where, counted_reads):
    """An index deleted and built again at the same URL has tables of the same names: their
    listing differs, so the new uris are read, never the kept ones."""
    import time

    from storage.fs import url_to_fs
    from storage.image_tables import read_image_uris

    url = str(tmp_path / "idx") if where == "local" else f"memory://uri-cache-again-{tmp_path.name}"
    manifest = _tables(url, [["a", "b"], ["c"]])
    assert read_image_uris(url, manifest).to_numpy().tolist() == ["a", "b", "c"]
    fs, path = url_to_fs(url)
    fs.rm(path, recursive=True)
    time.sleep(0.01)  # a modification time that can differ on any file system
    rebuilt = _tables(url, [["x", "y"], ["z"]])
    assert [s.images for s in rebuilt.shards] == [s.images for s in manifest.shards]
    assert read_image_uris(url, rebuilt).to_numpy().tolist() == ["x", "y", "z"]
    assert len(counted_reads) == 4


def test_a_store_that_cannot_list_its_tables_is_read_every_time(tmp_path, monkeypatch, counted_reads):
    """Without a listing, nothing tells a table written again apart: its uris are never kept."""
    from fsspec.implementations.memory import MemoryFileSystem

    from storage.image_tables import read_image_uris

    url = f"memory://uri-cache-unlisted-{tmp_path.name}"
    manifest = _tables(url, [["a", "b"], ["c"]])

    def no_listing(self, path, detail=True, **kwargs):
        raise NotImplementedError("this store cannot list")

    monkeypatch.setattr(MemoryFileSystem, "ls", no_listing)
    for _ in range(2):
        assert read_image_uris(url, manifest).to_numpy().tolist() == ["a", "b", "c"]
    assert len(counted_reads) == 4


def test_the_budget_keeps_the_latest_tables_and_zero_keeps_none(tmp_path, monkeypatch, counted_reads):
    from storage.image_tables import read_image_uris

    url = str(tmp_path / "idx")
    manifest = _tables(url, [[f"first-{i}" for i in range(100)], [f"second-{i}" for i in range(100)]])
    one_table = pa.array([f"second-{i}" for i in range(100)]).nbytes
    monkeypatch.setenv("PATCHHASH_URI_CACHE_BYTES", str(one_table + 100))  # room for one table
    read_image_uris(url, manifest)
    read_image_uris(url, manifest)
    # the first table was pushed out by the second, then read again (pushing the second out)
    assert counted_reads == [s.images for s in manifest.shards] * 2
    monkeypatch.setenv("PATCHHASH_URI_CACHE_BYTES", "0")
    counted_reads.clear()
    read_image_uris(url, manifest)
    read_image_uris(url, manifest)
    assert len(counted_reads) == 4


def test_a_bad_budget_is_refused_with_the_fix(monkeypatch):
    from storage.errors import ConfigError
    from storage.uri_cache import uri_cache_budget

    for bad in ("lots", "-5"):
        monkeypatch.setenv("PATCHHASH_URI_CACHE_BYTES", bad)
        with pytest.raises(ConfigError, match="PATCHHASH_URI_CACHE_BYTES.*e.g. 1GiB"):
            uri_cache_budget()
    monkeypatch.setenv("PATCHHASH_URI_CACHE_BYTES", "2MiB")
    assert uri_cache_budget() == 2 * 2**20

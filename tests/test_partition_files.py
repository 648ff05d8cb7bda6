"""Worker-local copies of partitions (workflows/partition_files.py): written once, memory-mapped
after, searched with the same answers, told apart when an object is rewritten, bounded in bytes."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from pipeline.buckets import BucketMap
from pipeline.mih import cached_indexes, prepare_index
from pipeline.rerank import rerank_search
from storage import ConfigError
from storage.location import IndexLocation
from storage.manifest import read_manifest
from workflows.partition_files import PartitionFiles, local_budget, local_files


def _built(index_url: str, partition):
    """The partition's live map and codes, read from the index as a worker without copies does."""
    from storage.arrays import read_array_group, read_rows

    arrays, attrs = read_array_group(f"{index_url}/{partition.maps[0]}")
    bmap = BucketMap(arrays["keys"], arrays["offsets"], arrays["ids"], arrays["key_bounds"], attrs["id_base"])
    codes = read_rows(f"{index_url}/{partition.codes}", partition.start, partition.stop).reshape(partition.stop - partition.start, -1)
    return bmap, codes


@pytest.fixture(scope="module")
def small_index(make_index, fmnist_train):
    """tests/test_query.py's index (500 real images, 4 partitions): one build when both run on one worker."""
    return make_index(fmnist_train[:500], shard_size=64, partitions=4)[1]


@pytest.fixture()
def partition(small_index):
    return read_manifest(small_index).search_partitions("pos")[1]


def test_a_partition_is_copied_once_then_memory_mapped_with_its_tables_and_answers_the_same(small_index, partition, tmp_path):
    index = IndexLocation.of(small_index)
    files = PartitionFiles(tmp_path / "local", 2**30)
    folder = files.folder(index, partition)
    assert folder == files.folder(index, partition) != files.folder(index, read_manifest(small_index).search_partitions("pos")[0])
    built, codes = _built(small_index, partition)
    calls = []

    def build():
        calls.append(1)
        return built

    first = files.bucket_map(folder, build)
    mapped = files.bucket_map(folder, build)
    assert len(calls) == 1 and isinstance(mapped.ids, np.memmap) and isinstance(mapped.keys, np.memmap)
    assert (mapped.ids.dtype, mapped.id_base) == (np.int32, partition.start)
    for name in ("keys", "offsets", "ids", "key_bounds"):
        np.testing.assert_array_equal(getattr(mapped, name), getattr(built, name))
    mapped_codes = files.codes(folder, lambda: codes)
    assert isinstance(files.codes(folder, lambda: pytest.fail("read again")), np.memmap)
    np.testing.assert_array_equal(mapped_codes, codes)

    queries = codes[::7]
    args = (3, 16, 10, 50, None, None, (partition.start, partition.stop), "mih", 2)
    expected = rerank_search(queries, built, codes, *args)
    got = rerank_search(queries, first, mapped_codes, *args)  # builds the tables on `first`
    np.testing.assert_array_equal(got.ids, expected.ids)
    np.testing.assert_array_equal(got.scores, expected.scores)
    (folder / "mih-16-2").mkdir()  # tables an older version saved, without bucket sizes
    (folder / "mih-16-2" / "order.npy").write_bytes(b"")
    files.save_tables(folder, first)
    assert sorted(p.name for p in folder.glob("mih*")) == ["mih2-16-2"], "the older tables go"
    assert [isinstance(t.order, np.memmap) for t in cached_indexes(first)] == [True], "the saved copy replaces the build"
    np.testing.assert_array_equal(rerank_search(queries, first, mapped_codes, *args).ids, expected.ids)

    again = files.bucket_map(folder, build)  # what the next job's worker gets
    assert files.adopt_tables(folder, again) == 1
    index_tables = prepare_index(again, 16, 3, 2)
    assert isinstance(index_tables.order, np.memmap) and cached_indexes(again) == [index_tables]
    for name in ("order", "sizes"):
        np.testing.assert_array_equal(getattr(index_tables, name), getattr(prepare_index(first, 16, 3, 2), name))
    got = rerank_search(queries, again, mapped_codes, *args)
    np.testing.assert_array_equal(got.ids, expected.ids)


def test_an_object_rewritten_in_place_gets_a_new_copy(small_index, tmp_path):
    index_url = str(tmp_path / "index")
    shutil.copytree(small_index, index_url)
    partition = read_manifest(index_url).search_partitions("pos")[0]
    files = PartitionFiles(tmp_path / "local", 2**30)
    before = files.folder(IndexLocation.of(index_url), partition)
    metadata = f"{index_url}/{partition.maps[0]}/zarr.json"
    os.utime(metadata, (1_700_000_000, 1_700_000_000))  # the same path, another write
    assert files.folder(IndexLocation.of(index_url), partition) != before
    assert files.folder(IndexLocation.of(small_index), partition) != before, "another index at another URL"


def test_the_least_recently_used_copies_go_beyond_the_budget_and_mapped_arrays_stay_readable(tmp_path):
    from pipeline.buckets import build_bucket_map

    rng = np.random.default_rng(0)
    maps = [build_bucket_map(rng.integers(0, 2**16, (3000, 4), dtype=np.uint32), np.arange(3000), True) for _ in range(3)]
    files = PartitionFiles(tmp_path / "local", 2**40)
    folders = [tmp_path / "local" / name for name in ("a", "b", "c")]
    mapped = [files.bucket_map(folder, lambda bmap=bmap: bmap) for folder, bmap in zip(folders, maps)]
    os.utime(folders[0], (1, 1))  # a used long ago
    os.utime(folders[1], (2, 2))
    one = sum(f.stat().st_size for f in folders[2].iterdir())
    files.budget = int(1.5 * one)
    files.evict()
    assert [f.exists() for f in folders] == [False, False, True]
    np.testing.assert_array_equal(mapped[0].ids, maps[0].ids)  # still mapped by this process
    assert files.bucket_map(folders[0], lambda: maps[0]) is not None and folders[0].exists(), "written again when needed"


def test_local_copies_are_configured_by_environment_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("PATCHHASH_LOCAL_DIR", str(tmp_path / "copies"))
    monkeypatch.setenv("PATCHHASH_LOCAL_BYTES", "3GiB")
    files = local_files()
    assert (files.root, files.budget) == (tmp_path / "copies", 3 * 2**30)
    monkeypatch.setenv("PATCHHASH_LOCAL_DIR", "off")
    assert local_files() is None
    monkeypatch.setenv("PATCHHASH_LOCAL_BYTES", "lots")
    with pytest.raises(ConfigError, match="PATCHHASH_LOCAL_BYTES='lots'"):
        local_budget()


def test_a_format_2_map_of_8_byte_absolute_ids_loads_as_the_4_byte_map_of_format_3(small_index, tmp_path, monkeypatch):
    from storage.arrays import read_array_group, write_array_group
    from workflows.worker_cache import load_partition

    monkeypatch.setenv("PATCHHASH_LOCAL_DIR", "off")
    index_url = str(tmp_path / "index")
    shutil.copytree(small_index, index_url)
    partition = read_manifest(index_url).search_partitions("pos")[2]
    new = load_partition(index_url, partition)
    group = f"{index_url}/{partition.maps[0]}"
    arrays, attrs = read_array_group(group)
    assert arrays["ids"].dtype == np.int32 and attrs["id_base"] == partition.start == new.id_base
    old_attrs = {k: v for k, v in attrs.items() if k != "id_base"}
    write_array_group(group, {**arrays, "offsets": arrays["offsets"].astype(np.int64),
                              "ids": arrays["ids"].astype(np.int64) + partition.start}, old_attrs)
    old = load_partition(index_url + "/", partition)  # another cache key: read again
    assert old is not new and (old.ids.dtype, old.offsets.dtype, old.id_base) == (np.int32, np.int32, partition.start)
    for name in ("keys", "offsets", "ids", "key_bounds"):
        np.testing.assert_array_equal(getattr(old, name), getattr(new, name))

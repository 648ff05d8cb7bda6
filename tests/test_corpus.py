"""Corpus readers (storage.corpus) on real files: image folders, IDX, npy, Zarr, uri lists.

A reader test takes the ``store`` fixture: it runs once on local files and once on
``memory://`` ones. The others use local files: what only they do (relative paths, ``pread``,
memory maps, other processes), shard arithmetic, Fashion-MNIST, and the upload to S3 (moto).
"""

from __future__ import annotations

import csv
import gzip
import io
import multiprocessing
import os
import pickle
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pytest
import zarr
from corpus_helpers import (
    FASHION_TEST,
    FASHION_TRAIN,
    FASHION_TRAIN_LABELS,
    Sample,
    Store,
    idx_bytes,
    memory_root,
    moto_s3,
    npy_bytes,
    parquet_bytes,
    png_bytes,
    requires_fashion,
    write_broken_folder,
    write_idx,
    write_samples,
)

from storage.corpus import (
    IdxCorpus,
    ImageFilesCorpus,
    NpyCorpus,
    ReadError,
    Shard,
    UriListCorpus,
    ZarrCorpus,
    clear_source_cache,
    open_corpus,
)
from storage.corpus._sources import SOURCES, consecutive_runs, open_source
from storage.errors import ConfigError, CorpusError
from storage.images import ImageSpec, convert

GREY = ImageSpec(28, 28, 1)
RGB = ImageSpec(32, 32, 3)


def assert_same_data(a, b):
    np.testing.assert_array_equal(a.ids, b.ids)
    assert a.uris == b.uris
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert a.errors == b.errors


def assert_same_data_pixels(a, b):
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.pixels, b.pixels)


def assert_samples(data, samples: list[Sample], spec: ImageSpec):
    assert data.errors == []
    np.testing.assert_array_equal(data.ids, np.arange(len(samples)))
    assert data.pixels.shape == (len(samples), *spec.shape)
    assert data.pixels.dtype == np.uint8
    for pixels, sample in zip(data.pixels, samples, strict=True):
        expected = sample.grey if spec.channels == 1 else np.array(sample.rgb)
        tolerance = 0 if sample.exact else 3
        np.testing.assert_allclose(pixels, np.broadcast_to(expected, pixels.shape),
                                   atol=tolerance, err_msg=sample.relpath)


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path) -> Iterator[Store]:
    """The folder a reader test writes to: ``tmp_path``, then a fresh ``memory://`` folder."""
    if request.param == "local":
        yield Store(str(tmp_path))
    else:
        with memory_root() as url:
            yield Store(url)


@pytest.fixture
def samples(store) -> list[Sample]:
    """The sample images, written to ``images/`` of the store."""
    return write_samples(store, "images")


@pytest.fixture
def sample_dir(tmp_path) -> tuple[Path, list[Sample]]:
    """The sample images in the local folder ``tmp_path/images``."""
    return tmp_path / "images", write_samples(Store(str(tmp_path)), "images")


# --- folders, globs, single files ---------------------------------------------------------


def test_folder_is_listed_recursively_sorted_by_full_path(store, samples):
    corpus = open_corpus(store.url("images"))
    assert isinstance(corpus, ImageFilesCorpus)
    assert corpus.kind == "images"
    assert corpus.url == store.url("images")
    assert corpus.uris() == [store.url(f"images/{s.relpath}") for s in samples]
    assert len(corpus) == len(samples) == 12
    assert corpus.native_spec() is None


@pytest.mark.parametrize("spec", [GREY, RGB], ids=["28x28x1", "32x32x3"])
def test_folder_of_mixed_formats_converts_to_exact_values(store, samples, spec):
    assert_samples(open_corpus(store.url("images")).read(spec), samples, spec)


def test_relative_local_url_gives_absolute_uris(sample_dir, monkeypatch):
    root, samples = sample_dir
    monkeypatch.chdir(root.parent)
    corpus = open_corpus("images/c")
    assert corpus.url == str(root / "c")
    assert corpus.uris()[0] == str(root / "c" / "d" / "palette.gif")


def test_glob_selects_matching_image_files(store, samples):
    corpus = open_corpus(store.url("images/*/*.png"))
    assert corpus.uris() == [store.url("images/c/rgba.png"), store.url("images/f/la.png")]
    recursive = open_corpus(store.url("images/**/*.t*"))  # also matches notes.txt: not an image
    assert [Path(u).name for u in recursive.uris()] == ["bw.tif"]
    assert [Path(u).name for u in open_corpus(store.url("images/**/image.*")).uris()] == [
        "image.TIFF", "image.bmp", "image.webp"
    ]
    globbed = open_corpus(store.url("images/e/*"))
    assert [u.rsplit("/", 1)[1] for u in globbed.uris()] == ["grey.jpeg", "photo.JPG"]


def test_glob_without_images_names_the_pattern(store, samples):
    with pytest.raises(CorpusError, match=r"no images found at .*\*\.txt"):
        open_corpus(store.url("images/*.txt"))


def test_single_image_file_is_a_corpus_of_one(store, samples):
    url = store.url("images/c/rgba.png")
    corpus = open_corpus(url)
    assert corpus.uris() == [url]
    data = corpus.read(GREY)
    assert data.ids.tolist() == [0]
    assert (data.pixels == next(s.grey for s in samples if s.relpath == "c/rgba.png")).all()


@pytest.mark.parametrize("name", ["missing", "notes.txt-nope", "empty"])
def test_nothing_readable_raises_corpus_error(store, name):
    store.write("empty/readme.md", "no images here")
    with pytest.raises(CorpusError, match=r"no images found at .*; expected a folder or glob"):
        open_corpus(store.url(name))


def test_unreadable_files_become_read_errors(store):
    reasons = write_broken_folder(store, "broken")
    corpus = open_corpus(store.url("broken"))
    data = corpus.read(GREY)
    assert data.ids.tolist() == [0, 4]
    assert data.uris == [corpus.uris()[0], corpus.uris()[4]]
    assert (data.pixels == 9).all()
    expected = [ReadError(i, corpus.uris()[i], reasons[Path(corpus.uris()[i]).name])
                for i in (1, 2, 3)]
    assert data.errors == expected


def test_file_deleted_after_listing_is_a_read_error(store, samples):
    corpus = open_corpus(store.url("images"))
    store.delete(corpus.uris()[2])
    data = corpus.read(GREY)
    assert data.errors == [ReadError(2, corpus.uris()[2], "file not found")]
    assert data.ids.tolist() == [i for i in range(len(samples)) if i != 2]


# --- shards -------------------------------------------------------------------------------


def test_shards_cut_contiguous_ranges(sample_dir):
    root, _ = sample_dir
    corpus = open_corpus(root)
    shards = corpus.shards(5)
    assert [(s.index, s.start, s.stop) for s in shards] == [(0, 0, 5), (1, 5, 10), (2, 10, 12)]
    assert shards == corpus.shards(5)
    assert shards[1].uris == tuple(corpus.uris()[5:10])
    assert [(s.start, s.stop) for s in corpus.shards(5, start=7)] == [(7, 12)]
    assert corpus.shards(5, start=12) == []
    numpy_ints = corpus.shards(np.int64(5), np.int64(2))
    assert numpy_ints == corpus.shards(5, start=2)
    assert all(type(s.start) is int and type(s.stop) is int for s in numpy_ints)
    assert len({hash(shard) for shard in shards}) == 3


def test_shard_reads_concatenate_to_the_full_read(store, samples):
    corpus = open_corpus(store.url("images"))
    full = corpus.read(RGB)
    parts = [shard.read(RGB) for shard in corpus.shards(4)]
    np.testing.assert_array_equal(np.concatenate([p.ids for p in parts]), full.ids)
    np.testing.assert_array_equal(np.concatenate([p.pixels for p in parts]), full.pixels)
    assert_same_data(corpus.read(RGB, 4, 8), parts[1])
    np.testing.assert_array_equal(corpus.read(RGB, 4, 8).pixels, full.pixels[4:8])


@pytest.mark.parametrize(
    ("size", "start"), [(0, 0), (-1, 0), (2.5, 0), (True, 0), (3, -1), (3, 13), (3, 1.0)]
)
def test_bad_shard_arguments_raise_config_error(sample_dir, size, start):
    with pytest.raises(ConfigError):
        open_corpus(sample_dir[0]).shards(size, start)


def test_read_range_is_checked(sample_dir):
    with pytest.raises(ConfigError, match="it has 12 images"):
        open_corpus(sample_dir[0]).read(GREY, 5, 20)


def test_shard_repr_hides_storage_options_and_uris():
    shard = Shard(0, 0, 2, "images", "s3://b/x", {"secret": "hunter2"}, ("s3://b/x/a.png",) * 2)
    assert "hunter2" not in repr(shard) and "a.png" not in repr(shard)
    assert len(shard) == 2


# --- IDX ----------------------------------------------------------------------------------


@requires_fashion
@pytest.mark.parametrize(("path", "count"), [(FASHION_TRAIN, 60000), (FASHION_TEST, 10000)])
def test_fashion_mnist_idx(path, count):
    corpus = open_corpus(str(path))
    assert isinstance(corpus, IdxCorpus)
    assert len(corpus) == count
    assert corpus.native_spec() == ImageSpec(28, 28, 1)
    assert corpus.uris()[7] == f"{path}#7"
    with gzip.open(path) as stream:
        expected = np.frombuffer(stream.read(), np.uint8, offset=16).reshape(count, 28, 28, 1)
    full = corpus.read(GREY)
    assert full.errors == []
    np.testing.assert_array_equal(full.pixels, expected)
    parts = [shard.read(GREY) for shard in corpus.shards(7000)]
    np.testing.assert_array_equal(np.concatenate([p.pixels for p in parts]), full.pixels)
    np.testing.assert_array_equal(np.concatenate([p.ids for p in parts]), np.arange(count))


@requires_fashion
def test_second_idx_shard_read_hits_the_process_cache():
    clear_source_cache()
    corpus = open_corpus(str(FASHION_TRAIN))
    first, second = corpus.shards(1000)[:2]
    first.read(GREY)
    source = SOURCES._entries[("idx", str(FASHION_TRAIN), "{}")]
    decoded = source._array
    assert decoded is not None
    second.read(RGB)
    assert SOURCES.misses == 1
    assert SOURCES.hits == 2
    assert source._array is decoded


def test_uncompressed_idx(store):
    """Read by byte ranges from a local file, decoded whole from a remote one."""
    images = np.random.default_rng(0).integers(0, 256, (50, 9, 7), dtype=np.uint8)
    corpus = open_corpus(store.write("small-images.idx3-ubyte", idx_bytes(images)))
    assert corpus.kind == "idx" and corpus.native_spec() == ImageSpec(9, 7, 1)
    data = corpus.read(ImageSpec(9, 7, 1), 10, 20)
    np.testing.assert_array_equal(data.pixels[..., 0], images[10:20])


def _mapped_files() -> set[str]:
    with open("/proc/self/maps") as maps:
        return {line.split(maxsplit=5)[5].strip() for line in maps if len(line.split(maxsplit=5)) == 6}


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("name", ["q.npy", "q-idx3-ubyte"])
def test_local_arrays_are_not_memory_mapped(tmp_path, name):
    """A query job reads a large local file block by block: memory-mapped, every page a worker
    had read stayed in its resident memory until the end of the job (RSS grew with the file)."""
    images = np.random.default_rng(1).integers(0, 256, (64, 28, 28), dtype=np.uint8)
    path = tmp_path / name
    np.save(path, images) if name.endswith(".npy") else write_idx(path, images)
    clear_source_cache()
    corpus = open_corpus(str(path))
    parts = [shard.read(GREY).pixels[..., 0] for shard in corpus.shards(10)]
    np.testing.assert_array_equal(np.concatenate(parts), images)
    assert str(path) not in _mapped_files()


def test_row_ranges_merge_consecutive_rows_and_finish_short_reads(tmp_path, monkeypatch):
    """Rows asked out of a local file are read as runs of consecutive rows, and a ``pread``
    returning less than asked (Linux caps one call at 2 GiB) is continued, not taken as EOF."""
    array = np.random.default_rng(2).integers(0, 256, (40, 5, 6), dtype=np.uint8)
    np.save(tmp_path / "a.npy", array)
    source = open_source("npy", str(tmp_path / "a.npy"), {})
    reads = []
    real = os.preadv

    def small_preadv(fd, buffers, offset):
        reads.append(offset)
        return real(fd, [buffers[0][:7]], offset)  # at most 7 bytes per call

    monkeypatch.setattr(os, "preadv", small_preadv)
    rows = np.array([2, 3, 4, 9, 30, 31])
    np.testing.assert_array_equal(source.get(rows), array[rows])
    assert consecutive_runs(rows) == [(2, 5), (9, 10), (30, 32)]
    assert len(reads) == sum(-(-n * 30 // 7) for n in (3, 1, 2))
    np.testing.assert_array_equal(source.get(slice(5, 25)), array[5:25])
    assert source.get(np.array([], dtype=np.int64)).shape == (0, 5, 6)


def test_npy_cut_after_opening_fails_on_read_naming_the_file(store):
    url = store.write("a.npy", npy_bytes(np.zeros((20, 8, 8), np.uint8)))
    clear_source_cache()
    corpus = open_corpus(url)
    corpus.read(ImageSpec(8, 8, 1), 0, 10)  # opens the file, as a worker's first shard does
    store.write("a.npy", store.read("a.npy")[:-100])
    corpus.read(ImageSpec(8, 8, 1), 0, 10)  # the rows still there read fine
    with pytest.raises(CorpusError, match=r"a\.npy is truncated: a read of whole rows returned 540 of 640 bytes"):
        corpus.read(ImageSpec(8, 8, 1), 10, 20)


@requires_fashion
def test_idx_labels_file_as_corpus_suggests_labels_option():
    with pytest.raises(CorpusError) as info:
        open_corpus(str(FASHION_TRAIN_LABELS))
    message = str(info.value)
    assert str(FASHION_TRAIN_LABELS) in message
    assert "0x00000801" in message and "0x00000803" in message and "--labels" in message


def test_idx_of_another_dtype_is_rejected(store):
    url = store.write("float-images-idx3-ubyte", idx_bytes(np.zeros((2, 3, 3), np.uint8), magic=0x00000D03))
    with pytest.raises(CorpusError, match=r"float-images-idx3-ubyte.*0x00000d03.*0x00000803"):
        open_corpus(url)


def test_truncated_idx_fails_on_read_naming_the_file(store):
    url = store.write("cut-idx3-ubyte.gz", gzip.compress(idx_bytes(np.ones((10, 4, 4), np.uint8))[:-20]))
    corpus = open_corpus(url)
    with pytest.raises(CorpusError, match=r"cut-idx3-ubyte\.gz is truncated"):
        corpus.read(ImageSpec(4, 4, 1))


# --- npy ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("array", "native"),
    [
        (np.random.default_rng(0).integers(0, 256, (30, 28, 28), dtype=np.uint8), (28, 28, 1)),
        (np.random.default_rng(1).random((30, 20, 24, 3)), (20, 24, 3)),
        (np.random.default_rng(2).random((30, 32, 32, 1), dtype=np.float32), (32, 32, 1)),
        (np.random.default_rng(3).integers(0, 256, (30, 8, 8, 4), dtype=np.uint8), (8, 8, 3)),
    ],
    ids=["grey-uint8", "rgb-float64", "grey-float32-c1", "rgba-uint8"],
)
def test_npy_corpus(store, array, native):
    url = store.write("images.npy", npy_bytes(array))
    corpus = open_corpus(url)
    assert isinstance(corpus, NpyCorpus)
    assert len(corpus) == 30 and corpus.native_spec() == ImageSpec(*native)
    assert corpus.uris()[3] == f"{url}#3"
    spec = corpus.native_spec()
    full = corpus.read(spec)
    for row in (0, 17, 29):
        np.testing.assert_array_equal(full.pixels[row], convert(array[row], spec))
    parts = [shard.read(spec) for shard in corpus.shards(8)]
    np.testing.assert_array_equal(np.concatenate([p.pixels for p in parts]), full.pixels)


def test_npy_in_c_or_fortran_order(store):
    """C order is read by byte ranges; a Fortran-ordered array is loaded whole."""
    array = np.random.default_rng(4).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    for name, stored in (("a.npy", array), ("f.npy", np.asfortranarray(array))):
        corpus = open_corpus(store.write(name, npy_bytes(stored)))
        assert corpus.uris()[0].startswith(f"{store.root}/")
        np.testing.assert_array_equal(corpus.read(GREY, 5, 12).pixels[..., 0], array[5:12])


@pytest.mark.parametrize(
    ("array", "found"),
    [
        (np.zeros((5, 28), np.uint8), r"shape \(5, 28\)"),
        (np.zeros((5, 28, 28, 2), np.uint8), r"shape \(5, 28, 28, 2\)"),
        (np.zeros((2, 3, 3), np.complex64), "dtype complex64"),
        (np.array([[[None]]], dtype=object), "dtype object"),
        (np.zeros((0, 28, 28), np.uint8), r"shape \(0, 28, 28\) holds no pixels"),
    ],
)
def test_npy_of_bad_shape_or_dtype_names_the_file(store, array, found):
    url = store.write("bad.npy", npy_bytes(array, allow_pickle=True))
    with pytest.raises(CorpusError, match=found) as info:
        open_corpus(url)
    assert url in str(info.value)
    assert "expected" in str(info.value) or "no pixels" in str(info.value)


def test_file_that_is_not_npy_names_the_file(store):
    url = store.write("fake.npy", b"definitely not numpy")
    with pytest.raises(CorpusError, match=r"fake\.npy is not a valid \.npy file"):
        open_corpus(url)


# --- Zarr ---------------------------------------------------------------------------------


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_zarr_array_corpus(store, zarr_format):
    images = np.random.default_rng(5).integers(0, 256, (25, 28, 28, 3), dtype=np.uint8)
    url = store.url("images.zarr")
    array = zarr.create_array(store=url, shape=images.shape, dtype="uint8",
                              chunks=(4, 28, 28, 3), zarr_format=zarr_format)
    array[:] = images
    corpus = open_corpus(url)
    assert isinstance(corpus, ZarrCorpus)
    assert len(corpus) == 25 and corpus.native_spec() == ImageSpec(28, 28, 3)
    spec = ImageSpec(28, 28, 3)
    parts = [shard.read(spec) for shard in corpus.shards(6, start=2)]
    np.testing.assert_array_equal(np.concatenate([p.pixels for p in parts]), images[2:])
    assert parts[0].uris[0] == f"{url}#2"


def test_zarr_uint16_array(store):
    images = np.arange(6 * 28 * 28, dtype=np.uint16).reshape(6, 28, 28)
    array = zarr.create_array(store=store.url("z"), shape=images.shape, dtype="uint16",
                              chunks=(2, 28, 28))
    array[:] = images
    corpus = open_corpus(store.url("z"))
    assert corpus.kind == "zarr"
    expected = ((images.astype(np.uint32) + 128) // 257).astype(np.uint8)
    np.testing.assert_array_equal(corpus.read(GREY).pixels[..., 0], expected)


def test_zarr_group_asks_for_an_array(store):
    group = zarr.create_group(store=store.url("g.zarr"))
    group.create_array("images", shape=(2, 4, 4), dtype="uint8")
    with pytest.raises(CorpusError, match=r"g\.zarr is a Zarr group.*g\.zarr/<array name>"):
        open_corpus(store.url("g.zarr"))
    assert len(open_corpus(store.url("g.zarr/images"))) == 2


def test_zarr_of_bad_shape_names_the_file(store):
    zarr.create_array(store=store.url("flat.zarr"), shape=(10, 5), dtype="float32")
    with pytest.raises(CorpusError, match=r"flat\.zarr: array of shape \(10, 5\)"):
        open_corpus(store.url("flat.zarr"))


# --- uri lists ----------------------------------------------------------------------------


@pytest.fixture
def mixed_sources(store, samples):
    """A folder of images and an npy, IDX and Zarr array next to where the lists go (``lists/``)."""
    array = np.random.default_rng(6).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    store.write("arr.npy", npy_bytes(array))
    store.write("arr-idx3-ubyte", idx_bytes(array[::-1]))
    zarr.create_array(store=store.url("arr.zarr"), data=array + 1)
    return samples, array


def _expected_list_rows(store, samples, array):
    """(uri as written relative to lists/, absolute uri, expected 28x28x1 pixels or None)."""
    by_name = {s.relpath: s for s in samples}
    url = store.url
    return [
        ("../images/a_grey.png", url("images/a_grey.png"), by_name["a_grey.png"].grey),
        ("../arr.npy#4", url("arr.npy#4"), array[4]),
        ("../missing.png", url("missing.png"), None),
        (url("images/c/rgba.png"), url("images/c/rgba.png"), by_name["c/rgba.png"].grey),
        ("../arr-idx3-ubyte#0", url("arr-idx3-ubyte#0"), array[9]),
        ("../arr.zarr#9", url("arr.zarr#9"), array[9] + 1),
        ("../arr.npy#10", url("arr.npy#10"), None),
        ("../images/f/bw.tif", url("images/f/bw.tif"), 255),
        ("../arr.npy#4", url("arr.npy#4"), array[4]),
    ]


def _check_list_corpus(corpus, rows):
    assert isinstance(corpus, UriListCorpus) and corpus.kind == "urilist"
    assert corpus.uris() == [absolute for _, absolute, _ in rows]
    data = corpus.read(GREY)
    good = [i for i, (_, _, expected) in enumerate(rows) if expected is not None]
    assert data.ids.tolist() == good
    for pixels, i in zip(data.pixels, good, strict=True):
        np.testing.assert_array_equal(pixels[..., 0], np.broadcast_to(rows[i][2], (28, 28)))
    assert data.errors == [
        ReadError(2, rows[2][1], "file not found"),
        ReadError(6, rows[6][1], "row 10 out of range (the array has 10 rows)"),
    ]
    split = [shard.read(GREY) for shard in corpus.shards(4)]
    np.testing.assert_array_equal(np.concatenate([p.pixels for p in split]), data.pixels)


def test_txt_list_with_comments_relative_uris_and_row_refs(store, mixed_sources):
    rows = _expected_list_rows(store, *mixed_sources)
    lines = ["# queries", ""] + [f"  {written}  " for written, _, _ in rows[:4]] + [""]
    lines += [written for written, _, _ in rows[4:]]
    _check_list_corpus(open_corpus(store.write("lists/q.txt", "\n".join(lines) + "\n")), rows)
    assert open_corpus(store.write("lists/q.lst", "\n".join(lines))).uris() == [r[1] for r in rows]


def test_csv_list_uses_the_uri_column(store, mixed_sources):
    rows = _expected_list_rows(store, *mixed_sources)
    stream = io.StringIO()
    writer = csv.writer(stream)
    writer.writerow(["label", " URI "])
    writer.writerows([[i, written] for i, (written, _, _) in enumerate(rows)])
    _check_list_corpus(open_corpus(store.write("lists/q.csv", stream.getvalue())), rows)


def test_csv_list_without_uri_column_uses_the_first(store, mixed_sources):
    rows = _expected_list_rows(store, *mixed_sources)
    text = "path,label\n" + "".join(f"{written},1\n" for written, _, _ in rows)
    _check_list_corpus(open_corpus(store.write("lists/q.csv", text)), rows)


def test_parquet_list(store, mixed_sources):
    rows = _expected_list_rows(store, *mixed_sources)
    table = pa.table({"id": list(range(len(rows))), "uri": [w for w, _, _ in rows]})
    _check_list_corpus(open_corpus(store.write("lists/q.parquet", parquet_bytes(table))), rows)


def test_empty_uri_cells_keep_row_numbers_as_ids(store, samples):
    table = pa.table({"uri": [store.url("images/a_grey.png"), None, store.url("images/b_rgb.png")]})
    data = open_corpus(store.write("q.parquet", parquet_bytes(table))).read(GREY)
    assert data.ids.tolist() == [0, 2]
    assert data.errors == [ReadError(1, "", "empty uri")]


def test_results_uris_can_be_fed_back_as_queries(store):
    array = np.random.default_rng(7).random((12, 28, 28))
    corpus = open_corpus(store.write("corpus.npy", npy_bytes(array)))
    picked = [corpus.uris()[i] for i in (11, 3, 3, 0)]
    queries = open_corpus(store.write("results.txt", "\n".join(picked)))
    full = corpus.read(GREY)
    np.testing.assert_array_equal(queries.read(GREY).pixels, full.pixels[[11, 3, 3, 0]])


def test_unreadable_list_entries_are_read_errors(store, samples):
    store.write("cut-idx3-ubyte", idx_bytes(np.ones((10, 4, 4), np.uint8))[:100])
    entries = ["nowhere.npy#1", store.url("images/a_grey.png"), "cut-idx3-ubyte#2",
               "nosuchprotocol://x/y.png", "images.zarr#0"]
    data = open_corpus(store.write("q.txt", "\n".join(entries))).read(GREY)
    assert data.ids.tolist() == [1]
    reasons = [error.reason for error in data.errors]
    assert [error.image_id for error in data.errors] == [0, 2, 3, 4]
    assert reasons[0].startswith("cannot read array (.npy file not found")
    assert reasons[1].startswith("cannot read array (") and "is truncated" in reasons[1]
    assert reasons[2].startswith("cannot open uri (")
    assert reasons[3].startswith("cannot read array (cannot open Zarr array")


def test_file_names_with_glob_characters_are_read_literally(store):
    store.write("odd/a[1].png", png_bytes(np.full((28, 28), 1, np.uint8)))
    store.write("odd/a1.png", png_bytes(np.full((28, 28), 2, np.uint8)))
    store.write("odd/b*.png", png_bytes(np.full((28, 28), 3, np.uint8)))
    store.write("q.txt", "odd/a[1].png\nodd/b*.png\n")
    assert open_corpus(store.url("odd")).read(GREY).pixels[:, 0, 0, 0].tolist() == [2, 1, 3]  # a1 < a[1]
    assert open_corpus(store.url("q.txt")).read(GREY).pixels[:, 0, 0, 0].tolist() == [1, 3]


def test_list_resolves_relative_uris_on_its_filesystem(store, samples):
    store.write("img/a.png", store.read("images/a_grey.png"))
    corpus = open_corpus(store.write("lists/q.txt", b"../img/a.png\n../img/b.png\n"))
    assert corpus.uris() == [store.url("img/a.png"), store.url("img/b.png")]
    data = corpus.read(GREY)
    assert (data.pixels == 100).all()
    assert data.errors == [ReadError(1, store.url("img/b.png"), "file not found")]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.txt", b"# only a comment\n\n", r"empty\.txt lists no uris"),
        ("empty.csv", b"", r"empty\.csv lists no uris"),
        ("header-only.csv", b"uri\n", r"header-only\.csv lists no uris"),
        ("latin1.txt", "caf\xe9.png".encode("latin-1"), r"latin1\.txt is not a UTF-8"),
        ("fake.parquet", b"not parquet", r"fake\.parquet is not a Parquet file"),
    ],
)
def test_bad_uri_lists_name_the_file(store, name, content, message):
    url = store.write(name, content)
    with pytest.raises(CorpusError, match=message):
        open_corpus(url)


def test_parquet_without_uri_column_says_how_to_fix(store):
    url = store.write("q.parquet", parquet_bytes(pa.table({"path": ["a.png"], "label": [1]})))
    with pytest.raises(CorpusError, match=r"q\.parquet has no 'uri' column \(columns: path, "
                                          r"label\); store the image URLs"):
        open_corpus(url)


def test_missing_list_file(store):
    with pytest.raises(CorpusError, match=r"uri list not found: .*nope\.csv"):
        open_corpus(store.url("nope.csv"))


# --- pickling and fresh processes ---------------------------------------------------------


def _corpora(tmp_path: Path, root: Path) -> list:
    np.save(tmp_path / "a.npy", np.random.default_rng(8).random((9, 30, 30, 3)))
    (tmp_path / "q.txt").write_text(f"{root / 'c/rgba.png'}\n{tmp_path / 'a.npy'}#2\n")
    corpora = [open_corpus(root), open_corpus(tmp_path / "a.npy"), open_corpus(tmp_path / "q.txt")]
    if FASHION_TEST.exists():
        corpora.append(open_corpus(str(FASHION_TEST)))
    return corpora


def test_corpus_and_shards_survive_pickling(tmp_path, sample_dir):
    for corpus in _corpora(tmp_path, sample_dir[0]):
        clone = pickle.loads(pickle.dumps(corpus))
        assert type(clone) is type(corpus) and clone.uris() == corpus.uris()
        shard = corpus.shards(5)[-1]
        assert pickle.loads(pickle.dumps(shard)) == shard
        assert_same_data(clone.read(RGB, 0, 2), corpus.read(RGB, 0, 2))


def test_shard_read_in_a_spawned_process_gives_identical_pixels(tmp_path, sample_dir):
    shards = [corpus.shards(5)[-1] for corpus in _corpora(tmp_path, sample_dir[0])]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        remote = list(pool.map(Shard.read, shards, [RGB] * len(shards)))
    for shard, data in zip(shards, remote, strict=True):
        assert len(data.ids) == len(shard)
        assert_same_data(data, shard.read(RGB))


# --- S3 (moto) ----------------------------------------------------------------------------


def test_s3_folder_npy_idx_and_list(tmp_path, sample_dir):
    root, samples = sample_dir
    array = np.random.default_rng(9).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "a.npy", array)
    write_idx(tmp_path / "raw", array)
    with moto_s3() as options:
        fs = fsspec.filesystem("s3", **options)
        fs.mkdir("bucket")
        fs.put(str(root), "bucket/images", recursive=True)
        fs.pipe("bucket/broken/x.png", b"not a png")
        fs.put(str(tmp_path / "a.npy"), "bucket/arrays/a.npy")
        fs.pipe("bucket/arrays/a-idx3-ubyte.gz", gzip.compress((tmp_path / "raw").read_bytes()))
        fs.pipe("bucket/lists/q.txt", b"../images/a_grey.png\n../arrays/a.npy#3\n../nope.png\n")

        corpus = open_corpus("s3://bucket/images", options)
        assert corpus.uris() == [f"s3://bucket/images/{s.relpath}" for s in samples]
        assert_same_data_pixels(corpus.read(RGB), open_corpus(root).read(RGB))
        assert open_corpus("s3://bucket/broken/*.png", options).read(GREY).errors == [
            ReadError(0, "s3://bucket/broken/x.png", "cannot identify image file")
        ]
        for url in ("s3://bucket/arrays/a.npy", "s3://bucket/arrays/a-idx3-ubyte.gz"):
            shard = open_corpus(url, options).shards(8)[1]
            np.testing.assert_array_equal(shard.read(GREY).pixels[..., 0], array[8:16])
        listed = open_corpus("s3://bucket/lists/q.txt", options).read(GREY)
        assert listed.uris == ["s3://bucket/images/a_grey.png", "s3://bucket/arrays/a.npy#3"]
        np.testing.assert_array_equal(listed.pixels[1, ..., 0], array[3])
        assert listed.errors == [ReadError(2, "s3://bucket/nope.png", "file not found")]


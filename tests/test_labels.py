"""Label readers for evaluation (storage.labels)."""

from __future__ import annotations

import gzip

import fsspec
import numpy as np
import pytest
from corpus_helpers import (
    FASHION_TEST_LABELS,
    FASHION_TRAIN,
    FASHION_TRAIN_LABELS,
    memory_root,
    requires_fashion,
    write_idx,
)

from storage.corpus import open_corpus
from storage.errors import CorpusError
from storage.labels import read_labels


@requires_fashion
@pytest.mark.parametrize(
    ("path", "count", "first"),
    [
        (FASHION_TRAIN_LABELS, 60000, [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]),
        (FASHION_TEST_LABELS, 10000, [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]),
    ],
)
def test_fashion_mnist_idx1_labels(path, count, first):
    labels = read_labels(str(path))
    assert labels.dtype == np.int64 and labels.shape == (count,)
    assert labels[:10].tolist() == first
    assert np.bincount(labels).tolist() == [count // 10] * 10


@requires_fashion
def test_idx_labels_are_checked_against_the_corpus():
    uris = open_corpus(str(FASHION_TRAIN)).uris()
    assert len(read_labels(str(FASHION_TRAIN_LABELS), uris=uris)) == 60000
    with pytest.raises(CorpusError, match="holds 10000 labels but the corpus has 60000 images"):
        read_labels(str(FASHION_TEST_LABELS), uris=uris)


@requires_fashion
def test_images_file_as_labels_is_rejected_with_a_hint():
    with pytest.raises(CorpusError, match=r"found magic number 0x00000803.*pass it as the corpus"):
        read_labels(str(FASHION_TRAIN))


def test_uncompressed_and_remote_idx1(tmp_path):
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    write_idx(tmp_path / "small.idx1-ubyte", labels)
    np.testing.assert_array_equal(read_labels(str(tmp_path / "small.idx1-ubyte")), labels)
    with memory_root() as url:
        data = gzip.compress((tmp_path / "small.idx1-ubyte").read_bytes())
        fsspec.filesystem("memory").pipe(f"{url}/small-labels-idx1-ubyte.gz", data)
        np.testing.assert_array_equal(read_labels(f"{url}/small-labels-idx1-ubyte.gz"), labels)


def test_npy_labels(tmp_path):
    np.save(tmp_path / "labels.npy", np.array([2, 7, 1], dtype=np.int16))
    labels = read_labels(str(tmp_path / "labels.npy"), uris=["a", "b", "c"])
    assert labels.dtype == np.int64 and labels.tolist() == [2, 7, 1]


@pytest.mark.parametrize(
    ("array", "found"),
    [
        (np.zeros((3, 2), np.int64), r"shape \(3, 2\) and dtype int64"),
        (np.zeros(3, np.float32), r"shape \(3,\) and dtype float32"),
    ],
)
def test_npy_labels_of_bad_shape_or_dtype(tmp_path, array, found):
    np.save(tmp_path / "labels.npy", array)
    with pytest.raises(CorpusError, match=found + ".*expected a 1-D integer array"):
        read_labels(str(tmp_path / "labels.npy"))


def test_csv_labels_are_aligned_by_uri(tmp_path):
    (tmp_path / "img").mkdir()
    uris = [str(tmp_path / "img" / name) for name in ("a.png", "b.png", "c.png")]
    (tmp_path / "labels.csv").write_text(
        "label,uri\n5,img/c.png\n3,img/a.png\n\n4," + uris[1] + "\n"
    )
    labels = read_labels(str(tmp_path / "labels.csv"), uris=uris)
    assert labels.tolist() == [3, 4, 5]


def test_csv_labels_for_array_rows(tmp_path):
    (tmp_path / "labels.csv").write_text("uri,label\nx.npy#1,8\nx.npy#0,6\n")
    uris = [f"{tmp_path}/x.npy#0", f"{tmp_path}/x.npy#1"]
    assert read_labels(str(tmp_path / "labels.csv"), uris=uris).tolist() == [6, 8]


@pytest.mark.parametrize(
    ("content", "uris", "message"),
    [
        ("uri,label\na.png,1\n", None, "pass the corpus uris"),
        ("uri,label\na.png,1\n", ["A", "B"], r"no label for 2 of the 2 images, e\.g\. A"),
        ("path,label\na.png,1\n", ["a"], r"header row naming the columns 'uri' and 'label'"),
        ("", ["a"], "found: an empty file"),
        ("uri,label\na.png,cat\n", ["a"], r"data row 1: label 'cat' is not an integer"),
        ("uri,label\na.png,1\na.png,2\n", ["a"], "two different labels"),
        ("uri,label\n,1\n", ["a"], "data row 1: empty uri"),
    ],
)
def test_bad_csv_labels_name_the_file(tmp_path, content, uris, message):
    (tmp_path / "labels.csv").write_text(content)
    with pytest.raises(CorpusError, match=message) as info:
        read_labels(str(tmp_path / "labels.csv"), uris=uris)
    assert str(tmp_path / "labels.csv") in str(info.value)


@pytest.mark.parametrize("name", ["labels.txt", "labels.json", "labels"])
def test_unknown_label_format(tmp_path, name):
    (tmp_path / name).write_text("1\n2\n")
    with pytest.raises(CorpusError, match="expected an IDX1 labels file"):
        read_labels(str(tmp_path / name))


def test_missing_labels_file(tmp_path):
    with pytest.raises(CorpusError, match=r"not found: .*nope-labels-idx1-ubyte\.gz"):
        read_labels(str(tmp_path / "nope-labels-idx1-ubyte.gz"))

"""Label readers for evaluation: one integer label per image of a corpus, in id order.

Accepted label files:

* an IDX1 labels file (``*-idx1-ubyte``, ``*.idx1``, optionally ``.gz``; magic number
  0x00000801, uint8 labels), as distributed with MNIST and Fashion-MNIST;
* a ``.npy`` file holding a 1-D integer array;
* a ``.csv`` file with a header naming the columns ``uri`` and ``label``. Its rows may come
  in any order: they are matched to the corpus by uri, so the corpus uris must be given.
  Relative uris are resolved against the CSV file's folder, as in uri lists.

IDX1 and npy labels are aligned with the corpus by position.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from fsspec.spec import AbstractFileSystem

from storage.corpus.formats import IDX_NAME_PATTERN, check_size, read_csv_rows, read_idx_file, read_npy_header, read_text, reading
from storage.errors import CorpusError
from storage.fs import display_url, resolve_url, url_to_fs

__all__ = ["read_labels"]

IDX_LABELS_MAGIC = 0x00000801


def read_labels(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    uris: Sequence[str] | None = None,
) -> np.ndarray:
    """Read the label of every image of a corpus.

    Parameters
    ----------
    url : str
        Local path or fsspec URL of an IDX1, ``.npy`` or ``.csv`` labels file.
    storage_options : dict, optional
        fsspec options.
    uris : sequence of str, optional
        The corpus uris in id order (``corpus.uris()``). Required for CSV files; for the
        other formats, used to check that there is one label per image.

    Returns
    -------
    numpy.ndarray
        ``int64 [n]``, the label of image ``i`` at index ``i``.

    Raises
    ------
    CorpusError
        Unknown format, bad header, wrong shape or dtype, a corpus uri without a label, or
        a label count that differs from the number of images.
    """
    fs, path = url_to_fs(str(url), storage_options)
    shown = display_url(fs, path)
    name = posixpath.basename(path).lower()
    if name.endswith(".csv"):
        if uris is None:
            raise CorpusError(
                f"{shown} maps uris to labels: pass the corpus uris (corpus.uris()) to align "
                "the labels with the images"
            )
        return _csv_labels(fs, path, shown, uris)
    if IDX_NAME_PATTERN.search(name):
        labels = read_idx_file(
            shown, storage_options, IDX_LABELS_MAGIC, "uint8 labels [n]",
            "If this is an images file (idx3), pass it as the corpus, not as labels.",
        ).astype(np.int64)
    elif name.endswith(".npy"):
        labels = _npy_labels(fs, path, shown)
    else:
        raise CorpusError(
            f"cannot read labels from {shown}; expected an IDX1 labels file "
            "(*-idx1-ubyte[.gz]), a .npy file holding a 1-D integer array, or a .csv file "
            "with the columns uri,label"
        )
    if uris is not None and len(uris) != len(labels):
        raise CorpusError(
            f"{shown} holds {len(labels)} labels but the corpus has {len(uris)} images; "
            "pass the labels file that goes with this corpus"
        )
    return labels


def _npy_labels(fs: AbstractFileSystem, path: str, shown: str) -> np.ndarray:
    # The header is checked before any data is read: nothing is unpickled, and a header
    # announcing more labels than the file holds fails here instead of allocating them.
    with reading(shown, "labels file"), fs.open(path, "rb") as stream:
        shape, _, dtype, offset = read_npy_header(stream, shown)
        if len(shape) != 1 or dtype.kind not in "iu":
            raise CorpusError(
                f"{shown}: labels of shape {shape} and dtype {dtype}; expected a "
                "1-D integer array with one label per image"
            )
        check_size(fs, path, shown, offset, shape, dtype.itemsize)
        data = stream.read(shape[0] * dtype.itemsize)
    if len(data) < shape[0] * dtype.itemsize:
        raise CorpusError(f"{shown} is truncated: {len(data)} bytes of labels, {shape[0] * dtype.itemsize} expected")
    return np.frombuffer(data, dtype=dtype, count=shape[0]).astype(np.int64)


def _csv_labels(
    fs: AbstractFileSystem, path: str, shown: str, uris: Sequence[str]
) -> np.ndarray:
    with reading(shown, "labels file"):
        text = read_text(fs, path, shown)
    rows = read_csv_rows(text, shown)
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    if "uri" not in header or "label" not in header:
        raise CorpusError(
            f"{shown} needs a header row naming the columns 'uri' and 'label' "
            f"(found: {', '.join(header) or 'an empty file'})"
        )
    by_uri = _labels_by_uri(rows, header.index("uri"), header.index("label"), shown,
                            display_url(fs, posixpath.dirname(path)))
    missing = [uri for uri in uris if uri not in by_uri]
    if missing:
        raise CorpusError(
            f"{shown} has no label for {len(missing)} of the {len(uris)} images, e.g. "
            f"{missing[0]}; add a row 'uri,label' for every image of the corpus"
        )
    return np.array([by_uri[uri] for uri in uris], dtype=np.int64)


def _labels_by_uri(
    rows: list[list[str]], uri_column: int, label_column: int, shown: str, base: str
) -> dict[str, int]:
    by_uri: dict[str, int] = {}
    for number, row in enumerate(rows[1:], start=1):
        cells = [row[i].strip() if i < len(row) else "" for i in (uri_column, label_column)]
        if not cells[0]:
            raise CorpusError(f"{shown}, data row {number}: empty uri")
        try:
            label = int(cells[1])
        except ValueError:
            raise CorpusError(
                f"{shown}, data row {number}: label {cells[1]!r} is not an integer"
            ) from None
        uri = resolve_url(cells[0], base)
        if by_uri.setdefault(uri, label) != label:
            raise CorpusError(
                f"{shown}: {uri} has two different labels ({by_uri[uri]} and {label})"
            )
    return by_uri

"""Uri lists: the uris listed in a ``.txt``, ``.lst``, ``.csv`` or ``.parquet`` file."""

from __future__ import annotations

import logging
import posixpath

from fsspec.spec import AbstractFileSystem

from storage.corpus.formats import DAMAGED, brief, read_csv_rows, read_text, reading
from storage.errors import CorpusError
from storage.fs import display_url, resolve_url

__all__ = ["LIST_SUFFIXES", "read_uri_list"]

log = logging.getLogger(__package__)  # storage.corpus, as before the package split

LIST_SUFFIXES = (".txt", ".lst", ".csv", ".parquet")


def read_uri_list(fs: AbstractFileSystem, path: str, shown: str) -> list[str]:
    """The uris listed in a ``.txt``, ``.lst``, ``.csv`` or ``.parquet`` file, in list order.

    Parameters
    ----------
    fs : fsspec.AbstractFileSystem
        Filesystem of the list.
    path : str
        Path of the list on ``fs``.
    shown : str
        The list's URL as the user sees it, for error messages.

    Returns
    -------
    list of str
        A uri without a protocol is resolved on ``fs``, relative to the list's folder. Empty
        CSV and Parquet cells stay ``""``, so that ids keep the data row numbers.

    Raises
    ------
    CorpusError
        The list cannot be read, is malformed, or lists no uris.
    """
    with reading(shown, "uri list"):
        if path.lower().endswith(".parquet"):
            entries = _parquet_uris(fs, path, shown)
        else:
            text = read_text(fs, path, shown)
            entries = _csv_uris(text, shown) if path.lower().endswith(".csv") else _text_uris(text)
    if not entries:
        raise CorpusError(
            f"{shown} lists no uris; write one image URL (or <array url>#<row>) per "
            "line/row, with a 'uri' header for CSV and Parquet files"
        )
    base = display_url(fs, posixpath.dirname(path))
    return [resolve_url(entry, base) if entry else "" for entry in entries]


def _text_uris(text: str) -> list[str]:
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _csv_uris(text: str, shown: str) -> list[str]:
    rows = read_csv_rows(text, shown)
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    if "uri" in header:
        column = header.index("uri")
    else:
        column = 0
        log.info("%s has no 'uri' column; reading uris from its first column %r", shown, rows[0][0])
    return [row[column].strip() if column < len(row) else "" for row in rows[1:]]


def _parquet_uris(fs: AbstractFileSystem, path: str, shown: str) -> list[str]:
    # Imported here: pyarrow is heavy and only needed for this format.
    import pyarrow as pa
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as stream:
        try:
            parquet = pq.ParquetFile(stream)
        except pa.ArrowException as exc:
            raise CorpusError(f"{shown} is not a Parquet file ({brief(exc)}); {DAMAGED}") from None
        columns = parquet.schema_arrow.names
        if "uri" not in columns:
            raise CorpusError(
                f"{shown} has no 'uri' column (columns: {', '.join(columns) or 'none'}); "
                "store the image URLs in a string column named 'uri'"
            )
        values = parquet.read(columns=["uri"]).column("uri").to_pylist()
    return ["" if value is None else str(value).strip() for value in values]

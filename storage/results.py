"""Results files: Parquet (default), CSV or JSON Lines, written block by block.

One row per hit: ``query_id, query_uri, rank, image_id, image_uri, score, error``. A query that
could not be read has one row with its ``query_id``, ``query_uri`` and ``error`` (the other
columns null). The file appears at its URL only when complete: locally it is written to a
temporary sibling and renamed on :meth:`ResultsWriter.close`; on object stores the upload
completes on close.
"""

from __future__ import annotations

import json
import os
import uuid

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from storage.errors import ConfigError
from storage.fs import is_local, url_to_fs

__all__ = ["RESULTS_SCHEMA", "FORMATS", "ResultsWriter", "results_format"]

RESULTS_SCHEMA = pa.schema(
    [
        ("query_id", pa.int64()),
        ("query_uri", pa.string()),
        ("rank", pa.int32()),
        ("image_id", pa.int64()),
        ("image_uri", pa.string()),
        ("score", pa.float64()),
        ("error", pa.string()),
    ]
)
FORMATS = ("parquet", "csv", "jsonl")
_EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


def results_format(url: str, fmt: str | None) -> str:
    """The format asked for, else the one the file extension names, else Parquet."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    return _EXTENSIONS.get(os.path.splitext(url)[1].lower(), "parquet")


class ResultsWriter:
    """Append :data:`RESULTS_SCHEMA` tables to one results file; use as a context manager."""

    def __init__(self, url: str, fmt: str | None = None, storage_options=None) -> None:
        self.url = url
        self.format = results_format(url, fmt)
        self.rows = 0
        fs, path = url_to_fs(url, storage_options)
        parent = path.rsplit("/", 1)[0]
        if parent:
            fs.makedirs(parent, exist_ok=True)
        self._fs, self._final = fs, path
        self._path = f"{path}.tmp-{uuid.uuid4().hex}" if is_local(fs) else path
        self._file = fs.open(self._path, "wb")
        self._parquet = pq.ParquetWriter(self._file, RESULTS_SCHEMA, compression="zstd") if self.format == "parquet" else None
        self._csv_header = True

    def write(self, table: pa.Table) -> None:
        table = table.cast(RESULTS_SCHEMA)
        if self.format == "parquet":
            self._parquet.write_table(table)
        elif self.format == "csv":
            pacsv.write_csv(table, self._file, pacsv.WriteOptions(include_header=self._csv_header))
            self._csv_header = False
        else:
            lines = "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in table.to_pylist())
            self._file.write(lines.encode())
        self.rows += table.num_rows

    def close(self, commit: bool = True) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self.format == "csv" and self._csv_header and commit:  # nothing written: still a header
            pacsv.write_csv(RESULTS_SCHEMA.empty_table(), self._file)
        self._file.close()
        if self._path != self._final:
            if commit:
                os.replace(self._path, self._final)
            else:
                os.unlink(self._path)

    def __enter__(self) -> "ResultsWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(commit=exc_type is None)

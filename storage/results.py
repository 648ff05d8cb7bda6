"""Results: one file (Parquet, CSV or JSON Lines) or a partitioned Parquet dataset.

One row per hit: ``query_id, query_uri, rank, image_id, image_uri, score, error``. A query that
could not be read has one row with its ``query_id``, ``query_uri`` and ``error`` (the other
columns null).

A single file appears at its URL only when complete: locally it is written to a temporary
sibling and renamed on :meth:`ResultsWriter.close`; on object stores the upload completes on
close. A dataset (:class:`DatasetWriter`, for large query files) is a folder with one Parquet
part per block of queries, each written whole, a done-marker per part, and ``_SUCCESS.json``
last; a rerun of the same job resumes after the parts already written.
"""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from storage.atomic import read_json, temporary_sibling, write_bytes_atomic, write_json_atomic
from storage.errors import ConfigError
from storage.fs import is_local, join_url, url_to_fs
from storage.retry import retry_call

__all__ = ["RESULTS_SCHEMA", "FORMATS", "ResultsWriter", "DatasetWriter", "results_format", "open_results"]

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
FORMATS = ("parquet", "csv", "jsonl", "dataset")
_EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


def results_format(url: str, fmt: str | None) -> str:
    """The format asked for, else ``dataset`` for a URL ending in ``/``, else the one the file
    extension names, else Parquet."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    if url.endswith("/"):
        return "dataset"
    return _EXTENSIONS.get(os.path.splitext(url)[1].lower(), "parquet")


def open_results(url: str, fmt: str | None, job: dict, storage_options=None) -> "ResultsWriter | DatasetWriter":
    """The writer for ``url``: a :class:`DatasetWriter` for the ``dataset`` format (``job``
    identifies the query job, for resuming), else a :class:`ResultsWriter`."""
    if results_format(url, fmt) == "dataset":
        return DatasetWriter(url, job, storage_options)
    return ResultsWriter(url, fmt, storage_options)


class ResultsWriter:
    """Append :data:`RESULTS_SCHEMA` tables to one results file; use as a context manager."""

    def __init__(self, url: str, fmt: str | None = None, storage_options=None) -> None:
        self.url = url
        self.format = results_format(url, fmt)
        self.rows = 0
        self.done: dict[int, dict] = {}  # blocks written by an earlier run: a single file never resumes
        fs, path = url_to_fs(url, storage_options)
        parent = path.rsplit("/", 1)[0]
        if parent:
            fs.makedirs(parent, exist_ok=True)
        self._fs, self._final = fs, path
        self._path = temporary_sibling(path) if is_local(fs) else path
        self._file = retry_call(f"opening {url}", fs.open, self._path, "wb")
        self._parquet = pq.ParquetWriter(self._file, RESULTS_SCHEMA, compression="zstd") if self.format == "parquet" else None
        self._csv_header = True

    def write_block(self, start: int, stop: int, table: pa.Table, stats: dict) -> None:
        """Append the rows of query rows ``[start, stop)`` (blocks arrive in file order)."""
        self.write(table)

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


class DatasetWriter:
    """A folder of Parquet parts, one per block of query rows; reruns resume.

    ``<url>/_job.json`` records the job (index, version, queries, settings); a rerun with the
    same job skips the blocks whose ``_done/<start>.json`` marker exists, and one with a
    different job is refused rather than mixed in. Each part
    ``part-<start>-<stop>.parquet`` (12-digit zero-padded query rows) is written whole, then
    its marker (the block's counts); ``_SUCCESS.json`` is written when every block is done.
    Read the whole dataset with ``pyarrow.parquet.read_table(url)`` (or pandas, Dask, DuckDB...).
    """

    format = "dataset"

    def __init__(self, url: str, job: dict, storage_options=None) -> None:
        self.url, self.rows = url.rstrip("/"), 0
        self._options = storage_options
        self.done: dict[int, dict] = {}
        try:
            previous = read_json(join_url(self.url, "_job.json"), storage_options)
        except FileNotFoundError:
            previous = None
        if previous is None:
            fs, path = url_to_fs(self.url, storage_options)
            if retry_call(f"listing {self.url}", fs.exists, path) and retry_call(f"listing {self.url}", fs.ls, path):
                raise ConfigError(f"{self.url} exists and is not a patchhash results dataset; pass an empty or new --out")
            write_json_atomic(join_url(self.url, "_job.json"), job, storage_options)
            return
        if previous != job:
            changed = sorted(k for k in set(job) | set(previous) if job.get(k) != previous.get(k))
            raise ConfigError(
                f"{self.url} holds results of another query job ({', '.join(changed)} differ); "
                "pass another --out, or delete it to start again"
            )
        self.done = self._markers()

    def _markers(self) -> dict[int, dict]:
        fs, path = url_to_fs(join_url(self.url, "_done"), self._options)
        try:
            names = retry_call(f"listing {self.url}/_done", fs.ls, path, detail=False)
        except FileNotFoundError:
            return {}
        done = {}
        for name in names:
            base = name.rstrip("/").rsplit("/", 1)[-1]
            if base.endswith(".json") and base[:-5].isdigit():
                done[int(base[:-5])] = read_json(join_url(self.url, "_done", base), self._options)
        return done

    def write_block(self, start: int, stop: int, table: pa.Table, stats: dict) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table.cast(RESULTS_SCHEMA), sink, compression="zstd")
        write_bytes_atomic(join_url(self.url, f"part-{start:012d}-{stop:012d}.parquet"), sink.getvalue().to_pybytes(), self._options)
        marker = {**stats, "rows": table.num_rows, "stop": stop}
        write_json_atomic(join_url(self.url, "_done", f"{start:012d}.json"), marker, self._options)
        self.done[start] = marker
        self.rows += table.num_rows

    def close(self, commit: bool = True) -> None:
        if commit:
            summary = {"blocks": len(self.done), "rows": sum(m["rows"] for m in self.done.values())}
            write_json_atomic(join_url(self.url, "_SUCCESS.json"), summary, self._options)

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(commit=exc_type is None)

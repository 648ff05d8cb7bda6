"""Small Parquet tables (image table, errors table, results) on any fsspec URL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from storage.fs import url_to_fs
from storage.retry import retry_call

__all__ = ["write_parquet", "read_parquet"]


def write_parquet(url: str, columns: Mapping[str, Sequence], schema: pa.Schema, storage_options=None) -> None:
    """Write one Parquet file as a whole object (write-then-rename locally, one PUT on stores)."""
    from storage.atomic import write_bytes_atomic

    table = pa.table(dict(columns), schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    write_bytes_atomic(url, sink.getvalue().to_pybytes(), storage_options)


def read_parquet(url: str, storage_options=None, columns: Sequence[str] | None = None) -> pa.Table:
    """Read one (small) Parquet file whole.

    Read from bytes on the calling thread: ``pq.read_table`` on a Python file object with
    Arrow's thread pool intermittently aborted the process at exit ("terminate called
    without an active exception", apache/arrow#34314, #50482).
    """
    fs, path = url_to_fs(url, storage_options)
    data = retry_call(f"reading {url}", fs.cat_file, path)
    return pq.read_table(pa.BufferReader(data), columns=list(columns) if columns else None, use_threads=False)

"""Comparing indexes and results by content (not timestamps) across runs."""

from __future__ import annotations

import pyarrow.parquet as pq

from storage import join_url, url_to_fs
from storage.arrays import read_array_group, read_rows
from storage.manifest import MAP_LAYOUTS, read_manifest
from storage.tables import read_parquet


def index_snapshot(index_url: str, storage_options=None, version: int | None = None) -> dict:
    """Everything that defines a committed index version's content: codes, tables, bucket maps."""
    manifest = read_manifest(index_url, storage_options, version)
    codes = [read_rows(join_url(index_url, p.codes), p.start, p.stop, storage_options).tolist() for p in manifest.partitions]
    tables = {
        rel: read_parquet(join_url(index_url, rel), storage_options).to_pylist()
        for shard in manifest.shards for rel in (shard.images, shard.errors) if rel
    }
    buckets = {}
    for part in manifest.partitions:
        for kind in MAP_LAYOUTS:
            for path in part.map_paths(kind):
                arrays, _ = read_array_group(join_url(index_url, path), storage_options)
                buckets[(kind, path.rsplit("/", 1)[-1].split(".v")[0])] = {k: v.tolist() for k, v in arrays.items()}
    return {
        "codes": codes,
        "tables": tables,
        "buckets": buckets,
        "manifest": [manifest.n_images, [s.__dict__ for s in manifest.shards],
                     [(p.start, p.stop, p.codes, {k: m.stats for k, m in p.maps.items()}, len(p.deltas), p.tombstones)
                      for p in manifest.partitions]],
    }


def results_rows(url: str, storage_options=None) -> list[dict]:
    """The rows of a Parquet results file, in file order."""
    fs, path = url_to_fs(url, storage_options)
    with fs.open(path, "rb") as f:
        return pq.read_table(f).to_pylist()

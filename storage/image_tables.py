"""The tables of an index: which image each id is, where it came from, which ids are deleted.

* image tables (``images/*.parquet``): ``image_id``, ``uri``, ``source`` (the id of the
  corpus it was listed in, see :class:`~storage.manifest.SourceEntry`) and ``fingerprint``
  (what identified the file's content when it was encoded, see :mod:`storage.fingerprint`);
* errors tables (``errors/*.parquet``): the same for images that could not be read, with
  their ``reason``;
* tombstones (``tombstones/*.parquet``): the ids deleted from one partition since its base
  bucket maps were built, with whether each was readable;
* the excluded list (``excluded/*.parquet``): uris removed by ``patchhash delete``.

Format-1 tables have only ``image_id`` and ``uri`` (and ``reason``); they read with a null
``source`` and ``fingerprint``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage.layout import excluded_path, shard_table_path, tombstones_path
from storage.location import IndexLocation
from storage.manifest import ExcludedEntry, Manifest, PartitionEntry, ShardEntry, TombstoneEntry
from storage.tables import read_parquet, write_parquet
from storage.uri_cache import cached_uris, table_stamps, uri_cache_budget

__all__ = [
    "IMAGES_SCHEMA",
    "ERRORS_SCHEMA",
    "STATE_SCHEMA",
    "write_shard_tables",
    "read_shard_tables",
    "read_state",
    "read_tombstones",
    "write_tombstones",
    "read_excluded",
    "write_excluded",
    "ImageUris",
    "read_image_uris",
]

IMAGES_SCHEMA = pa.schema([("image_id", pa.int64()), ("uri", pa.string()), ("source", pa.int32()), ("fingerprint", pa.string())])
ERRORS_SCHEMA = pa.schema([("image_id", pa.int64()), ("uri", pa.string()), ("reason", pa.string()),
                           ("source", pa.int32()), ("fingerprint", pa.string())])
# One row per id of the tables read: readable rows have a null reason.
STATE_SCHEMA = pa.schema([("image_id", pa.int64()), ("uri", pa.string()), ("source", pa.int32()),
                          ("fingerprint", pa.string()), ("reason", pa.string())])
_TOMBSTONES_SCHEMA = pa.schema([("image_id", pa.int64()), ("readable", pa.bool_())])
_EXCLUDED_SCHEMA = pa.schema([("uri", pa.string())])


def write_shard_tables(index: "IndexLocation | str", start: int, stop: int, version: int, images: pa.Table,
                       errors: pa.Table) -> ShardEntry:
    """Write the image table (and the errors table, if it has rows) of ids ``[start, stop)``."""
    index = IndexLocation.of(index)
    images_rel = shard_table_path("images", start, stop, version)
    write_parquet(index.join(images_rel), images.select(IMAGES_SCHEMA.names).to_pydict(), IMAGES_SCHEMA, index.storage_options)
    errors_rel = None
    if errors.num_rows:
        errors_rel = shard_table_path("errors", start, stop, version)
        write_parquet(index.join(errors_rel), errors.select(ERRORS_SCHEMA.names).to_pydict(), ERRORS_SCHEMA, index.storage_options)
    return ShardEntry(start, stop, images_rel, errors_rel, images.num_rows, errors.num_rows)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns: format-1 tables lack ``source`` and ``fingerprint``."""
    columns = [table.column(name).cast(f.type) if name in table.column_names else pa.nulls(table.num_rows, f.type)
               for name, f in zip(schema.names, schema)]
    return pa.Table.from_arrays(columns, schema=schema)


def _read(index: IndexLocation, relative: str, columns: Sequence[str] | None = None) -> pa.Table:
    """The table at the manifest path ``relative``."""
    return read_parquet(index.resolve(relative), index.storage_options, columns)


def read_shard_tables(index: "IndexLocation | str", shards: Iterable[ShardEntry]) -> pa.Table:
    """Every row of the image and errors tables of ``shards``, as one table of ``STATE_SCHEMA``."""
    index = IndexLocation.of(index)
    parts = []
    for shard in shards:
        parts.append(_conform(_read(index, shard.images), STATE_SCHEMA))
        if shard.errors:
            parts.append(_conform(_read(index, shard.errors), STATE_SCHEMA))
    if not parts:
        return STATE_SCHEMA.empty_table()
    return pa.concat_tables(parts).sort_by("image_id")


def read_tombstones(index: "IndexLocation | str", partition: PartitionEntry) -> np.ndarray:
    """Sorted ids deleted from ``partition`` (empty without tombstones)."""
    if partition.tombstones is None:
        return np.empty(0, np.int64)
    return _read(IndexLocation.of(index), partition.tombstones.path, ["image_id"]).column("image_id").to_numpy()


def read_state(index_url: "IndexLocation | str", manifest: Manifest, storage_options=None) -> pa.Table:
    """The live rows of the index: every table row whose id is not tombstoned (``STATE_SCHEMA``)."""
    index = IndexLocation.of(index_url, storage_options)
    table = read_shard_tables(index, manifest.shards)
    dead = [read_tombstones(index, p) for p in manifest.partitions if p.tombstones]
    if dead:
        table = table.filter(pc.invert(pc.is_in(table.column("image_id"), value_set=pa.array(np.concatenate(dead)))))
    return table


def write_tombstones(index: "IndexLocation | str", partition: PartitionEntry, ids: np.ndarray, readable: np.ndarray,
                     version: int) -> TombstoneEntry:
    """The partition's tombstones with ``ids`` added (``readable`` says which were images)."""
    index = IndexLocation.of(index)
    old = _read(index, partition.tombstones.path) if partition.tombstones else _TOMBSTONES_SCHEMA.empty_table()
    table = pa.concat_tables([old, pa.table({"image_id": np.asarray(ids, np.int64), "readable": np.asarray(readable, bool)},
                                            schema=_TOMBSTONES_SCHEMA)])
    table = table.sort_by("image_id")
    rel = tombstones_path(partition.start, version)
    write_parquet(index.join(rel), table.to_pydict(), _TOMBSTONES_SCHEMA, index.storage_options)
    n_images = int(pc.sum(table.column("readable").cast(pa.int64())).as_py() or 0)
    return TombstoneEntry(rel, n_images, table.num_rows - n_images)


def read_excluded(index: "IndexLocation | str", manifest: Manifest) -> list[str]:
    if manifest.excluded is None:
        return []
    return _read(IndexLocation.of(index), manifest.excluded.path).column("uri").to_pylist()


def write_excluded(index: "IndexLocation | str", uris: Sequence[str], version: int) -> ExcludedEntry | None:
    """The excluded list holding exactly ``uris`` (None when empty)."""
    index = IndexLocation.of(index)
    uris = sorted(set(uris))
    if not uris:
        return None
    rel = excluded_path(version)
    write_parquet(index.join(rel), {"uri": uris}, _EXCLUDED_SCHEMA, index.storage_options)
    return ExcludedEntry(rel, len(uris))


class ImageUris:
    """The uri of every image id of an index, as its image tables hold them: one Arrow array
    per shard, never concatenated (at 10M images that copy alone took 0.5 s).

    ``chunks[i]`` holds the uris of ids ``starts[i]`` to ``starts[i + 1] - 1`` (null where
    an id has no image row: an unreadable image).
    """

    def __init__(self, chunks: Sequence[pa.Array], starts: np.ndarray) -> None:
        self.chunks = list(chunks)
        self.starts = np.asarray(starts, np.int64)
        if self.starts.size != len(self.chunks) + 1 or np.any(np.diff(self.starts) != [len(c) for c in self.chunks]):
            raise ValueError("each chunk must hold the uris of the ids between its start and the next")

    def __len__(self) -> int:
        return int(self.starts[-1])

    def take(self, ids: np.ndarray) -> pa.StringArray:
        """Uris of ``ids`` (each ``0 <= id < len(self)``), in their order. Arrow's own ``take``
        over many chunks took 0.45 s for 10,000 ids of 10M; per chunk, it takes milliseconds."""
        ids = np.asarray(ids, np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"image ids must lie in [0, {len(self)})")
        chunk_of = np.searchsorted(self.starts, ids, side="right") - 1
        order = np.argsort(chunk_of, kind="stable")
        bounds = np.searchsorted(chunk_of[order], np.arange(len(self.chunks) + 1))
        parts = [self.chunks[c].take(pa.array(ids[order[lo:hi]] - self.starts[c])).cast(pa.string())
                 for c, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])) if hi > lo]
        gathered = pa.concat_arrays(parts) if parts else pa.array([], pa.string())
        return gathered.take(pa.array(np.argsort(order, kind="stable")))

    def to_numpy(self) -> np.ndarray:
        """Every uri (object array; ``None`` for ids without an image row)."""
        return np.concatenate([chunk.to_numpy(zero_copy_only=False) for chunk in self.chunks]) if self.chunks \
            else np.empty(0, object)


def read_image_uris(index: "IndexLocation | str", manifest: Manifest) -> ImageUris:
    """The uri of every image id of ``manifest`` (:class:`ImageUris`; its shards tile the ids),
    from the image tables' ``image_id`` and ``uri`` columns only; tables this process read
    before come from memory (:mod:`storage.uri_cache`)."""
    index = IndexLocation.of(index)
    budget = uri_cache_budget()
    stamps = table_stamps(index, [shard.images for shard in manifest.shards]) if budget else {}
    chunks = [cached_uris(index.resolve(shard.images), stamps.get(shard.images), partial(_shard_uris, index, shard), budget)
              for shard in manifest.shards]
    return ImageUris(chunks, np.array([0] + [s.stop for s in manifest.shards]))


def _shard_uris(index: IndexLocation, shard: ShardEntry) -> pa.Array:
    """The uris of ``shard``'s ids, read from its image table (null where an id has no row)."""
    table = _read(index, shard.images, ["image_id", "uri"])
    ids = table.column("image_id").to_numpy()
    uris = table.column("uri").combine_chunks()
    if not np.array_equal(ids, np.arange(shard.start, shard.stop)):  # unreadable images have no row
        position = np.full(shard.stop - shard.start, -1, np.int64)
        position[ids - shard.start] = np.arange(ids.size)
        uris = uris.take(pa.array(position, mask=position < 0))
    return uris

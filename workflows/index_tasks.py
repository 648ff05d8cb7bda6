"""The Dask tasks of ``patchhash index`` and ``patchhash compact``, run on workers.

Each receives URLs, small picklable shards and entries, never a model or corpus arrays; each
writes whole objects at deterministic paths, so a task that runs twice writes the same bytes.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage.image_tables import ERRORS_SCHEMA, IMAGES_SCHEMA, read_shard_tables, write_shard_tables
from storage.layout import MODEL_DIR, partition_codes_path, partition_path
from storage.location import IndexLocation
from storage.manifest import MAP_LAYOUTS, MapEntry, ShardEntry

__all__ = ["encode_shard_task", "build_map_task", "compact_task", "cut_shards", "split_points"]


def encode_shard_task(index: IndexLocation, codes: str, shard, id_start: int, source: int, fingerprints: list | None,
                      version: int) -> dict:
    """Read, convert and encode one shard; write its codes rows and its image/errors tables.

    ``fingerprints`` (one per row of the shard) are recorded with the images; ``None``
    records the hash of the pixels read (rows of array corpora).
    """
    from pipeline.encode import load_encoder
    from storage.arrays import write_rows
    from storage.fingerprint import pixel_fingerprints

    started = time.perf_counter()
    encoder = load_encoder(index.join(MODEL_DIR), index.storage_options)
    data = shard.read(encoder.card.image_spec)
    n_rows = shard.stop - shard.start
    gh, gw = encoder.card.grid
    rows = np.zeros((n_rows, gh, gw), dtype=encoder.card.code_dtype)
    if len(data.ids):
        rows[data.ids - shard.start] = encoder.encode(data.pixels)
    write_rows(index.resolve(codes), id_start, rows, index.storage_options)
    offset = id_start - shard.start
    given = fingerprints if fingerprints is not None else [None] * n_rows
    ok_fps = [given[i] for i in (data.ids - shard.start).tolist()] if fingerprints is not None else pixel_fingerprints(data.pixels)
    images = pa.table({"image_id": data.ids + offset, "uri": data.uris, "source": [source] * len(data.ids), "fingerprint": ok_fps},
                      schema=IMAGES_SCHEMA)
    errors = pa.table({"image_id": [e.image_id + offset for e in data.errors], "uri": [e.uri for e in data.errors],
                       "reason": [e.reason for e in data.errors], "source": [source] * len(data.errors),
                       "fingerprint": [given[e.image_id - shard.start] for e in data.errors]}, schema=ERRORS_SCHEMA)
    entry = write_shard_tables(index, id_start, id_start + n_rows, version, images, errors)
    return {"entry": entry.__dict__, "seconds": time.perf_counter() - started,
            "errors": [{"uri": e.uri, "reason": e.reason} for e in data.errors[:20]]}


def _build_and_write(index: IndexLocation, layout: str, start: int, stop: int, flat: np.ndarray, ids: np.ndarray,
                     version: int) -> MapEntry:
    from pipeline.buckets import build_bucket_map
    from storage.arrays import write_array_group

    bmap = build_bucket_map(flat, ids, positional=layout == "pos").rebased(start)
    stats = bmap.stats()
    path = partition_path(layout, start, stop, version)
    arrays = {"keys": bmap.keys, "offsets": bmap.offsets, "ids": bmap.ids, "key_bounds": bmap.key_bounds}
    # the attribute that holds the layout is called "kind" on disk (docs/FORMAT.md)
    write_array_group(index.join(path), arrays, {"kind": layout, "start": start, "stop": stop, "id_base": start, "stats": stats},
                      index.storage_options)
    return MapEntry(path, stats)


def build_map_task(index: IndexLocation, codes: str, layout: str, start: int, stop: int, shards: list[ShardEntry],
                   version: int) -> dict:
    """Build the ``layout`` bucket map of the readable images of ids ``[start, stop)`` (a new
    partition's base, or a delta of ids appended to one) from the stored codes."""
    from storage.arrays import read_rows
    from storage.tables import read_parquet

    rows = read_rows(index.resolve(codes), start, stop, index.storage_options)
    ids = np.concatenate([read_parquet(index.resolve(s.images), index.storage_options, ["image_id"]).column("image_id").to_numpy()
                          for s in shards] or [np.empty(0, np.int64)]).astype(np.int64)
    ids = np.sort(ids[(ids >= start) & (ids < stop)])
    entry = _build_and_write(index, layout, start, stop, rows.reshape(len(rows), -1)[ids - start], ids, version)
    return {"kind": layout, "start": start, "stop": stop, "path": entry.path, "stats": entry.stats}  # a done-marker: "kind" on disk


def cut_shards(start: int, stop: int, row_ids: np.ndarray, shard_size: int) -> list[tuple[int, int]]:
    """Id ranges tiling ``[start, stop)`` that hold about ``shard_size`` of ``row_ids`` (sorted) each,
    cut only at multiples of ``shard_size``."""
    cuts = [start]
    boundaries = list(range((start // shard_size + 1) * shard_size, stop, shard_size)) + [stop]
    held = 0
    for boundary in boundaries:
        held = int(np.searchsorted(row_ids, boundary)) - int(np.searchsorted(row_ids, cuts[-1]))
        if held >= shard_size or boundary == stop:
            cuts.append(boundary)
    return list(zip(cuts[:-1], cuts[1:]))


def split_points(start: int, stop: int, live: np.ndarray, parts: int, shard_size: int) -> list[int]:
    """Boundaries cutting ``[start, stop)`` into ``parts`` ranges of about equal numbers of the
    sorted ids ``live``, each boundary a multiple of ``shard_size`` (so shards stay whole)."""
    bounds = [start]
    for k in range(1, parts):
        target = int(live[min(len(live) - 1, k * len(live) // parts)]) if len(live) else start
        cut = max(bounds[-1] + 1, round(target / shard_size) * shard_size)
        if cut < stop:
            bounds.append(cut)
    return bounds + [stop]


def compact_task(index: IndexLocation, members: list[tuple[int, int, str]], shards: list[ShardEntry], dead: np.ndarray,
                 start: int, stop: int, parts: int, shard_size: int, grid: tuple[int, int], dtype: str, version: int) -> dict:
    """Rewrite partitions ``members`` (``(start, stop, codes)``, adjacent, covering ``[start, stop)``)
    as ``parts`` partitions of about equal live images: for each, a codes array with the rows
    of deleted ids cleared, tables without them (cut into shards of about ``shard_size``
    images), and base bucket maps of its live images."""
    from storage.arrays import create_codes_array, read_rows, write_rows

    table = read_shard_tables(index, shards)
    table = table.filter(pc.invert(pc.is_in(table.column("image_id"), value_set=pa.array(dead, pa.int64()))))
    live = table.filter(pc.is_null(table.column("reason"))).column("image_id").to_numpy()
    codes = np.zeros((stop - start, *grid), dtype)
    for m_start, m_stop, m_codes in members:
        codes[m_start - start : m_stop - start] = read_rows(index.resolve(m_codes), m_start, m_stop, index.storage_options)
    keep = np.zeros(stop - start, bool)
    keep[live - start] = True
    codes[~keep] = 0
    ids = table.column("image_id").to_numpy()
    out = []
    bounds = split_points(start, stop, live, parts, shard_size)
    for p_start, p_stop in zip(bounds[:-1], bounds[1:]):
        codes_path = partition_codes_path(p_start, version)
        create_codes_array(index.join(codes_path), p_stop, grid, np.dtype(dtype), shard_size, index.storage_options)
        write_rows(index.join(codes_path), p_start, codes[p_start - start : p_stop - start], index.storage_options)
        entries = []
        for s_start, s_stop in cut_shards(p_start, p_stop, ids[(ids >= p_start) & (ids < p_stop)], shard_size):
            part = table.filter(pc.and_(pc.greater_equal(table.column("image_id"), s_start), pc.less(table.column("image_id"), s_stop)))
            is_error = pc.is_valid(part.column("reason"))
            entry = write_shard_tables(index, s_start, s_stop, version, part.filter(pc.invert(is_error)), part.filter(is_error))
            entries.append(entry.__dict__)
        mine = live[(live >= p_start) & (live < p_stop)]
        flat = codes[mine - start].reshape(len(mine), -1)
        maps = {layout: _build_and_write(index, layout, p_start, p_stop, flat, mine, version).__dict__
                for layout in MAP_LAYOUTS}
        out.append({"start": p_start, "stop": p_stop, "codes": codes_path, "maps": maps, "shards": entries})
    return {"start": start, "stop": stop, "partitions": out}

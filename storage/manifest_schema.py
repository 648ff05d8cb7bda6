"""The manifest's JSON schema, formats 1 and 2 (docs/FORMAT.md): validation and serialisation.

Every field is checked for presence, type and range before a :class:`~storage.manifest.Manifest`
is built, so a damaged or edited manifest is refused with an :class:`IndexFormatError` naming
the file, the field and what to do, never half-used.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from storage.errors import IndexFormatError
from storage.layout import CODES, FORMAT, FORMAT_VERSION, MODEL_DIR, check_relative
from storage.manifest import (
    MAP_LAYOUTS,
    DeltaEntry,
    ExcludedEntry,
    Manifest,
    MapEntry,
    PartitionEntry,
    ShardEntry,
    SourceEntry,
    TombstoneEntry,
)

__all__ = ["manifest_from_json", "manifest_to_json", "malformed"]

_FIX = "the manifest is damaged or was edited: restore it from versions/ (a copy of each committed version) or rebuild the index"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CODE_DTYPES = {"uint32": 32, "uint64": 64}
_SHARD_FIELDS = {"start", "stop", "images", "errors", "n_ok", "n_errors"}


def malformed(source: str, problem: str) -> IndexFormatError:
    return IndexFormatError(f"{source}: malformed manifest: {problem}; {_FIX}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Checker:
    """Typed accessors that raise :func:`malformed` naming the manifest and the field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, problem: str) -> IndexFormatError:
        return malformed(self.source, problem)

    def need(self, obj: dict, key: str, where: str = "") -> Any:
        if key not in obj:
            raise self.fail(f"{where}missing field {key!r}")
        return obj[key]

    def integer(self, obj: dict, key: str, low: int, high: int | None = None, where: str = "") -> int:
        value = self.need(obj, key, where)
        if not _is_int(value) or value < low or (high is not None and value > high):
            bound = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
            raise self.fail(f"{where}{key} must be {bound}, got {value!r}")
        return value

    def mapping(self, value: Any, what: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(f"{what} must be a JSON object, got {type(value).__name__}")
        return value

    def sequence(self, value: Any, what: str) -> list:
        if not isinstance(value, list):
            raise self.fail(f"{what} must be a JSON list, got {type(value).__name__}")
        return value

    def only(self, entry: dict, allowed: set[str], what: str) -> None:
        unknown = set(entry) - allowed
        if unknown:
            raise self.fail(f"{what} has unknown fields {sorted(unknown)}")

    def path(self, value: Any, what: str) -> str:
        return check_relative(value, what, self.source)


def manifest_from_json(d: Any, source: str) -> Manifest:
    """Validate a manifest of format 1 or 2 and build the (format 2) :class:`Manifest`."""
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise IndexFormatError(
            f"{source}: not a patchhash index manifest (no \"format\": \"{FORMAT}\"); "
            "pass the URL of an index made by `patchhash index`"
        )
    fv = d.get("format_version")
    if not _is_int(fv) or fv < 1:
        raise malformed(source, f"format_version must be a positive integer, got {fv!r}")
    if fv > FORMAT_VERSION:
        raise IndexFormatError(
            f"{source}: index format version {fv!r} is newer than this patchhash reads ({FORMAT_VERSION}); upgrade patchhash"
        )
    c = _Checker(source)
    head = _header(d, c)
    shards = _shards(d, c, head["n_images"], exact=fv == 1)
    if fv == 1:
        partitions = _partitions_v1(d, c, head["n_images"], head["partition_size"])
        sources = _sources_v1(d, c)
        excluded = None
    else:
        partitions = _partitions_v2(d, c, head["n_images"], shards)
        sources = _sources_v2(d, c)
        excluded = _excluded(d, c)
    return Manifest(**head, shards=shards, partitions=partitions, sources=sources, excluded=excluded, format_version=fv)


def _header(d: dict, c: _Checker) -> dict[str, Any]:
    version = c.integer(d, "version", 1)
    parent = d.get("parent")
    if parent is not None and (not _is_int(parent) or not 1 <= parent < version):
        raise c.fail(f"parent must be null or a version below {version}, got {parent!r}")
    bits = c.integer(d, "bits", 8, 64)
    code_dtype = c.need(d, "code_dtype")
    if code_dtype not in _CODE_DTYPES or bits > _CODE_DTYPES[code_dtype]:
        raise c.fail(f"code_dtype must be uint32 (bits <= 32) or uint64, got {code_dtype!r} for {bits} bits")
    grid = c.sequence(c.need(d, "grid"), "grid")
    if len(grid) != 2 or not all(_is_int(g) and g >= 1 for g in grid):
        raise c.fail(f"grid must be two positive integers, got {grid!r}")
    shard_size = c.integer(d, "shard_size", 1)
    partition_size = c.integer(d, "partition_size", 1)
    if partition_size % shard_size:
        raise c.fail(f"partition_size {partition_size} is not a multiple of shard_size {shard_size}")
    n_images = c.integer(d, "n_images", 0)
    model = c.mapping(c.need(d, "model"), "model")
    if not isinstance(model.get("name"), str) or not _SHA256.match(str(model.get("model_sha256"))):
        raise c.fail("model must name the model (name) and its weights' hash (model_sha256, 64 hex digits)")
    if model.get("path", MODEL_DIR) != MODEL_DIR:
        c.path(model.get("path"), "model")
        raise c.fail(f"model path must be {MODEL_DIR!r}, got {model.get('path')!r}")
    created = d.get("created", "")
    if not isinstance(created, str):
        raise c.fail(f"created must be a string, got {created!r}")
    return dict(version=version, parent=parent, bits=bits, code_dtype=code_dtype, grid=(grid[0], grid[1]),
                shard_size=shard_size, partition_size=partition_size, n_images=n_images, model=dict(model), created=created)


def _shards(d: dict, c: _Checker, n_images: int, exact: bool) -> tuple[ShardEntry, ...]:
    """Shards tile ``[0, n_images)``; format 1 has a table row for every id (``exact``)."""
    shards = []
    expected_start = 0
    for i, raw in enumerate(c.sequence(c.need(d, "shards"), "shards")):
        where = f"shards[{i}]."
        entry = c.mapping(raw, f"shards[{i}]")
        c.only(entry, _SHARD_FIELDS, f"shards[{i}]")
        start = c.integer(entry, "start", 0, where=where)
        stop = c.integer(entry, "stop", start + 1, n_images, where=where)
        if start != expected_start:
            raise c.fail(f"{where[:-1]} starts at image {start}, expected {expected_start} (shards must tile the image ids)")
        expected_start = stop
        n_ok = c.integer(entry, "n_ok", 0, stop - start, where=where)
        n_errors = c.integer(entry, "n_errors", 0, stop - start, where=where)
        if n_ok + n_errors != stop - start if exact else n_ok + n_errors > stop - start:
            raise c.fail(f"{where[:-1]}: n_ok + n_errors = {n_ok + n_errors}, expected {'' if exact else 'at most '}{stop - start}")
        images = c.path(c.need(entry, "images", where), f"{where}images")
        errors = entry.get("errors")
        if errors is not None:
            c.path(errors, f"{where}errors")
        elif n_errors:
            raise c.fail(f"{where[:-1]} counts {n_errors} unreadable images but names no errors table")
        shards.append(ShardEntry(start, stop, images, errors, n_ok, n_errors))
    if expected_start != n_images:
        raise c.fail(f"the shards cover image ids [0, {expected_start}), expected [0, {n_images})")
    return tuple(shards)


def _partitions_v1(d: dict, c: _Checker, n_images: int, partition_size: int) -> tuple[PartitionEntry, ...]:
    """Format 1: one list of ``any`` and ``pos`` entries over the same ranges, codes in ``codes/``."""
    by_layout: dict[str, dict[int, tuple[int, MapEntry]]] = {layout: {} for layout in MAP_LAYOUTS}
    ends = dict.fromkeys(MAP_LAYOUTS, 0)
    for i, raw in enumerate(c.sequence(c.need(d, "partitions"), "partitions")):
        where = f"partitions[{i}]."
        entry = c.mapping(raw, f"partitions[{i}]")
        c.only(entry, {"kind", "start", "stop", "path", "stats"}, f"partitions[{i}]")
        layout = c.need(entry, "kind", where)
        if layout not in ends:
            raise c.fail(f"{where}kind must be 'any' or 'pos', got {layout!r}")
        start = c.integer(entry, "start", 0, where=where)
        stop = c.integer(entry, "stop", start + 1, n_images, where=where)
        if start != ends[layout] or start % partition_size or stop != min(start + partition_size, n_images):
            raise c.fail(
                f"{where[:-1]} covers [{start}, {stop}): {layout!r} partitions must tile the image ids "
                f"in steps of partition_size {partition_size}"
            )
        ends[layout] = stop
        path = c.path(c.need(entry, "path", where), f"{where}path")
        by_layout[layout][start] = (stop, MapEntry(path, c.mapping(entry.get("stats", {}), f"{where}stats")))
    for layout, end in ends.items():
        if end != n_images:
            raise c.fail(f"the {layout!r} partitions cover image ids [0, {end}), expected [0, {n_images})")
    return tuple(
        PartitionEntry(start, stop, CODES, {layout: by_layout[layout][start][1] for layout in MAP_LAYOUTS})
        for start, (stop, _) in sorted(by_layout["any"].items())
    )


def _maps(raw: Any, c: _Checker, where: str) -> dict[str, MapEntry]:
    maps = c.mapping(raw, f"{where}maps")
    c.only(maps, set(MAP_LAYOUTS), f"{where}maps")
    out = {}
    for layout in MAP_LAYOUTS:
        entry = c.mapping(c.need(maps, layout, f"{where}maps."), f"{where}maps.{layout}")
        c.only(entry, {"path", "stats"}, f"{where}maps.{layout}")
        path = c.path(c.need(entry, "path", f"{where}maps.{layout}."), f"{where}maps.{layout}.path")
        out[layout] = MapEntry(path, c.mapping(entry.get("stats", {}), f"{where}maps.{layout}.stats"))
    return out


def _partitions_v2(d: dict, c: _Checker, n_images: int, shards: tuple[ShardEntry, ...]) -> tuple[PartitionEntry, ...]:
    boundaries = {s.start for s in shards} | {n_images}
    partitions = []
    end = 0
    for i, raw in enumerate(c.sequence(c.need(d, "partitions"), "partitions")):
        where = f"partitions[{i}]."
        entry = c.mapping(raw, f"partitions[{i}]")
        c.only(entry, {"start", "stop", "codes", "maps", "deltas", "tombstones"}, f"partitions[{i}]")
        start = c.integer(entry, "start", 0, where=where)
        stop = c.integer(entry, "stop", start + 1, n_images, where=where)
        if start != end:
            raise c.fail(f"{where[:-1]} starts at image {start}, expected {end} (partitions must tile the image ids)")
        if stop not in boundaries:
            raise c.fail(f"{where[:-1]} ends at image {stop}, inside a shard (a partition holds whole shards)")
        end = stop
        codes = c.path(c.need(entry, "codes", where), f"{where}codes")
        maps = _maps(c.need(entry, "maps", where), c, where)
        deltas = []
        low = start
        for j, raw_delta in enumerate(c.sequence(entry.get("deltas", []), f"{where}deltas")):
            dwhere = f"{where}deltas[{j}]."
            delta = c.mapping(raw_delta, dwhere[:-1])
            c.only(delta, {"start", "stop", "maps"}, dwhere[:-1])
            dstart = c.integer(delta, "start", low + 1 if j == 0 else low, stop - 1, where=dwhere)
            dstop = c.integer(delta, "stop", dstart + 1, stop, where=dwhere)
            low = dstop
            deltas.append(DeltaEntry(dstart, dstop, _maps(c.need(delta, "maps", dwhere), c, dwhere)))
        tombstones = None
        if entry.get("tombstones") is not None:
            raw_tomb = c.mapping(entry["tombstones"], f"{where}tombstones")
            c.only(raw_tomb, {"path", "n_images", "n_errors"}, f"{where}tombstones")
            twhere = f"{where}tombstones."
            tombstones = TombstoneEntry(c.path(c.need(raw_tomb, "path", twhere), f"{twhere}path"),
                                        c.integer(raw_tomb, "n_images", 0, stop - start, where=twhere),
                                        c.integer(raw_tomb, "n_errors", 0, stop - start, where=twhere))
        partitions.append(PartitionEntry(start, stop, codes, maps, tuple(deltas), tombstones))
    if end != n_images:
        raise c.fail(f"the partitions cover image ids [0, {end}), expected [0, {n_images})")
    return tuple(partitions)


def _sources_v1(d: dict, c: _Checker) -> tuple[SourceEntry, ...]:
    """Format 1 recorded one entry per run; runs of the same corpus are one source."""
    merged: dict[str, SourceEntry] = {}
    for raw in c.sequence(d.get("sources") or [], "sources"):
        run = c.mapping(raw, "each entry of sources")
        corpus = str(run.get("corpus", ""))
        version = run.get("version") if _is_int(run.get("version")) else 1
        committed = str(run.get("committed", ""))
        if corpus in merged:
            merged[corpus] = SourceEntry(**{**asdict(merged[corpus]), "synced": version, "committed": committed})
        else:
            merged[corpus] = SourceEntry(len(merged), corpus, None, str(run.get("kind", "")), version, version, committed)
    return tuple(merged.values())


def _sources_v2(d: dict, c: _Checker) -> tuple[SourceEntry, ...]:
    sources = []
    for i, raw in enumerate(c.sequence(d.get("sources") or [], "sources")):
        where = f"sources[{i}]."
        entry = c.mapping(raw, f"sources[{i}]")
        c.only(entry, {"source", "corpus", "url", "kind", "added", "synced", "committed", "fingerprint"}, f"sources[{i}]")
        source_id = c.integer(entry, "source", 0, where=where)
        if source_id != i:
            raise c.fail(f"{where}source must be {i} (sources are numbered in order), got {source_id}")
        strings = {}
        for key, optional in (("corpus", False), ("url", True), ("kind", False), ("committed", False), ("fingerprint", True)):
            value = entry.get(key) if optional else c.need(entry, key, where)
            if not (isinstance(value, str) or optional and value is None):
                raise c.fail(f"{where}{key} must be a string{' or null' if optional else ''}, got {value!r}")
            strings[key] = value
        added = c.integer(entry, "added", 1, where=where)
        synced = c.integer(entry, "synced", added, where=where)
        sources.append(SourceEntry(source_id, added=added, synced=synced, **strings))
    return tuple(sources)


def _excluded(d: dict, c: _Checker) -> ExcludedEntry | None:
    if d.get("excluded") is None:
        return None
    entry = c.mapping(d["excluded"], "excluded")
    c.only(entry, {"path", "n"}, "excluded")
    return ExcludedEntry(c.path(c.need(entry, "path", "excluded."), "excluded.path"), c.integer(entry, "n", 0, where="excluded."))


def manifest_to_json(m: Manifest) -> dict[str, Any]:
    """The format-2 JSON of ``m`` (whatever format it was read from)."""
    def maps(entry_maps) -> dict:
        return {layout: {"path": e.path, "stats": e.stats} for layout, e in entry_maps.items()}

    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "version": m.version, "parent": m.parent, "created": m.created, "model": m.model,
        "bits": m.bits, "grid": list(m.grid), "code_dtype": m.code_dtype,
        "shard_size": m.shard_size, "partition_size": m.partition_size, "n_images": m.n_images,
        "shards": [asdict(s) for s in m.shards],
        "partitions": [
            {"start": p.start, "stop": p.stop, "codes": p.codes, "maps": maps(p.maps),
             "deltas": [{"start": x.start, "stop": x.stop, "maps": maps(x.maps)} for x in p.deltas],
             "tombstones": asdict(p.tombstones) if p.tombstones else None}
            for p in m.partitions
        ],
        "sources": [asdict(s) for s in m.sources],
        "excluded": asdict(m.excluded) if m.excluded else None,
    }

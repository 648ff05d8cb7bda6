"""Index manifests: what one committed version of an index is made of.

A version is committed by writing all of its data first, then ``versions/vNNNNNN.json``,
then ``manifest.json`` (each a whole-object atomic write). Readers read ``manifest.json``
once and only open the objects it names, so they always see one complete version.

Format 2 (docs/FORMAT.md) is what this module writes. A format-1 manifest is read as the
format-2 manifest it is equivalent to (no deltas, no tombstones, every partition's codes in
the one ``codes/`` array); the first writer that commits to such an index upgrades it.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from storage.atomic import read_json, write_json_atomic
from storage.errors import IndexFormatError, IndexNotFoundError, ModelMismatchError
from storage.layout import (
    CODES,
    FORMAT_VERSION,
    MANIFEST,
    MODEL_CARD,
    MODEL_DIR,
    MODEL_FILES,
    STAGING,
    VERSIONS,
    array_metadata_path,
    parse_version_path,
    version_path,
)
from storage.location import IndexLocation
from storage.retry import retry_call

__all__ = [
    "MAP_LAYOUTS",
    "ShardEntry",
    "MapEntry",
    "DeltaEntry",
    "TombstoneEntry",
    "PartitionEntry",
    "SearchPartition",
    "SourceEntry",
    "ExcludedEntry",
    "Manifest",
    "read_manifest",
    "check_objects",
    "commit_manifest",
    "list_versions",
    "utc_now",
]

# Every partition has one bucket map of each layout: position-free (``any``, searched by seed
# mode) and positional (``pos``, the default mode). The names are on disk (paths, manifest keys).
MAP_LAYOUTS = ("any", "pos")


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ShardEntry:
    """Image ids ``[start, stop)`` and their image/errors tables.

    ``n_ok`` and ``n_errors`` count the rows of the two tables; ids of the range in neither
    table were deleted and compacted away, so ``n_ok + n_errors <= stop - start``.
    """

    start: int
    stop: int
    images: str
    errors: str | None
    n_ok: int
    n_errors: int


@dataclass(frozen=True)
class MapEntry:
    """One bucket map (a Zarr group) and its statistics."""

    path: str
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeltaEntry:
    """Bucket maps, one per layout, of the ids ``[start, stop)`` added to a partition after its base."""

    start: int
    stop: int
    maps: Mapping[str, MapEntry]


@dataclass(frozen=True)
class TombstoneEntry:
    """The ids deleted from a partition since its base was built (one Parquet file).

    ``n_images`` of them were readable images (still in the partition's bucket maps, filtered
    out by readers), ``n_errors`` were unreadable rows (in no bucket map).
    """

    path: str
    n_images: int
    n_errors: int


@dataclass(frozen=True)
class PartitionEntry:
    """Image ids ``[start, stop)``: their codes, bucket maps, deltas and tombstones.

    ``maps`` (by layout) are the base maps; each of ``deltas`` adds the maps of ids appended
    since. Queries merge base and deltas and drop the ids in ``tombstones``.
    """

    start: int
    stop: int
    codes: str
    maps: Mapping[str, MapEntry]
    deltas: tuple[DeltaEntry, ...] = ()
    tombstones: TombstoneEntry | None = None

    def map_paths(self, layout: str) -> tuple[str, ...]:
        return (self.maps[layout].path, *(d.maps[layout].path for d in self.deltas))

    def search(self, layout: str) -> "SearchPartition":
        return SearchPartition(layout, self.start, self.stop, self.codes, self.map_paths(layout),
                               self.tombstones.path if self.tombstones else None)


@dataclass(frozen=True)
class SearchPartition:
    """What a search task needs of one partition (its bucket maps of one layout): small,
    picklable, immutable paths only."""

    layout: str
    start: int
    stop: int
    codes: str
    maps: tuple[str, ...]
    tombstones: str | None

    @property
    def key(self) -> tuple:
        """Identifies the partition's content: every path in it names an immutable object."""
        return (self.layout, self.start, self.stop, self.codes, self.maps, self.tombstones)


@dataclass(frozen=True)
class SourceEntry:
    """A corpus the index mirrors (``source`` is the id in the image tables' ``source`` column).

    ``corpus`` is the URL as given, ``url`` as opened (an absolute path for local folders;
    None for sources recorded by format 1). ``added`` and ``synced`` are the versions that
    first indexed it and last synced it. ``fingerprint``: for array corpora (IDX, npy, Zarr),
    the array file's fingerprint at the last sync.
    """

    source: int
    corpus: str
    url: str | None
    kind: str
    added: int
    synced: int
    committed: str
    fingerprint: str | None = None

    def matches(self, corpus: str, url: str) -> bool:
        return corpus in (self.corpus, self.url) or url in (self.corpus, self.url)


@dataclass(frozen=True)
class ExcludedEntry:
    """Uris removed by ``patchhash delete``, which syncs do not add back (one Parquet file)."""

    path: str
    n: int


@dataclass(frozen=True)
class Manifest:
    """One committed version. ``n_images`` counts image ids allocated (rows of the codes),
    live or not; :attr:`n_live` counts the searchable images."""

    version: int
    model: dict[str, Any]
    bits: int
    grid: tuple[int, int]
    code_dtype: str
    shard_size: int
    partition_size: int
    n_images: int
    shards: tuple[ShardEntry, ...]
    partitions: tuple[PartitionEntry, ...]
    sources: tuple[SourceEntry, ...] = ()
    excluded: ExcludedEntry | None = None
    created: str = ""
    parent: int | None = None
    format_version: int = FORMAT_VERSION

    @property
    def n_deleted(self) -> int:
        """Images deleted (tombstoned) but not yet compacted out of the bucket maps."""
        return sum(p.tombstones.n_images for p in self.partitions if p.tombstones)

    @property
    def n_ok(self) -> int:
        """Live, searchable images."""
        return sum(s.n_ok for s in self.shards) - self.n_deleted

    n_live = n_ok

    @property
    def n_errors(self) -> int:
        """Live rows whose image could not be read."""
        dead = sum(p.tombstones.n_errors for p in self.partitions if p.tombstones)
        return sum(s.n_errors for s in self.shards) - dead

    def live_in(self, partition: PartitionEntry) -> int:
        """Live images of ``partition``."""
        dead = partition.tombstones.n_images if partition.tombstones else 0
        return sum(s.n_ok for s in self.shards_in(partition.start, partition.stop)) - dead

    def search_partitions(self, layout: str) -> list[SearchPartition]:
        return [p.search(layout) for p in self.partitions]

    def shards_in(self, start: int, stop: int) -> tuple[ShardEntry, ...]:
        return tuple(s for s in self.shards if s.start < stop and s.stop > start)

    def source(self, source_id: int) -> SourceEntry:
        return next(s for s in self.sources if s.source == source_id)

    def to_json(self) -> dict[str, Any]:
        from storage.manifest_schema import manifest_to_json

        return manifest_to_json(self)

    @classmethod
    def from_json(cls, d: Any, source: str) -> "Manifest":
        """Validate ``d`` against the manifest schema (docs/FORMAT.md) and build the manifest.

        Raises
        ------
        IndexFormatError
            Naming ``source``: not a manifest, a newer format version, a field of the wrong
            type or out of range, shards or partitions that do not tile the image ids, or a
            path that could leave the index root.
        """
        from storage.manifest_schema import manifest_from_json

        return manifest_from_json(d, source)

    def next(self, **changes) -> "Manifest":
        """The next version: this one with ``changes``, always written in the current format."""
        return replace(self, version=self.version + 1, parent=self.version, created=utc_now(),
                       format_version=FORMAT_VERSION, **changes)


_FIX = "the manifest is damaged or was edited: restore it from versions/ (a copy of each committed version) or rebuild the index"


def read_manifest(index_url: "IndexLocation | str", storage_options=None, version: int | None = None,
                  check: bool = True) -> Manifest:
    """The latest committed manifest (or a given ``version``) of the index at ``index_url``
    (a URL with its ``storage_options``, or an :class:`~storage.location.IndexLocation`).

    The manifest is validated against its schema; with ``check`` (the default) every object it
    names must exist and the index's model must be the one it records, so that a partial copy
    or a replaced model is refused up front, naming what is wrong.
    """
    from storage.manifest_schema import malformed

    index = IndexLocation.of(index_url, storage_options)
    url = index.join(MANIFEST if version is None else version_path(version))
    try:
        data = read_json(url, index.storage_options)
    except FileNotFoundError:
        if version is not None:
            raise IndexNotFoundError(f"{index.url}: version {version} does not exist (see `patchhash info --index {index.url}`)") from None
        if index.exists(STAGING) or index.exists(VERSIONS):
            raise IndexNotFoundError(
                f"{index.url}: no committed version yet ({MANIFEST} missing): an indexing job was interrupted "
                f"before its first commit. Rerun the same `patchhash index --corpus ... --index {index.url}` command "
                "to resume it."
            ) from None
        raise IndexNotFoundError(
            f"{index.url}: no committed patchhash index here ({MANIFEST} missing). "
            f"Build one with `patchhash index --corpus ... --index {index.url}`."
        ) from None
    except ValueError as exc:
        raise IndexFormatError(f"{url}: not valid JSON ({' '.join(str(exc).split())[:200]}); {_FIX}") from None
    manifest = Manifest.from_json(data, url)
    if version is not None and manifest.version != version:
        raise malformed(url, f"it holds version {manifest.version}, not {version}")
    if check:
        check_objects(index, manifest, url)
    return manifest


def referenced_objects(manifest: Manifest) -> list[str]:
    """Every path the manifest names, relative to the index root (Zarr arrays and groups by
    their folder), the model's files included."""
    names = [f"{MODEL_DIR}/{name}" for name in MODEL_FILES]
    names += sorted({p.codes for p in manifest.partitions})
    names += [s.images for s in manifest.shards] + [s.errors for s in manifest.shards if s.errors]
    names += [path for p in manifest.partitions for layout in MAP_LAYOUTS for path in p.map_paths(layout)]
    names += [p.tombstones.path for p in manifest.partitions if p.tombstones]
    if manifest.excluded:
        names.append(manifest.excluded.path)
    return names


def check_objects(index: IndexLocation, manifest: Manifest, source: str) -> None:
    """Refuse an index whose manifest names objects that are missing, or whose model was replaced.

    One listing per folder (``images/``, ``errors/``, ``buckets/any/``, ``buckets/pos/``...),
    so this costs a handful of requests on an object store, whatever the size of the index.
    """
    by_folder: dict[str, set[str]] = defaultdict(set)
    for rel in referenced_objects(manifest):
        rel = array_metadata_path(CODES) if rel == CODES else rel
        folder, _, name = rel.rpartition("/")
        by_folder[folder].add(name)
    fs = index.fs
    missing = []
    for folder, names in sorted(by_folder.items()):
        path = index.fs_path(folder) if folder else index.path
        fs.invalidate_cache(path)  # listings cached by this process may predate the commit
        try:
            listed = retry_call(f"listing {index.join(folder)}", fs.ls, path, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            listed = []
        present = {str(p).rstrip("/").rsplit("/", 1)[-1] for p in listed}
        missing += [f"{folder}/{name}" for name in sorted(names - present)]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise IndexFormatError(
            f"{source} names {missing[0]}{more}, missing from {index.url}: the index is incomplete (a partial "
            "copy, or files deleted). Copy the whole index folder again, or rebuild it with `patchhash index`."
        )
    card_url = index.join(MODEL_CARD)
    try:
        card = json.loads(retry_call(f"reading {card_url}", fs.cat_file, index.fs_path(MODEL_CARD)))
    except ValueError:
        return  # reported, with a fix, by the model card reader when the model is loaded
    recorded = manifest.model["model_sha256"]
    found = card.get("model_sha256") if isinstance(card, dict) else None
    if found != recorded:
        raise ModelMismatchError(
            f"{card_url} is not the model this index was built with ({source} records model "
            f"{manifest.model['name']!r}, sha256 {recorded[:12]}..., the card says {str(found)[:12]}...): its model "
            "folder was replaced. Put the original model back, or rebuild the index."
        )


def commit_manifest(index: "IndexLocation | str", manifest: Manifest) -> None:
    """Make ``manifest`` the index's current version (its data must already be written)."""
    index = IndexLocation.of(index)
    body = manifest.to_json()
    write_json_atomic(index.join(version_path(manifest.version)), body, index.storage_options)
    write_json_atomic(index.join(MANIFEST), body, index.storage_options)


def list_versions(index_url: "IndexLocation | str", storage_options=None) -> list[int]:
    """The versions whose ``versions/`` file exists, ascending."""
    index = IndexLocation.of(index_url, storage_options)
    fs, path = index.fs, index.fs_path(VERSIONS)
    fs.invalidate_cache(path)  # another process may have committed since this one listed it
    try:
        names = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    return sorted(v for v in map(parse_version_path, names) if v is not None)

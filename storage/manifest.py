"""Index manifests: what one committed version of an index is made of.

A version is committed by writing all of its data first, then ``versions/vNNNNNN.json``,
then ``manifest.json`` (each a whole-object atomic write). Readers read ``manifest.json``
once and only open the objects it names, so they always see one complete version.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from storage.atomic import read_json, write_json_atomic
from storage.errors import IndexFormatError, IndexNotFoundError, ModelMismatchError
from storage.fs import join_url, url_to_fs
from storage.layout import CODES, FORMAT, FORMAT_VERSION, MANIFEST, MODEL_DIR, STAGING, VERSIONS, check_relative, version_path
from storage.retry import retry_call

__all__ = ["ShardEntry", "PartitionEntry", "Manifest", "read_manifest", "check_objects", "commit_manifest", "list_versions", "utc_now"]


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ShardEntry:
    """Rows ``[start, stop)`` of the codes array and their image/errors tables."""

    start: int
    stop: int
    images: str
    errors: str | None
    n_ok: int
    n_errors: int


@dataclass(frozen=True)
class PartitionEntry:
    """A bucket map over image ids ``[start, stop)``; ``kind`` is ``any`` or ``pos``."""

    kind: str
    start: int
    stop: int
    path: str
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
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
    sources: tuple[dict[str, Any], ...] = ()
    created: str = ""
    parent: int | None = None

    @property
    def n_ok(self) -> int:
        return sum(s.n_ok for s in self.shards)

    @property
    def n_errors(self) -> int:
        return sum(s.n_errors for s in self.shards)

    def partitions_of(self, kind: str) -> tuple[PartitionEntry, ...]:
        return tuple(p for p in self.partitions if p.kind == kind)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["grid"] = list(self.grid)
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **d}

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
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise IndexFormatError(
                f"{source}: not a patchhash index manifest (no \"format\": \"{FORMAT}\"); "
                "pass the URL of an index made by `patchhash index`"
            )
        fv = d.get("format_version")
        if not _is_int(fv) or fv < 1:
            raise _malformed(source, f"format_version must be a positive integer, got {fv!r}")
        if fv > FORMAT_VERSION:
            raise IndexFormatError(
                f"{source}: index format version {fv!r} is newer than this patchhash reads ({FORMAT_VERSION}); upgrade patchhash"
            )
        return _validate(d, source, cls)

    def next(self, **changes) -> "Manifest":
        return replace(self, version=self.version + 1, parent=self.version, created=utc_now(), **changes)


_FIX = "the manifest is damaged or was edited: restore it from versions/ (a copy of each committed version) or rebuild the index"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CODE_DTYPES = {"uint32": 32, "uint64": 64}
# Files of the model directory an index carries (named here: storage never imports pipeline).
_MODEL_FILES = ("model.keras", "card.json")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _malformed(source: str, problem: str) -> IndexFormatError:
    return IndexFormatError(f"{source}: malformed manifest: {problem}; {_FIX}")


def _validate(d: dict, source: str, cls) -> Manifest:
    def need(obj: dict, key: str, where: str = "") -> Any:
        if key not in obj:
            raise _malformed(source, f"{where}missing field {key!r}")
        return obj[key]

    def integer(obj: dict, key: str, low: int, high: int | None = None, where: str = "") -> int:
        value = need(obj, key, where)
        if not _is_int(value) or value < low or (high is not None and value > high):
            bound = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
            raise _malformed(source, f"{where}{key} must be {bound}, got {value!r}")
        return value

    def mapping(value: Any, what: str) -> dict:
        if not isinstance(value, dict):
            raise _malformed(source, f"{what} must be a JSON object, got {type(value).__name__}")
        return value

    def sequence(value: Any, what: str) -> list:
        if not isinstance(value, list):
            raise _malformed(source, f"{what} must be a JSON list, got {type(value).__name__}")
        return value

    version = integer(d, "version", 1)
    parent = d.get("parent")
    if parent is not None and (not _is_int(parent) or not 1 <= parent < version):
        raise _malformed(source, f"parent must be null or a version below {version}, got {parent!r}")
    bits = integer(d, "bits", 8, 64)
    code_dtype = need(d, "code_dtype")
    if code_dtype not in _CODE_DTYPES or bits > _CODE_DTYPES[code_dtype]:
        raise _malformed(source, f"code_dtype must be uint32 (bits <= 32) or uint64, got {code_dtype!r} for {bits} bits")
    grid = sequence(need(d, "grid"), "grid")
    if len(grid) != 2 or not all(_is_int(g) and g >= 1 for g in grid):
        raise _malformed(source, f"grid must be two positive integers, got {grid!r}")
    shard_size = integer(d, "shard_size", 1)
    partition_size = integer(d, "partition_size", 1)
    if partition_size % shard_size:
        raise _malformed(source, f"partition_size {partition_size} is not a multiple of shard_size {shard_size}")
    n_images = integer(d, "n_images", 0)
    model = mapping(need(d, "model"), "model")
    if not isinstance(model.get("name"), str) or not _SHA256.match(str(model.get("model_sha256"))):
        raise _malformed(source, "model must name the model (name) and its weights' hash (model_sha256, 64 hex digits)")
    if model.get("path", MODEL_DIR) != MODEL_DIR:
        check_relative(model.get("path"), "model", source)
        raise _malformed(source, f"model path must be {MODEL_DIR!r}, got {model.get('path')!r}")
    created = d.get("created", "")
    if not isinstance(created, str):
        raise _malformed(source, f"created must be a string, got {created!r}")
    sources = tuple(mapping(x, "each entry of sources") for x in sequence(d.get("sources") or [], "sources"))

    shards = []
    expected_start = 0
    for i, raw in enumerate(sequence(need(d, "shards"), "shards")):
        where = f"shards[{i}]."
        entry = mapping(raw, f"shards[{i}]")
        unknown = set(entry) - {"start", "stop", "images", "errors", "n_ok", "n_errors"}
        if unknown:
            raise _malformed(source, f"{where[:-1]} has unknown fields {sorted(unknown)}")
        start = integer(entry, "start", 0, where=where)
        stop = integer(entry, "stop", start + 1, n_images, where=where)
        if start != expected_start:
            raise _malformed(source, f"{where[:-1]} starts at image {start}, expected {expected_start} (shards must tile the image ids)")
        expected_start = stop
        n_ok = integer(entry, "n_ok", 0, stop - start, where=where)
        n_errors = integer(entry, "n_errors", 0, stop - start, where=where)
        if n_ok + n_errors != stop - start:
            raise _malformed(source, f"{where[:-1]}: n_ok + n_errors = {n_ok + n_errors}, expected {stop - start}")
        images = check_relative(need(entry, "images", where), f"{where}images", source)
        errors = entry.get("errors")
        if errors is not None:
            check_relative(errors, f"{where}errors", source)
        elif n_errors:
            raise _malformed(source, f"{where[:-1]} counts {n_errors} unreadable images but names no errors table")
        shards.append(ShardEntry(start, stop, images, errors, n_ok, n_errors))
    if expected_start != n_images:
        raise _malformed(source, f"the shards cover image ids [0, {expected_start}), expected [0, {n_images})")

    partitions = []
    ends = {"any": 0, "pos": 0}
    for i, raw in enumerate(sequence(need(d, "partitions"), "partitions")):
        where = f"partitions[{i}]."
        entry = mapping(raw, f"partitions[{i}]")
        unknown = set(entry) - {"kind", "start", "stop", "path", "stats"}
        if unknown:
            raise _malformed(source, f"{where[:-1]} has unknown fields {sorted(unknown)}")
        kind = need(entry, "kind", where)
        if kind not in ends:
            raise _malformed(source, f"{where}kind must be 'any' or 'pos', got {kind!r}")
        start = integer(entry, "start", 0, where=where)
        stop = integer(entry, "stop", start + 1, n_images, where=where)
        if start != ends[kind] or start % partition_size or stop != min(start + partition_size, n_images):
            raise _malformed(
                source, f"{where[:-1]} covers [{start}, {stop}): {kind!r} partitions must tile the image ids "
                f"in steps of partition_size {partition_size}"
            )
        ends[kind] = stop
        path = check_relative(need(entry, "path", where), f"{where}path", source)
        stats = mapping(entry.get("stats", {}), f"{where}stats")
        partitions.append(PartitionEntry(kind, start, stop, path, stats))
    for kind, end in ends.items():
        if end != n_images:
            raise _malformed(source, f"the {kind!r} partitions cover image ids [0, {end}), expected [0, {n_images})")

    return cls(
        version=version, model=dict(model), bits=bits, grid=(grid[0], grid[1]), code_dtype=code_dtype,
        shard_size=shard_size, partition_size=partition_size, n_images=n_images, shards=tuple(shards),
        partitions=tuple(partitions), sources=sources, created=created, parent=parent,
    )


def read_manifest(index_url: str, storage_options=None, version: int | None = None, check: bool = True) -> Manifest:
    """The latest committed manifest (or a given ``version``) of the index at ``index_url``.

    The manifest is validated against its schema; with ``check`` (the default) every object it
    names must exist and the index's model must be the one it records, so that a partial copy
    or a replaced model is refused up front, naming what is wrong.
    """
    rel = MANIFEST if version is None else version_path(version)
    url = join_url(index_url, rel)
    try:
        data = read_json(url, storage_options)
    except FileNotFoundError:
        if version is not None:
            raise IndexNotFoundError(f"{index_url}: version {version} does not exist (see `patchhash info --index {index_url}`)") from None
        if _exists(join_url(index_url, STAGING), storage_options) or _exists(join_url(index_url, VERSIONS), storage_options):
            raise IndexNotFoundError(
                f"{index_url}: no committed version yet ({MANIFEST} missing): an indexing job was interrupted "
                f"before its first commit. Rerun the same `patchhash index --corpus ... --index {index_url}` command "
                "to resume it."
            ) from None
        raise IndexNotFoundError(
            f"{index_url}: no committed patchhash index here ({MANIFEST} missing). "
            f"Build one with `patchhash index --corpus ... --index {index_url}`."
        ) from None
    except ValueError as exc:
        raise IndexFormatError(f"{url}: not valid JSON ({' '.join(str(exc).split())[:200]}); {_FIX}") from None
    manifest = Manifest.from_json(data, url)
    if version is not None and manifest.version != version:
        raise _malformed(url, f"it holds version {manifest.version}, not {version}")
    if check:
        check_objects(index_url, manifest, url, storage_options)
    return manifest


def _exists(url: str, storage_options) -> bool:
    fs, path = url_to_fs(url, storage_options)
    return bool(retry_call(f"checking {url}", fs.exists, path))


def check_objects(index_url: str, manifest: Manifest, source: str, storage_options=None) -> None:
    """Refuse an index whose manifest names objects that are missing, or whose model was replaced.

    One listing per folder (``images/``, ``errors/``, ``buckets/any/``, ``buckets/pos/``...),
    so this costs a handful of requests on an object store, whatever the size of the index.
    """
    wanted = [f"{CODES}/zarr.json", *(f"{MODEL_DIR}/{name}" for name in _MODEL_FILES)]
    wanted += [s.images for s in manifest.shards] + [s.errors for s in manifest.shards if s.errors]
    wanted += [p.path for p in manifest.partitions]
    by_folder: dict[str, set[str]] = defaultdict(set)
    for rel in wanted:
        folder, _, name = rel.rpartition("/")
        by_folder[folder].add(name)
    fs, root = url_to_fs(index_url, storage_options)
    root = root.rstrip("/")
    missing = []
    for folder, names in sorted(by_folder.items()):
        path = f"{root}/{folder}" if folder else root
        fs.invalidate_cache(path)  # listings cached by this process may predate the commit
        try:
            listed = retry_call(f"listing {join_url(index_url, folder)}", fs.ls, path, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            listed = []
        present = {str(p).rstrip("/").rsplit("/", 1)[-1] for p in listed}
        missing += [f"{folder}/{name}" for name in sorted(names - present)]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise IndexFormatError(
            f"{source} names {missing[0]}{more}, missing from {index_url}: the index is incomplete (a partial "
            "copy, or files deleted). Copy the whole index folder again, or rebuild it with `patchhash index`."
        )
    card_url = join_url(index_url, MODEL_DIR, "card.json")
    try:
        card = json.loads(retry_call(f"reading {card_url}", fs.cat_file, f"{root}/{MODEL_DIR}/card.json"))
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


def commit_manifest(index_url: str, manifest: Manifest, storage_options=None) -> None:
    """Make ``manifest`` the index's current version (its data must already be written)."""
    body = manifest.to_json()
    write_json_atomic(join_url(index_url, version_path(manifest.version)), body, storage_options)
    write_json_atomic(join_url(index_url, MANIFEST), body, storage_options)


def list_versions(index_url: str, storage_options=None) -> list[int]:
    fs, path = url_to_fs(join_url(index_url, "versions"), storage_options)
    try:
        names = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        base = name.rstrip("/").rsplit("/", 1)[-1]
        if base.startswith("v") and base.endswith(".json") and base[1:-5].isdigit():
            out.append(int(base[1:-5]))
    return sorted(out)

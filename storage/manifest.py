"""Index manifests: what one committed version of an index is made of.

A version is committed by writing all of its data first, then ``versions/vNNNNNN.json``,
then ``manifest.json`` (each a whole-object atomic write). Readers read ``manifest.json``
once and only open the objects it names, so they always see one complete version.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from storage.atomic import read_json, write_json_atomic
from storage.errors import IndexFormatError, IndexNotFoundError
from storage.fs import join_url, url_to_fs
from storage.layout import FORMAT, FORMAT_VERSION, MANIFEST, check_relative, version_path

__all__ = ["ShardEntry", "PartitionEntry", "Manifest", "read_manifest", "commit_manifest", "list_versions", "utc_now"]


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
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise IndexFormatError(f"{source}: not a patchhash index manifest")
        fv = d.get("format_version")
        if not isinstance(fv, int) or fv > FORMAT_VERSION:
            raise IndexFormatError(
                f"{source}: index format version {fv!r} is newer than this patchhash reads ({FORMAT_VERSION}); upgrade patchhash"
            )
        try:
            shards = tuple(ShardEntry(**s) for s in d["shards"])
            partitions = tuple(PartitionEntry(**p) for p in d["partitions"])
            m = cls(
                version=int(d["version"]), model=dict(d["model"]), bits=int(d["bits"]),
                grid=(int(d["grid"][0]), int(d["grid"][1])), code_dtype=str(d["code_dtype"]),
                shard_size=int(d["shard_size"]), partition_size=int(d["partition_size"]),
                n_images=int(d["n_images"]), shards=shards, partitions=partitions,
                sources=tuple(d.get("sources") or ()), created=str(d.get("created", "")), parent=d.get("parent"),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise IndexFormatError(f"{source}: malformed manifest ({type(exc).__name__}: {exc})") from None
        for s in m.shards:
            check_relative(s.images, "image table")
            if s.errors is not None:
                check_relative(s.errors, "errors table")
        for p in m.partitions:
            check_relative(p.path, "partition")
            if p.kind not in ("any", "pos"):
                raise IndexFormatError(f"{source}: unknown partition kind {p.kind!r}")
        return m

    def next(self, **changes) -> "Manifest":
        return replace(self, version=self.version + 1, parent=self.version, created=utc_now(), **changes)


def read_manifest(index_url: str, storage_options=None, version: int | None = None) -> Manifest:
    """The latest committed manifest (or a given ``version``) of the index at ``index_url``."""
    rel = MANIFEST if version is None else version_path(version)
    url = join_url(index_url, rel)
    try:
        data = read_json(url, storage_options)
    except FileNotFoundError:
        if version is not None:
            raise IndexNotFoundError(f"{index_url}: version {version} does not exist (see `patchhash info --index {index_url}`)") from None
        raise IndexNotFoundError(
            f"{index_url}: no committed patchhash index here ({MANIFEST} missing). "
            f"Build one with `patchhash index --corpus ... --index {index_url}`."
        ) from None
    except ValueError as exc:
        raise IndexFormatError(f"{url}: not valid JSON ({exc})") from None
    return Manifest.from_json(data, url)


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

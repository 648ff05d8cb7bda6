"""Garbage collection: delete the objects no kept version of an index references.

Versions kept: the newest ``keep_versions``, and every version that was current less than
``min_age`` seconds ago (a query job pins the version it started on and may run that long).
Garbage: every object under the index that no kept version names and that is older than
``min_age``, besides what a reader or the next run needs whatever the versions say
(``manifest.json``, ``model/``, ``runs/``, the lock, and the staging area of a version not
committed yet, which an interrupted run resumes from).

Deleting runs in an order that a kill cannot make harmful: first the version files of the
versions dropped (so no reader can open a version whose objects are going), then the
objects. Every kept version stays readable throughout; a rerun finishes the job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from storage.atomic import read_json
from storage.fingerprint import timestamp_of
from storage.fs import is_local
from storage.layout import (
    LOCK_FILE,
    PROTECTED,
    STAGING,
    VERSIONS,
    array_metadata_path,
    codes_chunk_path,
    object_version,
    parse_codes_chunk,
    parse_version_path,
    version_path,
)
from storage.location import IndexLocation
from storage.manifest import Manifest, read_manifest, referenced_objects
from storage.retry import retry_call

__all__ = ["GcPlan", "plan_gc", "collect_garbage", "index_objects", "gc_references"]

log = logging.getLogger(__name__)

_BATCH = 500


@dataclass
class GcPlan:
    """What a collection deletes. ``garbage`` and ``young`` are ``(path, bytes)`` relative to the index."""

    current: int
    kept: list[int]
    dropped: list[int]
    garbage: list[tuple[str, int]] = field(default_factory=list)
    young: list[tuple[str, int]] = field(default_factory=list)
    referenced: int = 0
    referenced_bytes: int = 0

    @property
    def garbage_bytes(self) -> int:
        return sum(size for _, size in self.garbage)


def index_objects(index: "IndexLocation | str") -> dict[str, dict]:
    """Every object (file) under the index: relative path -> fsspec info."""
    index = IndexLocation.of(index)
    fs, root = index.fs, index.path
    fs.invalidate_cache(root)
    found = retry_call(f"listing {index.url}", fs.find, root, detail=True)
    return {name[len(root) + 1 :]: info for name, info in found.items() if info.get("type", "file") == "file"}


def _referenced(rel: str, names: set[str]) -> bool:
    """Whether ``rel`` is one of ``names`` or inside one (a Zarr array or group)."""
    parts = rel.split("/")
    return any("/".join(parts[:depth]) in names for depth in range(1, len(parts) + 1))


def gc_references(manifest: Manifest) -> set[str]:
    """What ``manifest`` references, with codes arrays by chunk: the rows of a partition that
    compaction moved to an array of its own leave their chunks of the old array unreferenced."""
    names = set(referenced_objects(manifest))
    size = manifest.shard_size
    for p in manifest.partitions:
        names.discard(p.codes)
        names.add(array_metadata_path(p.codes))
        names.update(codes_chunk_path(p.codes, i) for i in range(p.start // size, (p.stop - 1) // size + 1))
    return names


def _future_rows(rel: str, current: Manifest) -> bool:
    """Whether ``rel`` is a codes chunk of ids the current version has not given out yet: an
    interrupted run wrote it, and resumes from it."""
    chunk = parse_codes_chunk(rel)
    return chunk is not None and chunk * current.shard_size >= current.n_images


def _superseded_at(index: IndexLocation, version: int) -> float | None:
    """When ``version`` stopped being current: the creation time of the next version."""
    try:
        created = read_json(index.join(version_path(version + 1)), index.storage_options).get("created")
    except (FileNotFoundError, ValueError):
        return None
    return timestamp_of(created)


def plan_gc(index_url: "IndexLocation | str", keep_versions: int = 1, min_age: float = 86_400.0, storage_options=None,
            now: float | None = None) -> GcPlan:
    """What :func:`collect_garbage` would delete now (nothing is deleted here)."""
    if keep_versions < 1:
        raise ValueError("keep_versions must be >= 1")
    index = IndexLocation.of(index_url, storage_options)
    now = time.time() if now is None else now
    current = read_manifest(index)
    objects = index_objects(index)
    versions = sorted({v for v in (parse_version_path(p) for p in objects if p.startswith(f"{VERSIONS}/")) if v is not None})
    committed = [v for v in versions if v <= current.version]
    kept = set(committed[-keep_versions:]) | {current.version}
    for v in committed:
        superseded = _superseded_at(index, v)
        if superseded is None or now - superseded < min_age:
            kept.add(v)
    manifests: list[Manifest] = [current]
    for v in sorted(kept - {current.version}):
        manifests.append(read_manifest(index, version=v, check=False))
    names = set().union(*(gc_references(m) for m in manifests))
    current_names = gc_references(current)
    plan = GcPlan(current.version, sorted(kept), [v for v in committed if v not in kept])
    for rel, info in sorted(objects.items()):
        size = int(info.get("size") or 0)
        if _referenced(rel, current_names):
            plan.referenced += 1
            plan.referenced_bytes += size
        top = rel.split("/", 1)[0]
        if rel.startswith(f"{VERSIONS}/") or _referenced(rel, names):
            continue
        if top == STAGING:
            staged = parse_version_path(rel.split("/")[1] + ".json") if "/" in rel else None
            if staged is None or staged > current.version:
                continue  # the resumable work of a version not committed yet
        elif top in PROTECTED or top.startswith(LOCK_FILE):  # the lock and its take-over guards
            continue
        elif (object_version(rel) or 0) > current.version or _future_rows(rel, current):
            continue  # written by a run that has not committed yet
        stamp = next((t for t in map(timestamp_of, (info.get(k) for k in ("mtime", "LastModified", "created"))) if t is not None), None)
        if stamp is not None and now - stamp < min_age:
            plan.young.append((rel, size))
        else:
            plan.garbage.append((rel, size))
    return plan


def collect_garbage(index: "IndexLocation | str", plan: GcPlan, after_batch: Callable[[int], None] | None = None) -> int:
    """Delete the versions ``plan`` drops, then its garbage; returns the objects deleted.

    ``after_batch(n_deleted)`` is called after each batch of deletes (progress, fault tests).
    """
    index = IndexLocation.of(index)
    fs, root = index.fs, index.path
    versions = [index.fs_path(version_path(v)) for v in plan.dropped]  # oldest first: see plan_gc
    objects = [index.fs_path(rel) for rel, _ in plan.garbage]
    batches = [versions] if versions else []
    batches += [objects[i : i + _BATCH] for i in range(0, len(objects), _BATCH)]
    deleted = 0
    for batch in batches:
        try:
            retry_call(f"deleting {len(batch)} objects of {index.url}", fs.rm, batch)
        except FileNotFoundError:  # a rerun after a kill: some are gone already
            for path in batch:
                try:
                    fs.rm_file(path)
                except FileNotFoundError:
                    pass
        deleted += len(batch)
        if after_batch is not None:
            after_batch(deleted)
    if is_local(fs):
        _remove_empty_folders(root)
    fs.invalidate_cache(root)
    return deleted


def _remove_empty_folders(root: str) -> None:
    """Folders of deleted Zarr groups and arrays (object stores have no folders)."""
    import os

    for folder, _, _ in os.walk(root, topdown=False):
        if folder != root and not os.listdir(folder):
            try:
                os.rmdir(folder)
            except OSError:
                pass

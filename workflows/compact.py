"""Compaction: rewrite fragmented partitions so the index stays as small and fast as a fresh build.

Syncs leave garbage behind: deleted images still in a partition's bucket maps (tombstoned,
filtered out by every query), delta maps that queries merge with the base, small tables, and,
as image ids are only ever appended, more partitions than the live images need. Compaction
rewrites a group of adjacent partitions as the fewest partitions their live images fill:
codes arrays with the rows of deleted ids cleared, tables without them (cut into shards of
about ``shard_size`` images), and base bucket maps of the live images only. Like Lucene's
merges, it is a version of its own.

What is due: a partition whose deleted images pass ``max_garbage`` of its live ones or that
has more than ``max_deltas`` deltas; and, while the index holds more than ``max_objects`` times
the objects a fresh build of its live images would (each delta adds two Zarr groups), runs of
partitions whose live images fit in fewer, then the partitions with the most extra objects.
``patchhash index`` compacts after its commit, rewriting at most ``budget`` of the live images
per run (always the most urgent group), so nightly costs stay flat; ``patchhash compact``
compacts everything due at once (``--all``: every partition holding any garbage or delta).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from storage import ConfigError
from storage.image_tables import read_tombstones
from storage.layout import CODES, compact_done_marker
from storage.location import IndexLocation
from storage.manifest import MAP_LAYOUTS, Manifest, MapEntry, PartitionEntry, ShardEntry, commit_manifest
from storage.staging import cleanup_staging, read_done_marker, staging_plan, write_done_marker
from workflows.options import check_options, option
from workflows.progress import track
from workflows.runtime import failpoint

__all__ = ["CompactionPolicy", "CompactionResult", "plan_compaction", "compact_job"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompactionPolicy:
    """When partitions are compacted; see the module docstring."""

    max_garbage: float = option(0.2, "A partition is due when its deleted images exceed this fraction of its live ones.",
                                minimum=0)
    max_deltas: int = option(8, "A partition is due when it has more delta maps than this.", minimum=0)
    max_objects: float = 1.4
    budget: float = 0.25

    def __post_init__(self) -> None:
        check_options(self)
        if self.max_objects < 1:
            raise ConfigError(f"the object bound must be >= 1 (times a fresh build's objects), got {self.max_objects}")
        if not 0 <= self.budget <= 1:
            raise ConfigError(f"the compaction budget must be between 0 and 1, got {self.budget}")


@dataclass(frozen=True)
class CompactionResult:
    version: int
    partitions: int
    images: int


# Objects of one bucket map: the group's zarr.json, and a zarr.json and a chunk per array.
_MAP_OBJECTS = 1 + 2 * 4


def _chunks(manifest: Manifest, start: int, stop: int) -> int:
    size = manifest.shard_size
    return (stop - 1) // size - start // size + 1


def _objects(manifest: Manifest, p: PartitionEntry) -> tuple[int, int]:
    """The objects of a partition (maps, tables, tombstones, its codes chunks and the metadata
    of a codes array of its own) now, and once compacted (into an array of its own)."""
    maps = len(MAP_LAYOUTS) * _MAP_OBJECTS
    tables = manifest.shards_in(p.start, p.stop)
    codes = _chunks(manifest, p.start, p.stop)
    now = maps * (1 + len(p.deltas)) + sum(1 + bool(s.errors) for s in tables) + bool(p.tombstones) + codes + (p.codes != CODES)
    return now, maps + max(1, -(-manifest.live_in(p) // manifest.shard_size)) + codes + 1


def _urgency(manifest: Manifest, p: PartitionEntry, policy: CompactionPolicy) -> float:
    """How far past its thresholds a partition is (>= 1: due)."""
    garbage = (p.tombstones.n_images + p.tombstones.n_errors) if p.tombstones else 0
    live = max(1, manifest.live_in(p))
    return max(garbage / live / policy.max_garbage if policy.max_garbage else float(garbage > 0),
               len(p.deltas) / policy.max_deltas if policy.max_deltas else float(len(p.deltas) > 0))


def _fresh_objects(manifest: Manifest, live: int) -> int:
    """About the objects of a fresh build of ``live`` images: maps, tables and codes chunks."""
    maps = len(MAP_LAYOUTS) * _MAP_OBJECTS
    return maps * max(1, -(-live // manifest.partition_size)) + 2 * max(1, -(-live // manifest.shard_size))


def _windows(live: list[int], partition_size: int, widest: int = 4) -> list[tuple[int, int]]:
    """Runs of adjacent partitions whose live images fit in fewer partitions, cheapest first
    (live images rewritten per partition saved), not overlapping."""
    found = []
    for i in range(len(live)):
        for j in range(i + 2, min(len(live), i + widest) + 1):
            saved = (j - i) - max(1, -(-sum(live[i:j]) // partition_size))
            if saved > 0:
                found.append((sum(live[i:j]) / saved, i, j))
                break
    chosen: list[tuple[int, int]] = []
    for _, i, j in sorted(found):
        if all(j <= a or i >= b for a, b in chosen):
            chosen.append((i, j))
    return chosen


def plan_compaction(manifest: Manifest, policy: CompactionPolicy, auto: bool = False,
                    force: bool = False) -> list[tuple[int, int, int]]:
    """Groups ``(first, last + 1, parts)``: partition positions to rewrite as ``parts`` partitions,
    most urgent first.

    A partition is due past its garbage or delta threshold. While the index holds more than
    ``max_objects`` times the objects of a fresh build of its live images, the partitions with
    the most extra objects (deltas, small tables) are due too, and runs of partitions whose live
    images fit in fewer are merged; these come first (the object bound is what keeps the index
    as small and fast as a fresh build; garbage is only filtered at query time). ``auto`` keeps
    within ``policy.budget`` of the live images (always the most urgent group); ``force`` takes
    every partition holding any garbage or delta.
    """
    parts = manifest.partitions
    live = [manifest.live_in(p) for p in parts]
    urgency = [_urgency(manifest, p, policy) for p in parts]
    if force:
        urgency = [max(u, 1.0) if p.deltas or p.tombstones else u for u, p in zip(urgency, parts)]
    counts = [_objects(manifest, p) for p in parts]
    now, bound = sum(c[0] for c in counts), policy.max_objects * _fresh_objects(manifest, sum(live))
    groups: list[tuple[int, int]] = []
    bounding: set[tuple[int, int]] = set()  # groups that bring the objects back under the bound: first
    if now > bound or force:
        for i, j in _windows(live, manifest.partition_size):
            groups.append((i, j))
            bounding.add((i, j))
            now -= sum(c[0] for c in counts[i:j]) - _fresh_objects(manifest, sum(live[i:j]))
            if now <= bound and not force:
                break
    merged = {i for a, b in groups for i in range(a, b)}
    for i in sorted(range(len(parts)), key=lambda i: counts[i][1] - counts[i][0]):
        if i in merged or now <= bound or counts[i][0] <= counts[i][1]:
            continue
        urgency[i] = max(urgency[i], 1.0)
        bounding.add((i, i + 1))
        now -= counts[i][0] - counts[i][1]
    groups += [(i, i + 1) for i in range(len(parts)) if i not in merged and urgency[i] >= 1]
    score = {g: float("inf") if g in bounding else max([1.0, *urgency[g[0] : g[1]]]) for g in groups}
    chosen = sorted(groups, key=lambda g: (-score[g], g))
    if auto and chosen:
        budget = policy.budget * max(1, sum(live))
        taken, spent = [], 0
        for g in chosen:
            cost = sum(live[g[0] : g[1]])
            if taken and spent + cost > budget:
                continue
            taken.append(g)
            spent += cost
        chosen = taken
    return [(a, b, max(1, -(-sum(live[a:b]) // manifest.partition_size)) if b - a > 1 else 1) for a, b in chosen]


def compact_job(dask, index: IndexLocation, manifest: Manifest, policy: CompactionPolicy, lock, auto: bool = False,
                force: bool = False) -> CompactionResult | None:
    """Compact the groups :func:`plan_compaction` picks and commit them as the next version
    (None when nothing is due). Resumable: each group's result has a done-marker."""
    from workflows.index_tasks import compact_task

    groups = plan_compaction(manifest, policy, auto=auto, force=force)
    if not groups:
        return None
    version = manifest.version + 1
    parts = manifest.partitions
    spans = [(parts[a].start, parts[b - 1].stop, n) for a, b, n in groups]
    plan_doc = {"command": "compact", "version": version, "parent": manifest.version, "groups": [list(s) for s in spans]}
    done = staging_plan(index, version, plan_doc)
    futures = []
    for (a, b, n), (start, stop, _) in zip(groups, spans):
        if compact_done_marker(start) in done:
            continue
        members = parts[a:b]
        dead = np.concatenate([read_tombstones(index, p) for p in members] or [np.empty(0, np.int64)])
        futures.append(dask.submit(
            compact_task, index, [(p.start, p.stop, p.codes) for p in members], list(manifest.shards_in(start, stop)),
            dead, start, stop, n, manifest.shard_size, manifest.grid, manifest.code_dtype, version, pure=False,
        ))
    log.info("compacting %d group(s) of partitions of %s: %s", len(groups), index.url,
             ", ".join(f"[{start}, {stop}) into {n}" for start, stop, n in spans))
    for future in track(futures, total=len(futures), desc="compact", unit="group"):
        result = future.result()
        write_done_marker(index, version, compact_done_marker(result["start"]), result)
        failpoint("compact-group-done")
    new_parts, new_shards = list(parts), list(manifest.shards)
    for (a, b, _), (start, stop, _) in sorted(zip(groups, spans), reverse=True):
        written = read_done_marker(index, version, compact_done_marker(start))["partitions"]
        new_parts[a:b] = [PartitionEntry(r["start"], r["stop"], r["codes"], {k: MapEntry(**m) for k, m in r["maps"].items()})
                          for r in written]
        inside = [i for i, s in enumerate(new_shards) if s.start >= start and s.stop <= stop]
        new_shards[inside[0] : inside[-1] + 1] = [ShardEntry(**e) for r in written for e in r["shards"]]
    compacted = manifest.next(partitions=tuple(new_parts), shards=tuple(new_shards))
    failpoint("compact-before-commit")
    if lock is not None:
        lock.verify()
    commit_manifest(index, compacted)
    cleanup_staging(index, version)
    before = sum(b - a for a, b, _ in groups)
    images = sum(compacted.live_in(p) for p in compacted.partitions if any(start <= p.start < stop for start, stop, _ in spans))
    log.info("committed version %d of %s: %d partition(s) compacted into %d (%d live images rewritten)",
             version, index.url, before, sum(n for _, _, n in groups), images)
    return CompactionResult(version, before, images)

"""Compaction: rewrite fragmented partitions so the index stays as small and fast as a fresh build.

Syncs leave two kinds of garbage in a partition: deleted images still in its bucket maps
(tombstoned, filtered out by every query) and delta maps that queries merge with the base.
Partitions that lost most of their images also stay small. A partition is *due* when its
deleted images pass ``max_garbage`` of its live ones or it has more than ``max_deltas``
deltas; runs of adjacent small partitions (under ``merge_below`` of ``partition_size`` live
images each, the last partition excepted while it fills) are merged. Compacting a group of
partitions writes one new partition: a codes array with the rows of deleted ids cleared,
tables without them (cut into shards of about ``shard_size`` images), and base bucket maps
of the live images only. Like Lucene's merges, it is a version of its own.

``patchhash index`` compacts after its commit when a partition is due, rewriting at most
``budget`` of the live images per run (always the most urgent group), so nightly costs stay
flat; ``patchhash compact`` compacts every due group at once (``--all``: every partition
holding any garbage, delta or small neighbour).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from storage import ConfigError, join_url
from storage.atomic import read_json, write_json_atomic
from storage.image_tables import read_tombstones
from storage.layout import partition_codes_path, staging_dir
from storage.manifest import Manifest, MapEntry, PartitionEntry, ShardEntry, commit_manifest
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
    merge_below: float = 0.5
    budget: float = 0.25

    def __post_init__(self) -> None:
        check_options(self)
        if not 0 <= self.merge_below <= 1:
            raise ConfigError(f"--merge-below must be between 0 and 1, got {self.merge_below}")
        if not 0 <= self.budget <= 1:
            raise ConfigError(f"the compaction budget must be between 0 and 1, got {self.budget}")


@dataclass(frozen=True)
class CompactionResult:
    version: int
    partitions: int
    images: int


def _live(manifest: Manifest, p: PartitionEntry) -> int:
    dead = p.tombstones.n_images if p.tombstones else 0
    return sum(s.n_ok for s in manifest.shards_in(p.start, p.stop)) - dead


def _urgency(manifest: Manifest, p: PartitionEntry, policy: CompactionPolicy) -> float:
    """How far past its thresholds a partition is (>= 1: due)."""
    garbage = (p.tombstones.n_images + p.tombstones.n_errors) if p.tombstones else 0
    live = max(1, _live(manifest, p))
    return max(garbage / live / policy.max_garbage if policy.max_garbage else float(garbage > 0),
               len(p.deltas) / policy.max_deltas if policy.max_deltas else float(len(p.deltas) > 0))


def plan_compaction(manifest: Manifest, policy: CompactionPolicy, auto: bool = False, force: bool = False) -> list[tuple[int, int]]:
    """Groups ``(first, last + 1)`` of partition positions to compact, most urgent first.

    ``auto`` keeps within ``policy.budget`` of the live images (always the most urgent group);
    ``force`` takes every partition with any garbage or delta.
    """
    parts = manifest.partitions
    live = [_live(manifest, p) for p in parts]
    small = [i < len(parts) - 1 and live[i] < policy.merge_below * manifest.partition_size for i in range(len(parts))]
    groups: list[tuple[int, int]] = []
    i = 0
    while i < len(parts):
        j = i + 1
        while small[i] and j < len(parts) and small[j] and sum(live[i : j + 1]) <= manifest.partition_size:
            j += 1
        groups.append((i, j))
        i = j

    def needed(group: tuple[int, int]) -> float:
        members = parts[group[0] : group[1]]
        urgency = max(_urgency(manifest, p, policy) for p in members)
        if group[1] - group[0] > 1:
            return max(urgency, 1.0)
        if force and (members[0].deltas or members[0].tombstones):
            return max(urgency, 1.0)
        return urgency

    chosen = sorted((g for g in groups if needed(g) >= 1), key=needed, reverse=True)
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
    return chosen


def compact_job(dask, index_url: str, manifest: Manifest, policy: CompactionPolicy, storage_options, lock,
                auto: bool = False, force: bool = False) -> CompactionResult | None:
    """Compact the groups :func:`plan_compaction` picks and commit them as the next version
    (None when nothing is due). Resumable: each group's result has a done-marker."""
    from workflows.index import cleanup_staging, staging_plan
    from workflows.index_tasks import compact_task

    groups = plan_compaction(manifest, policy, auto=auto, force=force)
    if not groups:
        return None
    version = manifest.version + 1
    parts = manifest.partitions
    spans = [(parts[a].start, parts[b - 1].stop) for a, b in groups]
    plan_doc = {"command": "compact", "version": version, "parent": manifest.version, "groups": [list(s) for s in spans]}
    stage = join_url(index_url, staging_dir(version))
    done = staging_plan(index_url, version, plan_doc, storage_options)
    futures = []
    for (a, b), (start, stop) in zip(groups, spans):
        if f"compact-{start:012d}.done.json" in done:
            continue
        members = parts[a:b]
        dead = np.concatenate([read_tombstones(index_url, p, storage_options) for p in members] or [np.empty(0, np.int64)])
        futures.append(dask.submit(
            compact_task, index_url, [(p.start, p.stop, p.codes) for p in members], list(manifest.shards_in(start, stop)),
            dead, start, stop, partition_codes_path(start, version), manifest.shard_size, manifest.grid, manifest.code_dtype,
            version, storage_options, pure=False,
        ))
    log.info("compacting %d group(s) of partitions of %s: %s", len(groups), index_url,
             ", ".join(f"[{start}, {stop})" for start, stop in spans))
    for future in track(futures, total=len(futures), desc="compact", unit="group"):
        result = future.result()
        write_json_atomic(join_url(stage, "done", f"compact-{result['start']:012d}.done.json"), result, storage_options)
        failpoint("compact-group-done")
    results = {start: read_json(join_url(stage, "done", f"compact-{start:012d}.done.json"), storage_options) for start, _ in spans}
    new_parts, new_shards = list(parts), list(manifest.shards)
    for (a, b), (start, stop) in sorted(zip(groups, spans), reverse=True):
        r = results[start]
        new_parts[a:b] = [PartitionEntry(start, stop, r["codes"], {k: MapEntry(**m) for k, m in r["maps"].items()})]
        inside = [i for i, s in enumerate(new_shards) if s.start >= start and s.stop <= stop]
        new_shards[inside[0] : inside[-1] + 1] = [ShardEntry(**e) for e in r["shards"]]
    compacted = manifest.next(partitions=tuple(new_parts), shards=tuple(new_shards))
    failpoint("compact-before-commit")
    if lock is not None:
        lock.verify()
    commit_manifest(index_url, compacted, storage_options)
    cleanup_staging(index_url, version, storage_options)
    images = sum(_live(compacted, p) for p in compacted.partitions if any(p.start == s for s, _ in spans))
    log.info("committed version %d of %s: %d partition(s) compacted into %d (%d live images rewritten)",
             version, index_url, sum(b - a for a, b in groups), len(groups), images)
    return CompactionResult(version, sum(b - a for a, b in groups), images)

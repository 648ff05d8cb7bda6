"""``patchhash info``: what a model or an index holds, as a dict and as text.

An index whose first build is still running (no committed version yet, its lock held by a
live run) is described by its lock holder and run log instead of failing; a run going on an
index with committed versions is shown on one line (``lock``).
"""

from __future__ import annotations

from typing import Any

from storage.errors import IndexNotFoundError
from storage.layout import MANIFEST, MODEL_DIR
from storage.location import IndexLocation
from storage.manifest import list_versions, read_manifest

__all__ = ["describe_model", "describe_index", "index_errors", "render"]


def describe_model(model: str, storage_options: dict | None = None) -> dict[str, Any]:
    from pipeline.modelcard import read_card, resolve_model_url

    card = read_card(model, storage_options)
    return {"model": resolve_model_url(model), **card.summary()}


def _bucket_summary(manifest) -> dict[str, Any]:
    """Per-layout totals over the partitions' base maps, and each partition's own statistics."""
    from storage.manifest import MAP_LAYOUTS

    out: dict[str, Any] = {}
    for layout in MAP_LAYOUTS:
        maps = [(p, p.maps[layout]) for p in manifest.partitions]
        out[layout] = {
            "partitions": len(maps),
            "distinct_codes_sum": sum(m.stats.get("distinct_codes", 0) for _, m in maps),
            "pairs": sum(m.stats.get("pairs", 0) for _, m in maps),
            "max_density": max((m.stats.get("max_density", 0) for _, m in maps), default=0),
            "deltas": sum(len(p.deltas) for p, _ in maps),
            "per_partition": [{"start": p.start, "stop": p.stop, "deltas": len(p.deltas), **m.stats} for p, m in maps],
        }
    return out


def _running(holder) -> str:
    """One line on the run holding the lock (:func:`storage.lock.lock_status`)."""
    from storage.lock import lock_status

    status = lock_status(holder)
    state = "live" if status["live"] else f"stale: {status['stale_reason']}; the next run takes it over"
    return (f"{status['command']} run {status['run_id']} (host {status['host']}, pid {status['pid']}, "
            f"since {status['since']}, last heartbeat {status['heartbeat_age_s']:.0f} s ago, {state})")


def _first_build(index: IndexLocation, runs: int, missing: IndexNotFoundError) -> dict[str, Any]:
    """An index without a committed version: its first build, if a live run holds the lock;
    otherwise ``missing`` is raised again (an interrupted build, or no index), with what the
    lock says when it is stale."""
    from storage.lock import lock_status, read_lock
    from storage.runlog import read_runs

    holder = read_lock(index)
    if holder is None:
        raise missing
    status = lock_status(holder)
    if not status["live"]:
        raise IndexNotFoundError(f"{missing} The {status['command']} run {status['run_id']} that holds its lock is gone "
                                 f"({status['stale_reason']}): the rerun takes the lock over.") from None
    return {
        "index": index.url,
        "state": f"first build running: no committed version yet; {status['command']} run {status['run_id']} holds the lock",
        "version": None,
        "running": status,
        "runs": read_runs(index, last=runs),
    }


def describe_index(index_url: "str | IndexLocation", storage_options: dict | None = None, runs: int = 5) -> dict[str, Any]:
    """The index's counts, versions, bytes, model and buckets; its current lock holder and last ``runs`` runs.

    An index whose first build is running (no committed version, a live lock) is described by
    ``state``, ``running`` (:func:`storage.lock.lock_status` of the holder: run id, command,
    host, pid, since, last heartbeat, live) and ``runs``, with ``version`` None. Without a
    committed version and a live lock, :class:`~storage.IndexNotFoundError` says what to do.
    On a committed index ``lock`` is one line on the run holding the lock (None when free) and
    ``running`` the same as a mapping.

    ``n_images`` counts the live, searchable images; ``n_unreadable`` the corpus files that
    could not be read (``errors`` lists them, see :func:`index_errors`); ``n_deleted`` the
    images deleted but not yet compacted out of the bucket maps. ``bytes`` are those of the
    objects the current version references, and those ``patchhash gc`` would delete now with
    its defaults.
    """
    from dataclasses import asdict

    from pipeline.modelcard import read_card
    from storage.gc import plan_gc
    from storage.lock import lock_status, read_lock
    from storage.runlog import read_runs
    from workflows.maintenance import GcSettings

    index = IndexLocation.of(index_url, storage_options)
    try:
        manifest = read_manifest(index)
    except IndexNotFoundError as missing:
        if index.exists(MANIFEST):  # a committed index with objects missing: not a first build
            raise
        return _first_build(index, runs, missing)
    holder = read_lock(index)
    card = read_card(index.join(MODEL_DIR), index.storage_options)
    defaults = GcSettings()
    garbage = plan_gc(index, defaults.keep_versions, defaults.min_age)
    return {
        "index": index.url,
        "format_version": manifest.format_version,
        "version": manifest.version,
        # a versions/ file above the manifest's version is a commit cut short between its two writes
        "versions": [v for v in list_versions(index) if v <= manifest.version],
        "created": manifest.created,
        "n_images": manifest.n_ok,
        "n_indexed": manifest.n_ok,
        "n_unreadable": manifest.n_errors,
        "n_errors": manifest.n_errors,
        "n_deleted": manifest.n_deleted,
        "n_ids": manifest.n_images,
        "bytes": {"current_version": garbage.referenced_bytes, "reclaimable_by_gc": garbage.garbage_bytes,
                  "unreferenced_younger_than_min_age": sum(size for _, size in garbage.young)},
        "bits": manifest.bits,
        "grid": list(manifest.grid),
        "code_dtype": manifest.code_dtype,
        "shard_size": manifest.shard_size,
        "partition_size": manifest.partition_size,
        "shards": len(manifest.shards),
        "buckets": _bucket_summary(manifest),
        "sources": [asdict(s) for s in manifest.sources],
        "excluded_uris": manifest.excluded.n if manifest.excluded else 0,
        "model": card.summary(),
        "lock": _running(holder) if holder else None,
        "running": lock_status(holder) if holder else None,
        "runs": read_runs(index, last=runs),
    }


def index_errors(index_url: "str | IndexLocation", storage_options: dict | None = None) -> list[dict[str, Any]]:
    """The live unreadable images of an index: ``image_id``, ``uri``, ``reason``, ``source``."""
    import pyarrow.compute as pc

    from storage.image_tables import read_state

    index = IndexLocation.of(index_url, storage_options)
    state = read_state(index, read_manifest(index))
    errors = state.filter(pc.is_valid(state.column("reason")))
    return errors.select(["image_id", "uri", "reason", "source"]).to_pylist()


def _lines(value: Any, indent: int = 0) -> list[str]:
    pad = "  " * indent
    if isinstance(value, dict):
        out = []
        for key, item in value.items():
            if isinstance(item, dict) and item or isinstance(item, list) and not all(isinstance(v, (int, float, str)) for v in item):
                out.append(f"{pad}{key}:")
                out.extend(_lines(item, indent + 1))
            else:
                out.append(f"{pad}{key}: {item}")
        return out
    if isinstance(value, list):
        out = []
        for item in value:
            sub = _lines(item, indent + 1)
            out.append(f"{pad}- " + sub[0].strip() if sub else f"{pad}-")
            out.extend(sub[1:])
        return out
    return [f"{pad}{value}"]


def render(data: dict[str, Any]) -> str:
    """Indented ``key: value`` text of :func:`describe_model` / :func:`describe_index` output.

    Per-partition statistics are left to ``--json`` when there are many partitions, and the
    running job's details to ``--json`` where ``lock`` says it in one line.
    """
    data = dict(data)
    if data.get("lock"):
        data.pop("running", None)
    elif data.get("running") is None:
        data.pop("running", None)
    if "buckets" in data:
        data["buckets"] = {
            layout: {k: v for k, v in stats.items() if k != "per_partition" or len(v) <= 4}
            for layout, stats in data["buckets"].items()
        }
    return "\n".join(_lines(data))

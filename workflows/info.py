"""``patchhash info``: what a model or an index holds, as a dict and as text."""

from __future__ import annotations

from typing import Any

from storage import join_url
from storage.layout import MODEL_DIR
from storage.manifest import list_versions, read_manifest

__all__ = ["describe_model", "describe_index", "render"]


def describe_model(model: str, storage_options: dict | None = None) -> dict[str, Any]:
    from pipeline.modelcard import read_card, resolve_model_url

    card = read_card(model, storage_options)
    return {"model": resolve_model_url(model), **card.summary()}


def _bucket_summary(partitions) -> dict[str, Any]:
    """Per-kind totals over partitions, and each partition's own statistics."""
    out: dict[str, Any] = {}
    for kind in sorted({p.kind for p in partitions}):
        parts = [p for p in partitions if p.kind == kind]
        out[kind] = {
            "partitions": len(parts),
            "distinct_codes_sum": sum(p.stats.get("distinct_codes", 0) for p in parts),
            "pairs": sum(p.stats.get("pairs", 0) for p in parts),
            "max_density": max((p.stats.get("max_density", 0) for p in parts), default=0),
            "per_partition": [{"start": p.start, "stop": p.stop, **p.stats} for p in parts],
        }
    return out


def describe_index(index_url: str, storage_options: dict | None = None, runs: int = 5) -> dict[str, Any]:
    """The index's versions, counts, model and buckets; its current lock holder and last ``runs`` runs."""
    from pipeline.modelcard import read_card
    from storage.lock import read_lock
    from storage.runlog import read_runs

    manifest = read_manifest(index_url, storage_options)
    holder = read_lock(index_url, storage_options)
    card = read_card(join_url(index_url, MODEL_DIR), storage_options)
    return {
        "index": index_url,
        "version": manifest.version,
        # a versions/ file above the manifest's version is a commit cut short between its two writes
        "versions": [v for v in list_versions(index_url, storage_options) if v <= manifest.version],
        "created": manifest.created,
        "n_images": manifest.n_images,
        "n_indexed": manifest.n_ok,
        "n_errors": manifest.n_errors,
        "bits": manifest.bits,
        "grid": list(manifest.grid),
        "code_dtype": manifest.code_dtype,
        "shard_size": manifest.shard_size,
        "partition_size": manifest.partition_size,
        "shards": len(manifest.shards),
        "buckets": _bucket_summary(manifest.partitions),
        "sources": list(manifest.sources),
        "model": card.summary(),
        "lock": holder.describe() if holder else None,
        "runs": read_runs(index_url, storage_options, last=runs),
    }


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

    Per-partition statistics are left to ``--json`` when there are many partitions.
    """
    data = dict(data)
    if "buckets" in data:
        data["buckets"] = {
            kind: {k: v for k, v in stats.items() if k != "per_partition" or len(v) <= 4}
            for kind, stats in data["buckets"].items()
        }
    return "\n".join(_lines(data))

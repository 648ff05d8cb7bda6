"""Upgrading a format-1 index to format 2, in place (docs/FORMAT.md, "Upgrading").

Format 1 recorded one source entry per run and no per-image source or fingerprint. Image
ids were given out run after run, so the ``n_new`` of each run's entry says which ids it
added: the upgrade writes every table again with its ``source`` column (and a null
``fingerprint``: the first sync takes each file's current one) and returns the format-2
manifest of the next version. Nothing existing is modified; the caller commits it, which
is the atomic step.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage.atomic import read_json
from storage.image_tables import read_shard_tables, write_shard_tables
from storage.layout import version_path
from storage.location import IndexLocation
from storage.manifest import Manifest
from storage.manifest_schema import malformed

__all__ = ["upgraded_manifest"]

log = logging.getLogger(__name__)


def _run_sources(index: IndexLocation, manifest: Manifest) -> np.ndarray:
    """The source id of every image id of a format-1 index, from its runs' ``n_new``."""
    url = index.join(version_path(manifest.version))
    runs = read_json(url, index.storage_options).get("sources") or []
    source_of = np.full(manifest.n_images, -1, np.int32)
    ids = {s.corpus: s.source for s in manifest.sources}
    start = 0
    for run in runs:
        n_new = run.get("n_new")
        if not isinstance(n_new, int) or n_new < 0:
            raise malformed(url, f"a format-1 source entry has no valid n_new ({run!r}); the index cannot be upgraded")
        source_of[start : start + n_new] = ids[str(run.get("corpus", ""))]
        start += n_new
    if start != manifest.n_images:
        log.warning("%s: its runs add up to %d images, not %d; the others belong to no source (syncs leave them alone)",
                    url, start, manifest.n_images)
    return source_of


def upgraded_manifest(index: "IndexLocation | str", manifest: Manifest) -> Manifest:
    """Write the format-2 tables of the format-1 index ``manifest``; return the manifest to commit."""
    index = IndexLocation.of(index)
    if manifest.format_version != 1:
        raise ValueError(f"{index.url} is already format {manifest.format_version}")
    source_of = _run_sources(index, manifest)
    version = manifest.version + 1
    shards = []
    for shard in manifest.shards:
        table = read_shard_tables(index, [shard])
        ids = table.column("image_id").to_numpy()
        table = table.set_column(table.schema.get_field_index("source"), "source", pa.array(source_of[ids], pa.int32()))
        readable = pc.is_null(table.column("reason"))
        shards.append(write_shard_tables(index, shard.start, shard.stop, version, table.filter(readable),
                                         table.filter(pc.invert(readable))))
    log.info("upgraded %s to index format 2 (%d tables rewritten with their source)", index.url, len(shards))
    return manifest.next(shards=tuple(shards))

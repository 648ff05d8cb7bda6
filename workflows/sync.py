"""What a rerun of ``patchhash index`` must change so that the index mirrors its corpus.

The corpus's listing is compared with the live rows the index holds for that source
(:func:`storage.image_tables.read_state`):

* **added**: listed uris the index holds for no source (and that ``patchhash delete`` did
  not exclude) are encoded;
* **removed**: rows of the source whose uri is no longer listed are tombstoned;
* **changed**: rows whose file's fingerprint changed (:mod:`storage.fingerprint`) are
  tombstoned and the file encoded again under a new id;
* **retried**: rows that were unreadable are tombstoned and the file read again.

Rows of other sources are never touched. A plan that would remove more than
``max_delete_fraction`` of the source's live images is refused before anything is written
(:class:`~storage.MassDeletionError`), as rsync's ``--max-delete`` guards a mirror against an
empty or short listing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from storage import Corpus, MassDeletionError
from storage.fingerprint import fingerprint_file, fingerprint_rows, fingerprint_uris
from storage.manifest import Manifest, SourceEntry

__all__ = ["ARRAY_KINDS", "SyncPlan", "find_source", "plan_sync"]

log = logging.getLogger(__name__)

ARRAY_KINDS = ("idx", "npy", "zarr")


@dataclass
class SyncPlan:
    """The changes one run makes for one source.

    ``rows`` are positions in the corpus ``listing`` to encode (ascending), with the fingerprint
    to record for each (``None`` for rows of array corpora: the indexing task hashes the
    pixels it reads). ``dead`` are the ids to tombstone, ``dead_readable`` whether each was a
    readable image. ``adopt_ids`` / ``adopt_fingerprints``: rows indexed without a fingerprint
    (format 1) that take their file's current one.
    """

    source: int
    rows: np.ndarray
    fingerprints: list[str | None]
    listing: list[str] = field(default_factory=list)
    added: int = 0
    changed: int = 0
    retried: int = 0
    removed: int = 0
    dead: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    dead_readable: np.ndarray = field(default_factory=lambda: np.empty(0, bool))
    adopt_ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    adopt_fingerprints: list[str] = field(default_factory=list)
    file_fingerprint: str | None = None

    @property
    def empty(self) -> bool:
        return not (len(self.rows) or len(self.dead) or len(self.adopt_ids))

    def counts(self) -> dict[str, int]:
        return {"added": self.added, "removed": self.removed, "changed": self.changed, "retried": self.retried}


def find_source(manifest: Manifest | None, corpus: Corpus, given: str) -> SourceEntry | None:
    """The source of ``manifest`` that ``given`` (the corpus URL as passed) names, if any."""
    if manifest is None:
        return None
    return next((s for s in manifest.sources if s.matches(given, corpus.url)), None)


def _column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist()


def plan_sync(corpus: Corpus, source: SourceEntry | None, source_id: int, state: pa.Table, excluded: set[str], *,
              spec, append_only: bool = False, max_delete_fraction: float = 0.2) -> SyncPlan:
    """Compare ``corpus`` with the live rows ``state`` of the index; see the module docstring.

    ``source`` is the corpus's existing source (None for a corpus new to the index, which
    gets ``source_id``); ``spec`` is the model's input geometry (array rows are hashed as
    the model reads them).
    """
    uris = corpus.uris()
    first: dict[str, int] = {}
    for row, uri in enumerate(uris):
        first.setdefault(uri, row)
    if len(first) < len(uris):
        log.warning("%s lists %d uris more than once; each is indexed once", corpus.url, len(uris) - len(first))
    ids, s_uris, s_sources, s_fps, s_reasons = (_column(state, n) for n in ("image_id", "uri", "source", "fingerprint", "reason"))
    sid = source.source if source else source_id
    mine = [j for j, s in enumerate(s_sources) if s == sid]
    held = set(s_uris)
    is_array = corpus.kind in ARRAY_KINDS

    file_fp = fingerprint_file(corpus.url, corpus.storage_options) if is_array and corpus.kind != "zarr" else None
    array_unchanged = is_array and source is not None and file_fp is not None and file_fp == source.fingerprint
    listed_present = [j for j in mine if s_uris[j] in first]
    removed = [j for j in mine if s_uris[j] not in first]
    if append_only:
        removed, listed_present = [], []

    # Fingerprints: current ones for every listed uri (compared for rows held, recorded for new).
    if is_array:
        current = [None] * len(uris) if array_unchanged or source is None else fingerprint_rows(corpus, spec)
    else:
        recorded = [None] * len(uris)
        for j in listed_present:
            recorded[first[s_uris[j]]] = s_fps[j]
        current = fingerprint_uris(uris, corpus.storage_options, recorded)

    changed, retried, adopt = [], [], []
    for j in listed_present:
        row = first[s_uris[j]]
        if s_reasons[j] is not None:
            retried.append(j)
        elif array_unchanged:
            continue
        elif s_fps[j] is None:
            if is_array:
                changed.append(j)  # the array file changed and this row was never hashed
            elif current[row] is not None:
                adopt.append((ids[j], current[row]))
        elif current[row] != s_fps[j]:
            changed.append(j)
    added = [row for uri, row in first.items() if uri not in held and uri not in excluded]

    live_images = sum(1 for j in mine if s_reasons[j] is None)
    gone_images = sum(1 for j in removed if s_reasons[j] is None)
    if live_images and gone_images > max_delete_fraction * live_images:
        raise MassDeletionError(
            f"{corpus.url} no longer lists {gone_images} of the {live_images} images the index holds for it "
            f"({gone_images / live_images:.0%}, more than --max-delete-fraction {max_delete_fraction:g}); nothing was changed. "
            "If the listing is short (an outage, a wrong mount or prefix, a permission change), fix it and rerun; "
            "if the deletions are real, rerun with a larger --max-delete-fraction (1 allows any)."
        )
    encode = sorted([*added, *(first[s_uris[j]] for j in changed + retried)])
    dead = [*removed, *changed, *retried]
    order = np.argsort([ids[j] for j in dead], kind="stable")
    return SyncPlan(
        source=sid,
        rows=np.asarray(encode, np.int64),
        fingerprints=[current[row] for row in encode],
        listing=uris,
        added=len(added), changed=len(changed), retried=len(retried), removed=len(removed),
        dead=np.asarray([ids[j] for j in dead], np.int64)[order],
        dead_readable=np.asarray([s_reasons[j] is None for j in dead], bool)[order],
        adopt_ids=np.asarray([i for i, _ in adopt], np.int64),
        adopt_fingerprints=[fp for _, fp in adopt],
        file_fingerprint=file_fp,
    )

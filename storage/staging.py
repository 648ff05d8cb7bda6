"""The staging area of a version being built: its plan and the done-markers of finished work.

A job that builds version ``N`` (``patchhash index``, a compaction) writes its plan to
``_staging/vN/plan.json`` and a done-marker per finished piece of work to
``_staging/vN/done/`` (names: :mod:`storage.layout`). A rerun with the same plan skips the
work whose marker exists; a different plan discards the area. Readers ignore it; the job
removes it after its commit (and gc removes those of committed versions).
"""

from __future__ import annotations

from storage.atomic import read_json, write_json_atomic
from storage.layout import done_dir, done_marker_path, staging_dir, staging_plan_path
from storage.location import IndexLocation
from storage.retry import retry_call

__all__ = ["staging_plan", "write_done_marker", "read_done_marker", "cleanup_staging"]


def staging_plan(index: IndexLocation, version: int, plan_doc: dict) -> set[str]:
    """Done-markers of an earlier attempt at the same plan; a different plan starts afresh."""
    stage = staging_dir(version)
    try:
        previous = read_json(index.join(staging_plan_path(version)), index.storage_options)
    except (FileNotFoundError, ValueError):
        previous = None
    if previous != plan_doc:
        if index.exists(stage):
            retry_call(f"removing {index.join(stage)}", index.fs.rm, index.fs_path(stage), recursive=True)
        write_json_atomic(index.join(staging_plan_path(version)), plan_doc, index.storage_options)
        return set()
    try:
        names = retry_call(f"listing {index.join(done_dir(version))}", index.fs.ls, index.fs_path(done_dir(version)), detail=False)
    except FileNotFoundError:
        return set()
    return {p.rstrip("/").rsplit("/", 1)[-1] for p in names}


def write_done_marker(index: IndexLocation, version: int, marker: str, value: dict) -> None:
    """Record that the work named ``marker`` (:func:`storage.layout.shard_done_marker`...) of ``version`` is done."""
    write_json_atomic(index.join(done_marker_path(version, marker)), value, index.storage_options)


def read_done_marker(index: IndexLocation, version: int, marker: str) -> dict:
    """What :func:`write_done_marker` recorded (``FileNotFoundError`` if the work is not done)."""
    return read_json(index.join(done_marker_path(version, marker)), index.storage_options)


def cleanup_staging(index: IndexLocation, version: int) -> None:
    """Remove the staging area of ``version`` (after its commit)."""
    try:
        index.fs.rm(index.fs_path(staging_dir(version)), recursive=True)
    except FileNotFoundError:
        pass

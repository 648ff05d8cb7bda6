"""The default shard size of a new index: the images per encode task and per Zarr chunk.

A shard is the unit of work of ``patchhash index`` (one encode task reads, decodes and
encodes it) and the chunk of the ``codes/`` array it writes, so its size is fixed when an
index is created (``Manifest.shard_size``) and kept by every later run. A fixed 10,000 made a
corpus of a few thousand photos one task: one worker busy, the others idle, a progress bar
at 0/1. Unless ``--shard-size`` is given, :func:`auto_shard_size` picks it from the run
that creates the index:

* **enough tasks**: about :data:`TASKS_PER_THREAD` tasks per worker thread of the cluster,
  so that every thread has work and the last tasks to finish are short;
* **bounded bytes**: at most about :data:`MAX_TASK_BYTES` of image files per task, where the
  listing tells file sizes (local files: the ``size:`` fingerprint), so that tasks of large
  photos stay short, balanced and resumable, and a task's fetched bytes stay bounded;
* **bounds**: never more than :data:`MAX_SHARD_SIZE` (10,000, the shard size before: big
  corpora of small images are cut as they always were), and no fewer than
  :data:`MIN_SHARD_SIZE` images by the first rule (tiny shards of tiny images cost more in
  task and object overhead than they gain in balance); the byte bound may go below it,
  down to one image per task.

The rule is pure (numbers in, a number out); :mod:`workflows.index` applies it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["MAX_SHARD_SIZE", "MIN_SHARD_SIZE", "TASKS_PER_THREAD", "MAX_TASK_BYTES", "auto_shard_size", "mean_file_bytes"]

MAX_SHARD_SIZE = 10_000
"""The largest automatic shard size (and the fixed default before it adapted)."""

MIN_SHARD_SIZE = 16
"""The smallest shard size the task-count rule chooses (the byte bound may go lower)."""

TASKS_PER_THREAD = 4
"""Encode tasks per worker thread aimed at, when the corpus has enough images."""

MAX_TASK_BYTES = 256 * 2**20
"""Bytes of image files per encode task aimed at, when the listing tells file sizes."""


def auto_shard_size(n_images: int, threads: int, file_bytes: float | None = None) -> int:
    """The shard size of a new index of ``n_images`` built by ``threads`` worker threads.

    Parameters
    ----------
    n_images : int
        Images the run that creates the index encodes.
    threads : int
        Worker threads of the cluster (all workers together); below 1 counts as 1.
    file_bytes : float, optional
        Mean size in bytes of the image files, when known (None: array rows, or a store whose
        listing gives no sizes).

    Returns
    -------
    int
        ``ceil(n_images / (TASKS_PER_THREAD * threads))`` clamped to
        ``[MIN_SHARD_SIZE, MAX_SHARD_SIZE]``, then lowered to ``MAX_TASK_BYTES / file_bytes``
        (at least 1) when ``file_bytes`` is given.

    Examples
    --------
    >>> auto_shard_size(60_000, 2)          # Fashion-MNIST on 2 workers: 8 tasks
    7500
    >>> auto_shard_size(10_000_000, 16)     # big corpora keep the shard size of before
    10000
    >>> auto_shard_size(1_140, 2, 1.4e6)    # 1,140 wallpapers of 1.4 MB on 2 workers
    143
    >>> auto_shard_size(20_000, 2, 5e6)     # 20,000 photos of 5 MB: 256 MiB per task
    53
    """
    by_tasks = math.ceil(max(0, n_images) / (TASKS_PER_THREAD * max(1, threads)))
    size = min(MAX_SHARD_SIZE, max(MIN_SHARD_SIZE, by_tasks))
    if file_bytes is not None and file_bytes > 0:
        size = min(size, max(1, int(MAX_TASK_BYTES // file_bytes)))
    return size


def mean_file_bytes(fingerprints: Iterable[str | None]) -> float | None:
    """The mean file size that fingerprints of the form ``size:<bytes>:mtime:<ns>`` tell
    (:func:`storage.fingerprint.info_fingerprint`: local files, ``memory://``); None when
    none of them tells one (checksums of object stores, content hashes, array rows)."""
    total = count = 0
    for fp in fingerprints:
        if fp and fp.startswith("size:"):
            try:
                total += int(fp.split(":", 2)[1])
            except ValueError:
                continue
            count += 1
    return total / count if count else None

"""Worker-local copies of search partitions, read in place (memory-mapped).

Before its first search of a partition, a worker builds what it searches: the live bucket
map (base merged with deltas, tombstoned ids dropped, 4-byte ids), the partition's codes and,
in the default mode, multi-index tables: seconds per million images of reading compressed
objects, merging and sorting. :class:`PartitionFiles` keeps that result as plain ``.npy``
files in a directory on the worker's machine (``PATCHHASH_LOCAL_DIR``). Every later load, by
this job or the next, by this worker process or another on the machine, memory-maps them
(``numpy.load(mmap_mode="c")``, copy-on-write): nothing is read until a search touches it, and the pages stay
in the machine's page cache across blocks and jobs instead of being loaded again into each
process whenever its cache is full.

A copy is named by a digest of the index's URL, the partition's objects and each object's
identity in storage (size, time and ETag of its metadata file), so an index rebuilt at the
same URL never reuses a stale copy. A copy is written under a temporary name and renamed into
place: readers never see half a copy. The directory is bounded (``PATCHHASH_LOCAL_BYTES``,
default 20 GiB): copies used least recently are removed first (a mapped file stays readable to
the processes that mapped it until they drop it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from storage.environment import env_bytes
from storage.fs import file_identity
from storage.location import IndexLocation

__all__ = ["PartitionFiles", "local_files", "local_budget", "DEFAULT_LOCAL_BYTES"]

log = logging.getLogger(__name__)

DEFAULT_LOCAL_BYTES = 20 * 2**30
_MAP_ARRAYS = ("keys", "offsets", "ids", "key_bounds")
_TABLE_ARRAYS = ("shifts", "widths", "table_bits", "order", "table_keys", "starts", "sizes")
# Folders of multi-index tables are named "mih2-<bits>-<substrings>"; "mih-" ones predate the
# bucket sizes (format 1) and are removed when tables of format 2 are saved beside them.
_TABLES_PREFIX = "mih2-"
_OLD_TABLES_PREFIX = "mih-"
# Copy-on-write mappings: to numba they are plain (writeable) arrays, so the search kernels
# compiled for arrays in memory serve them too; no search writes to them, and a write would
# stay in the process's own memory, never in the file.
_MAPPED = "c"


def local_budget() -> int:
    """Bytes the local copies may take (``PATCHHASH_LOCAL_BYTES``, default 20 GiB)."""
    return env_bytes("PATCHHASH_LOCAL_BYTES", "20GiB", DEFAULT_LOCAL_BYTES)


def local_files() -> "PartitionFiles | None":
    """The local copies of this machine: ``PATCHHASH_LOCAL_DIR``, by default
    ``<temporary directory>/patchhash-partitions-<uid>``; ``off`` keeps none."""
    root = os.environ.get("PATCHHASH_LOCAL_DIR", "")
    if root.lower() in ("off", "none", "0"):
        return None
    return PartitionFiles(Path(root or Path(tempfile.gettempdir(), f"patchhash-partitions-{os.getuid()}")), local_budget())


class PartitionFiles:
    """A directory of partition copies, one sub-directory per partition (see the module docstring).

    Parameters
    ----------
    root : pathlib.Path
        Created on first use.
    budget : int
        Bytes the copies may take in all; the least recently used go first.
    """

    def __init__(self, root: Path, budget: int) -> None:
        self.root = Path(root)
        self.budget = int(budget)

    def folder(self, index: IndexLocation, partition) -> Path | None:
        """Where ``partition``'s copy lives, or None if its objects' identity cannot be read
        (a store that gives neither size nor time: nothing then tells a stale copy apart)."""
        objects = [f"{path}/zarr.json" for path in partition.maps]
        if partition.tombstones:
            objects.append(partition.tombstones)
        identity = [index.url, list(partition.key)]
        for relative in objects:
            try:
                info = index.fs.info(index.fs_path(relative))
            except (FileNotFoundError, OSError):
                return None
            seen = file_identity(info)
            if seen is None:
                return None
            identity.append(seen)
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:32]
        return self.root / digest

    # ------------------------------------------------------------------ bucket maps

    def bucket_map(self, folder: Path, build: Callable):
        """The map copied at ``folder``, memory-mapped; ``build()`` makes it (and it is copied)
        the first time."""
        from pipeline.buckets import BucketMap

        bmap = self._open_map(folder)
        if bmap is not None:
            return bmap
        built = build()
        self._write_folder(folder, {name: getattr(built, name) for name in _MAP_ARRAYS}, {"id_base": built.id_base})
        bmap = self._open_map(folder)
        return bmap if bmap is not None else built  # not kept (no room, or the disk refused): from memory

    def _open_map(self, folder: Path):
        from pipeline.buckets import BucketMap

        try:
            meta = json.loads((folder / "meta.json").read_text())
            arrays = {name: _mapped(folder / f"{name}.npy") for name in _MAP_ARRAYS}
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        os.utime(folder)  # least recently used goes first
        return BucketMap(*(arrays[name] for name in _MAP_ARRAYS), meta["id_base"])

    # ------------------------------------------------------------------ codes

    def codes(self, folder: Path, read: Callable[[], np.ndarray]) -> np.ndarray:
        """The partition's codes, memory-mapped from ``folder``; ``read()`` gives them the first time."""
        path = folder / "codes.npy"
        try:
            return _mapped(path)
        except (FileNotFoundError, ValueError):
            pass
        values = read()
        if folder.is_dir():
            self._write_file(path, values)
            try:
                return _mapped(path)
            except (FileNotFoundError, ValueError):
                pass  # not kept (no room, or the disk refused): from memory
        return values

    # ------------------------------------------------------------------ multi-index tables

    def adopt_tables(self, folder: Path, bmap) -> int:
        """Cache on ``bmap`` the multi-index tables saved in ``folder``; how many sets there were."""
        return sum(self._adopt(tables, bmap) for tables in sorted(folder.glob(f"{_TABLES_PREFIX}*")))

    @staticmethod
    def _adopt(tables: Path, bmap, replace: bool = False) -> bool:
        """Cache on ``bmap`` the tables saved in the folder ``tables``, memory-mapped; whether they were."""
        from pipeline.mih import SearchIndex, adopt_index

        try:
            meta = json.loads((tables / "meta.json").read_text())
            arrays = {name: _mapped(tables / f"{name}.npy") for name in _TABLE_ARRAYS}
            adopt_index(bmap, SearchIndex(meta["bits"], meta["n_keys"], **arrays), replace)
        except (FileNotFoundError, NotADirectoryError, ValueError, KeyError):
            return False
        return True

    def save_tables(self, folder: Path, bmap) -> None:
        """Save the multi-index tables a search built on ``bmap`` that ``folder`` does not hold
        yet, and cache the saved copy (memory-mapped) on ``bmap`` in place of the build."""
        from pipeline.mih import cached_indexes

        for index in cached_indexes(bmap):
            if isinstance(index.order, np.memmap):
                continue
            target = folder / f"{_TABLES_PREFIX}{index.bits}-{index.n_substrings}"
            if not folder.is_dir() or target.exists():
                continue
            for old in folder.glob(f"{_OLD_TABLES_PREFIX}*"):
                shutil.rmtree(old, ignore_errors=True)
            arrays = {name: getattr(index, name) for name in _TABLE_ARRAYS}
            self._write_folder(target, arrays, {"bits": index.bits, "n_keys": index.n_keys})
            # searched from the copy from now on: the build's memory is freed once no search holds it
            self._adopt(target, bmap, replace=True)

    # ------------------------------------------------------------------ writing and eviction

    def _write_folder(self, folder: Path, arrays: dict, meta: dict) -> None:
        """Write ``arrays`` and ``meta.json`` under a temporary name, then rename it ``folder``
        (another process that got there first wins: its copy is the same)."""
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.parent / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            for name, values in arrays.items():
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(values))
            (tmp / "meta.json").write_text(json.dumps(meta))
            os.rename(tmp, folder)
        except OSError as err:
            if not folder.exists():
                log.warning("could not keep a local copy at %s (%s); searching from memory", folder, err)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.evict()

    def _write_file(self, path: Path, values: np.ndarray) -> None:
        tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}.npy")
        try:
            np.save(tmp, np.ascontiguousarray(values))
            os.replace(tmp, path)
        except OSError as err:
            log.warning("could not keep a local copy at %s (%s); searching from memory", path, err)
            tmp.unlink(missing_ok=True)
        self.evict()

    def nbytes(self) -> int:
        """Bytes the copies take now (0 before the first)."""
        return _tree_bytes(self.root)

    def evict(self) -> None:
        """Remove the least recently used copies until the rest fit the budget."""
        try:
            folders = [f for f in self.root.iterdir() if f.is_dir() and not f.name.startswith(".tmp-")]
        except FileNotFoundError:
            return
        sized = []
        for folder in folders:
            try:
                sized.append((folder.stat().st_mtime, folder, _tree_bytes(folder)))
            except FileNotFoundError:
                continue
        total = sum(size for _, _, size in sized)
        for _, folder, size in sorted(sized, key=lambda item: item[0]):
            if total <= self.budget:
                break
            shutil.rmtree(folder, ignore_errors=True)
            total -= size
            log.info("removed the local copy %s (%d bytes) to stay within %d bytes", folder, size, self.budget)


def _mapped(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode=_MAPPED, allow_pickle=False)


def _tree_bytes(root: Path) -> int:
    """Bytes of the files under ``root`` (0 if it does not exist)."""
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())

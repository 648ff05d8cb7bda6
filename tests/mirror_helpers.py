"""A folder of real PNG files that changes like a photo collection, and the check that an index
synced with it answers exactly as a fresh index of the same files (tests of issue 16)."""

from __future__ import annotations

import io
import os
from collections import defaultdict
from pathlib import Path

import fsspec
import numpy as np
import pyarrow.parquet as pq
from hypothesis import strategies as st
from PIL import Image

from workflows.index import IndexSettings, index
from workflows.query import QuerySettings, query


# Shards of 10,000: a small folder indexed with it makes one partition, as the fresh index of
# assert_mirrors (built with the index's shard size) does; the default mode's results depend on
# the partitions, and the default shard size would cut a few dozen images into several.
ONE_PARTITION = IndexSettings(shard_size=10_000)


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


class PhotoFolder:
    """Image files under ``url`` (any fsspec URL) with the changes an operator sees overnight.

    ``pool`` holds the pixels the files are drawn from (uint8 ``[n, 28, 28]``); file ``name``
    holds ``pool[content[name]]`` (None: truncated, half uploaded).
    """

    def __init__(self, url: str, pool: np.ndarray, storage_options=None):
        self.url, self.pool, self.options = url.rstrip("/"), pool, storage_options or {}
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.options)
        self.fs.makedirs(self.root, exist_ok=True)
        self.content: dict[str, int | None] = {}
        self.serial = 0

    def uri(self, name: str) -> str:
        return f"{self.url}/{name}" if "://" in self.url else os.path.join(self.url, name)

    def names(self) -> list[str]:
        return sorted(self.content)

    def write(self, name: str, j: int | None) -> None:
        data = png(self.pool[j]) if j is not None else png(self.pool[0])[:40]
        self.fs.pipe_file(f"{self.root}/{name}", data)
        self.content[name] = j

    def fill(self, n: int) -> None:
        """``img0000.png`` ... holding ``pool[0]`` ... ``pool[n - 1]``."""
        for i in range(n):
            self.write(f"img{i:04d}.png", i)

    def add(self, j: int) -> str:
        self.serial += 1
        name = f"new{self.serial:04d}.png"
        self.write(name, j)
        return name

    def delete(self, name: str) -> None:
        self.fs.rm_file(f"{self.root}/{name}")
        del self.content[name]

    def rename(self, name: str) -> str:
        self.serial += 1
        new = f"moved{self.serial:04d}.png"
        self.fs.mv(f"{self.root}/{name}", f"{self.root}/{new}")
        self.content[new] = self.content.pop(name)
        return new

    def readable(self) -> dict[str, int]:
        """uri -> pool row of every complete file."""
        return {self.uri(n): j for n, j in self.content.items() if j is not None}


# Random changes to a folder: (operation, which file, which pool image).
OPS = st.lists(st.tuples(st.sampled_from(["add", "delete", "overwrite", "rename", "truncate"]),
                         st.integers(0, 10_000), st.integers(40, 199)), min_size=1, max_size=4)


def apply(folder: PhotoFolder, op: tuple[str, int, int]) -> None:
    """One change of :data:`OPS` to ``folder`` (a delete that would empty it adds instead)."""
    kind, pick, j = op
    names = folder.names()
    name = names[pick % len(names)] if names else None
    if kind == "add" or name is None or (kind == "delete" and len(names) < 2):
        folder.add(j)
    elif kind == "delete":
        folder.delete(name)
    elif kind == "overwrite":
        folder.write(name, j)
    elif kind == "rename":
        folder.rename(name)
    else:
        folder.write(name, None)


def results(url: str, storage_options=None, column: str = "image_uri") -> dict[int, list[tuple]]:
    """Query row -> its hits ``(image_uri, score)`` in rank order (``column``: ``image_id`` for ids)."""
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    with fs.open(path, "rb") as f:
        rows = pq.read_table(f).to_pylist()
    out: dict[int, list[tuple]] = defaultdict(list)
    for row in rows:
        if row[column] is not None:
            out[row["query_id"]].append((row[column], row["score"]))
    return dict(out)


def live_codes(index_url: str, storage_options=None) -> tuple[np.ndarray, np.ndarray]:
    """Ids and flattened code grids of the live, readable images of an index's current version."""
    import pyarrow.compute as pc

    from storage.arrays import read_rows
    from storage.image_tables import read_state
    from storage.manifest import read_manifest

    manifest = read_manifest(index_url, storage_options)
    state = read_state(index_url, manifest, storage_options)
    ids = state.filter(pc.is_null(state.column("reason"))).column("image_id").to_numpy()
    rows = {}
    for p in manifest.partitions:
        block = read_rows(f"{index_url}/{p.codes}", p.start, p.stop, storage_options)
        rows.update({int(i): block[i - p.start].reshape(-1) for i in ids[(ids >= p.start) & (ids < p.stop)]})
    return ids, np.array([rows[int(i)] for i in ids])


def query_ids(index_url: str, queries: str, out: str, client, mode: str = "seed", k: int = 10) -> dict[int, list[tuple[int, float]]]:
    """Query row -> its hits ``(image_id, score)`` in rank order."""
    query(index_url, queries, out, QuerySettings(k=k, mode=mode), client=client)
    return results(out, column="image_id")


def assert_same_results(got: dict, want: dict, what: str = "") -> None:
    """Same scores at every rank and the same uris, except that images tied at the last
    score of a list may differ (a tie at the cut is broken by image id, and ids differ)."""
    assert set(got) == set(want), f"{what}: queries answered {sorted(got)} != {sorted(want)}"
    for q in want:
        a, b = got[q], want[q]
        assert [s for _, s in a] == [s for _, s in b], f"{what}: query {q} scores {a} != {b}"
        cut = b[-1][1] if b else None
        for score in {s for _, s in b} - {cut}:
            assert {u for u, s in a if s == score} == {u for u, s in b if s == score}, f"{what}: query {q} at score {score}: {a} != {b}"


def answer(index_url: str, queries: str, out: str, client, mode: str, k: int = 5, storage_options=None) -> dict:
    query(index_url, queries, out, QuerySettings(k=k, mode=mode), client=client, storage_options=storage_options)
    return results(out, storage_options)


def assert_mirrors(index_url: str, folder: PhotoFolder, queries: str, model: str, work: Path, client,
                   modes=("seed", "default"), storage_options=None, settings: IndexSettings | None = None,
                   out: str | None = None) -> None:
    """``index_url`` answers ``queries`` exactly as a fresh index of ``folder``'s files does, in
    every mode. The fresh index (built with ``settings``, else with ``index_url``'s shard size)
    and the results go under ``out`` (a URL), else the folder ``work``."""
    from storage.manifest import read_manifest

    work.mkdir(parents=True, exist_ok=True)
    base = out or str(work)
    fresh = f"{base}/fresh-{len(list(work.iterdir()))}"
    (work / fresh.rsplit("/", 1)[-1]).mkdir(exist_ok=True)
    settings = settings or IndexSettings(shard_size=read_manifest(index_url, storage_options).shard_size)
    index(folder.url, fresh, model, settings, client=client, storage_options=storage_options)
    live = set(folder.readable())
    for mode in modes:
        got = answer(index_url, queries, f"{base}/got-{mode}.parquet", client, mode, storage_options=storage_options)
        want = answer(fresh, queries, f"{base}/want-{mode}.parquet", client, mode, storage_options=storage_options)
        assert sum(map(len, want.values())) >= len(want) >= 1, f"{mode}: the fresh index found nothing to compare"
        returned = {u for hits in got.values() for u, _ in hits}
        assert returned <= live, f"{mode}: returned uris that are not live files: {sorted(returned - live)}"
        assert_same_results(got, want, mode)

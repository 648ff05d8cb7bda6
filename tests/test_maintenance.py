"""Keeping a mirrored index in shape: delete, compaction, garbage collection, the format-1 upgrade,
and every one of them killed at its failpoints then rerun (real processes, real files)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mirror_helpers import PhotoFolder, answer, assert_mirrors, assert_same_results
from snapshots import index_snapshot

from storage.arrays import read_array_group
from storage.gc import index_objects, plan_gc
from storage.layout import FORMAT_VERSION
from storage.manifest import list_versions, read_manifest
from workflows.compact import CompactionPolicy
from workflows.index import IndexSettings, index
from workflows.maintenance import GcSettings, compact, delete, gc, upgrade

CLI = [sys.executable, "-m", "workflows.cli"]
V1_FIXTURE = Path(__file__).parent / "data" / "v1-index"
V1_PHOTOS = Path(__file__).parent / "data" / "v1-photos"


@pytest.fixture(scope="module")
def pool(fmnist_train) -> np.ndarray:
    return fmnist_train[:300, :, :, 0]


@pytest.fixture(scope="module")
def queries(tmp_path_factory, pool) -> str:
    path = tmp_path_factory.mktemp("queries") / "q.npy"
    np.save(path, pool[:30])
    return str(path)


def _churned(tmp_path: Path, pool: np.ndarray, model: str, client, nights: int = 4, **settings) -> tuple[PhotoFolder, str]:
    """An index of 40 files after ``nights`` syncs of adds, deletes and overwrites."""
    folder = PhotoFolder(str(tmp_path / "photos"), pool)
    folder.fill(40)
    url = str(tmp_path / "index")
    index(folder.url, url, model, IndexSettings(shard_size=8, partitions=2), client=client)
    for night in range(nights):
        for name in folder.names()[night * 3 : night * 3 + 2]:
            folder.delete(name)
        folder.write(folder.names()[-1], 100 + night)
        for j in range(3):
            folder.add(150 + 3 * night + j)
        index(folder.url, url, None, IndexSettings(max_delete_fraction=1, **settings), client=client)
    return folder, url


def _live_ids_in_maps(url: str) -> set[int]:
    manifest = read_manifest(url)
    ids = set()
    for p in manifest.partitions:
        for kind in p.maps:
            for path in p.map_paths(kind):
                arrays, attrs = read_array_group(f"{url}/{path}")
                ids.update((arrays["ids"].astype(np.int64) + attrs.get("id_base", 0)).tolist())
    return ids


def _index_size(url: str) -> tuple[int, int]:
    """Objects and bytes the current version references."""
    plan = plan_gc(url, 1, 0)
    objects = index_objects(url)
    garbage = {rel for rel, _ in plan.garbage} | {rel for rel, _ in plan.young}
    kept = {rel: info for rel, info in objects.items() if rel not in garbage and not rel.startswith(("runs/", "versions/"))}
    return len(kept), sum(int(info["size"]) for info in kept.values())


# --------------------------------------------------------------------------- delete


def test_delete_removes_images_and_keeps_them_out_of_syncs(client, tiny_model, pool, queries, tmp_path):
    folder = PhotoFolder(str(tmp_path / "photos"), pool)
    folder.fill(20)
    url = str(tmp_path / "index")
    index(folder.url, url, tiny_model, client=client)
    gone = [folder.uri(n) for n in folder.names()[:3]]
    listing = tmp_path / "takedown.txt"
    listing.write_text("\n".join(gone + [str(tmp_path / "never-indexed.png")]) + "\n")
    out = subprocess.run([*CLI, "delete", "--index", url, "--uris", str(listing)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "deleted 3 images" in out.stdout and "1 uris were not in it" in out.stdout
    hits = answer(url, queries, str(tmp_path / "r.parquet"), client, "seed", k=20)
    assert not {u for rows in hits.values() for u, _ in rows} & set(gone)
    assert read_manifest(url).n_ok == 17
    # the files still exist, but a sync does not add them back...
    assert index(folder.url, url, None, client=client).counts()["added"] == 0
    # ...until the exclusion is lifted
    listing.write_text("\n".join(gone) + "\n")
    delete(url, str(listing), keep_out=False)
    assert index(folder.url, url, None, client=client).counts()["added"] == 3
    assert read_manifest(url).n_ok == 20


# --------------------------------------------------------------------------- compaction


def test_compaction_drops_deleted_images_and_stays_close_to_a_fresh_build(client, tiny_model, pool, queries, tmp_path):
    folder, url = _churned(tmp_path, pool, tiny_model, client, nights=5, compaction=None)
    manifest = read_manifest(url)
    dead = {int(i) for p in manifest.partitions if p.tombstones
            for i in pq.read_table(f"{url}/{p.tombstones.path}").column("image_id").to_pylist()}
    assert manifest.n_deleted and dead & _live_ids_in_maps(url), "the syncs left deleted images in the maps"
    assert any(p.deltas for p in manifest.partitions)
    before = answer(url, queries, str(tmp_path / "before.parquet"), client, "seed", k=10)

    result = compact(url, force=True, client=client)
    assert result is not None and result.partitions >= 1
    compacted = read_manifest(url)
    assert compacted.n_deleted == 0 and not any(p.deltas or p.tombstones for p in compacted.partitions)
    assert not dead & _live_ids_in_maps(url), "compaction drops deleted images from the bucket maps"
    assert_same_results(answer(url, queries, str(tmp_path / "after.parquet"), client, "seed", k=10), before, "compaction")
    assert_mirrors(url, folder, queries, tiny_model, tmp_path / "fresh", client, modes=("seed",),
                   settings=IndexSettings(shard_size=8, partitions=2))

    gc(url, GcSettings(keep_versions=1, min_age=0))
    fresh = str(tmp_path / "fresh-build")
    index(folder.url, fresh, tiny_model, IndexSettings(shard_size=8, partitions=2), client=client)
    (objects, size), (fresh_objects, fresh_size) = _index_size(url), _index_size(fresh)
    assert objects <= 1.5 * fresh_objects and size <= 1.5 * fresh_size, (objects, fresh_objects, size, fresh_size)
    assert compact(url, client=client) is None  # nothing due any more


def test_automatic_compaction_keeps_deltas_and_garbage_bounded(client, tiny_model, pool, tmp_path):
    policy = CompactionPolicy(max_garbage=0.15, max_deltas=2, budget=1.0)
    folder, url = _churned(tmp_path, pool, tiny_model, client, nights=6, compaction=policy)
    manifest = read_manifest(url)
    for p in manifest.partitions:
        live = sum(s.n_ok for s in manifest.shards_in(p.start, p.stop)) - (p.tombstones.n_images if p.tombstones else 0)
        assert len(p.deltas) <= policy.max_deltas
        assert (p.tombstones.n_images if p.tombstones else 0) <= policy.max_garbage * live + 3
    assert manifest.version > 7, "the syncs' compactions are versions of their own"


# --------------------------------------------------------------------------- garbage collection


def test_gc_dry_run_lists_and_gc_deletes_only_what_no_kept_version_uses(client, tiny_model, pool, queries, tmp_path):
    folder, url = _churned(tmp_path, pool, tiny_model, client, nights=3)
    current = read_manifest(url).version
    before = answer(url, queries, str(tmp_path / "before.parquet"), client, "default", k=10)
    def files() -> list[str]:  # every run adds its record to runs/
        return sorted(p.relative_to(url).as_posix() for p in Path(url).rglob("*") if p.is_file() and "runs" not in p.parts)

    before_files = files()

    dry = subprocess.run([*CLI, "gc", "--index", url, "--dry-run", "--min-age", "0", "--keep-versions", "2"],
                         capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr
    assert files() == before_files, "a dry run deletes nothing"
    listed = [line.split()[-1] for line in dry.stdout.splitlines()[:-1]]
    plan = plan_gc(url, 2, 0)
    assert listed and set(listed) == {rel for rel, _ in plan.garbage} | {f"versions/v{v:06d}.json" for v in plan.dropped}
    assert f"{plan.garbage_bytes:,} bytes" in dry.stdout.splitlines()[-1]

    young = gc(url, GcSettings(keep_versions=1, min_age="1h"))  # every version was current within the hour
    assert young.dropped == [] and young.garbage == [] and list_versions(url)[-1] == current

    done = gc(url, GcSettings(keep_versions=2, min_age=0))
    assert set(done.kept) == {current - 1, current} and list_versions(url) == [current - 1, current]
    for version in (current - 1, current):
        read_manifest(url, version=version)  # every object of each kept version is there
    assert_same_results(answer(url, queries, str(tmp_path / "after.parquet"), client, "default", k=10), before, "gc")
    assert plan_gc(url, 2, 0).garbage == [], "a second collection finds nothing"
    info = json.loads(subprocess.run([*CLI, "info", "--index", url, "--json"], capture_output=True, text=True, timeout=300).stdout)
    assert info["versions"] == [current - 1, current] and info["bytes"]["current_version"] > 0


def test_queries_on_an_old_version_keep_working_while_gc_runs(client, tiny_model, pool, queries, tmp_path):
    """A query job that started on version V goes on answering while a sync commits V+1 and gc
    runs with --min-age: V was current within min-age, so none of its objects go."""
    from workflows.query import QuerySettings, query

    folder = PhotoFolder(str(tmp_path / "photos"), pool)
    folder.fill(30)
    url = str(tmp_path / "index")
    index(folder.url, url, tiny_model, client=client)
    old = read_manifest(url).version
    reference = answer(url, queries, str(tmp_path / "ref.parquet"), client, "default", k=5)

    started, release = threading.Event(), threading.Event()

    def slow(block, topk):
        started.set()
        release.wait(60)

    out = str(tmp_path / "during.parquet")
    job = threading.Thread(target=query, args=(url, queries, out, QuerySettings(k=5, block_size=5, max_blocks_in_flight=1)),
                           kwargs={"client": client, "on_block": slow})
    job.start()
    assert started.wait(120)
    for name in folder.names()[:5]:
        folder.delete(name)
    index(folder.url, url, None, IndexSettings(max_delete_fraction=1, compaction=CompactionPolicy(max_garbage=0.01)), client=client)
    assert read_manifest(url).version > old
    plan = gc(url, GcSettings(keep_versions=1, min_age="1h"))
    assert old in plan.kept
    release.set()
    job.join(120)
    from mirror_helpers import results

    assert_same_results(results(out), reference, "query on the old version during gc")


# --------------------------------------------------------------------------- format 1


def _v1_copy(tmp_path: Path, name: str = "v1-index") -> tuple[str, Path]:
    """The committed format-1 fixture (tests/data/README.md), moved: its photos to ``tmp_path``
    (once), the uris it records rewritten to point there."""
    url, photos = tmp_path / name, tmp_path / "photos"
    shutil.copytree(V1_FIXTURE, url)
    if not photos.exists():
        shutil.copytree(V1_PHOTOS, photos)
    for table in list(url.glob("images/*.parquet")) + list(url.glob("errors/*.parquet")):
        t = pq.read_table(table)
        uris = [u.replace("/tmp/v1fix/photos", str(photos)) for u in t.column("uri").to_pylist()]
        pq.write_table(t.set_column(t.schema.get_field_index("uri"), "uri", pa.array(uris, pa.string())), table, compression="zstd")
    for name in ["manifest.json", *(f"versions/{p.name}" for p in (url / "versions").iterdir())]:
        doc = json.loads((url / name).read_text())
        for source in doc["sources"]:
            source["corpus"] = str(photos)
        (url / name).write_text(json.dumps(doc))
    return str(url), photos


def test_format_1_index_is_read_as_before_then_upgraded_in_place(client, pool, queries, tmp_path):
    url, photos = _v1_copy(tmp_path)
    manifest = read_manifest(url)
    assert (manifest.format_version, manifest.version, manifest.n_ok, manifest.n_errors) == (1, 2, 24, 1)
    before = {mode: answer(url, queries, str(tmp_path / f"v1-{mode}.parquet"), client, mode) for mode in ("seed", "default")}
    assert upgrade(url) == 3
    upgraded = read_manifest(url)
    assert (upgraded.format_version, upgraded.n_ok, upgraded.n_errors) == (FORMAT_VERSION, 24, 1)
    assert [(s.source, s.corpus) for s in upgraded.sources] == [(0, str(photos))]
    assert json.loads(Path(url, "versions", "v000002.json").read_text())["format_version"] == 1, "older versions stay as they were"
    for mode in ("seed", "default"):
        assert_same_results(answer(url, queries, str(tmp_path / f"v2-{mode}.parquet"), client, mode), before[mode], mode)
    assert upgrade(url) is None
    # the first sync takes every file's current fingerprint; the next notices an overwrite
    assert index(str(photos), url, None, client=client).counts() == {"added": 0, "removed": 0, "changed": 0, "retried": 1}
    folder = PhotoFolder(str(photos), pool)
    folder.write("img003.png", 200)
    assert index(str(photos), url, None, client=client).counts()["changed"] == 1


def test_first_sync_of_a_format_1_index_upgrades_it(client, queries, tmp_path):
    url, photos = _v1_copy(tmp_path)
    (photos / "broken.png").unlink()
    report = index(str(photos), url, None, client=client)
    assert report.upgraded and report.removed == 1 and read_manifest(url).format_version == FORMAT_VERSION


# --------------------------------------------------------------------------- killed at every failpoint


def _cli(*args: str, failpoint: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PATCHHASH_FAILPOINTS": failpoint}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=300)


def _night(folder: PhotoFolder, night: int) -> None:
    for name in folder.names()[:3]:
        folder.delete(name)
    folder.write(folder.names()[0], 200 + night)
    folder.add(250 + night)
    folder.add(260 + night)


@pytest.mark.parametrize("command, points", [
    ("index", ["index-encoded", "index-partition-built", "index-before-commit", "compact-group-done", "compact-before-commit"]),
    ("compact", ["compact-group-done", "compact-before-commit"]),
    ("gc", ["gc-deleting"]),
    ("upgrade", ["upgrade-before-commit"]),
])
def test_killed_at_each_failpoint_then_rerun_ends_as_an_uninterrupted_run(client, tiny_model, pool, tmp_path, command, points):
    """SIGKILL at each failpoint of a sync (with its compaction), a compaction, a gc and an
    upgrade (the CLI, in a process of its own); every committed version stays readable, and a
    rerun ends where one uninterrupted run (here in-process) ends."""
    sync = IndexSettings(max_delete_fraction=1)
    if command == "upgrade":
        url, photos = _v1_copy(tmp_path)
        reference, _ = _v1_copy(tmp_path, "reference")
        args = ["upgrade", "--index"]
        upgrade(reference)
    else:
        folder = PhotoFolder(str(tmp_path / "photos"), pool)
        folder.fill(24)
        url, reference = str(tmp_path / "index"), str(tmp_path / "reference")
        for target in (url, reference):
            index(folder.url, target, tiny_model, IndexSettings(shard_size=8, partitions=2), client=client)
        _night(folder, 0)
        if command in ("compact", "gc"):
            for target in (url, reference):
                index(folder.url, target, None, IndexSettings(max_delete_fraction=1, compaction=None), client=client)
        args = {"index": ["index", "--corpus", folder.url, "--max-delete-fraction", "1", "--index"],
                "compact": ["compact", "--all", "--workers", "1", "--index"],
                "gc": ["gc", "--min-age", "0", "--index"]}[command]
        {"index": lambda: index(folder.url, reference, None, sync, client=client),
         "compact": lambda: compact(reference, force=True, client=client),
         "gc": lambda: gc(reference, GcSettings(min_age=0))}[command]()
    committed = read_manifest(url).version
    for point in points:
        run = _cli(*args, url, failpoint=point)
        assert run.returncode == -signal.SIGKILL, (point, run.returncode, run.stderr[-2000:])
        for version in list_versions(url):
            if version <= read_manifest(url).version:
                read_manifest(url, version=version)
        assert read_manifest(url).version in (committed, committed + 1)
        if command == "index":  # gc between the kills must not take the work a rerun resumes from
            gc(url, GcSettings(min_age=0))
    final = _cli(*args, url)
    assert final.returncode == 0, final.stderr
    if command == "index":
        for target in (url, reference):
            gc(target, GcSettings(min_age=0))
    assert _content(url) == _content(reference)
    assert list_versions(url) == list_versions(reference)


def _content(url: str) -> dict:
    """:func:`index_snapshot` but for the fingerprints: whether a file was modified too recently
    to trust its mtime (and got a content hash) depends on when the run listed it."""
    snap = index_snapshot(url)
    snap["tables"] = {name: [{k: v for k, v in row.items() if k != "fingerprint"} for row in rows]
                      for name, rows in snap["tables"].items()}
    return snap

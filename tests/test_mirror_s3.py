"""The mirror on S3 (a moto server on 127.0.0.1, through s3fs): corpus and index in a bucket;
syncs, the mass-deletion guard, delete, compaction, gc, and a sync killed then rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid

import fsspec
import numpy as np
import pytest
from corpus_helpers import moto_s3
from hypothesis import HealthCheck, given, settings
from mirror_helpers import ONE_PARTITION, OPS, PhotoFolder, answer, apply, assert_mirrors, assert_same_results

from storage import MassDeletionError
from storage.gc import plan_gc
from storage.manifest import list_versions, read_manifest
from workflows.compact import CompactionPolicy
from workflows.index import IndexSettings, index
from workflows.maintenance import GcSettings, compact, delete, gc

CLI = [sys.executable, "-m", "workflows.cli"]


@pytest.fixture(scope="module")
def s3():
    with moto_s3() as options:
        yield options


@pytest.fixture()
def bucket(s3) -> str:
    name = f"mirror-{uuid.uuid4().hex[:12]}"  # moto's state is per process, shared by every server
    fsspec.filesystem("s3", **s3).mkdir(name)
    return f"s3://{name}"


def test_sync_delete_compact_and_gc_on_s3(client, tiny_model, fmnist_train, s3, bucket, tmp_path):
    pool = fmnist_train[:120, :, :, 0]
    queries = f"{bucket}/q.npy"
    local_queries = tmp_path / "q.npy"
    np.save(local_queries, pool[:30])
    fsspec.filesystem("s3", **s3).put_file(str(local_queries), queries[5:])
    folder = PhotoFolder(f"{bucket}/photos", pool, s3)
    folder.fill(24)
    url = f"{bucket}/index"
    index(folder.url, url, tiny_model, ONE_PARTITION, client=client, storage_options=s3)

    for name in folder.names()[:3]:
        folder.delete(name)
    folder.write(folder.names()[0], 100)
    folder.rename(folder.names()[1])
    folder.add(101)
    folder.write("half.png", None)
    report = index(folder.url, url, None, IndexSettings(compaction=None), client=client, storage_options=s3)
    assert report.counts() == {"added": 3, "removed": 4, "changed": 1, "retried": 0}
    assert_mirrors(url, folder, queries, tiny_model, tmp_path / "fresh", client, storage_options=s3,
                   out=f"{bucket}/results")

    for name in folder.names()[:8]:
        folder.delete(name)
    with pytest.raises(MassDeletionError, match="--max-delete-fraction"):
        index(folder.url, url, None, client=client, storage_options=s3)
    assert index(folder.url, url, None, IndexSettings(max_delete_fraction=1, compaction=None), client=client,
                 storage_options=s3).removed == 8

    takedown = f"{bucket}/takedown.txt"
    fsspec.filesystem("s3", **s3).pipe_file(takedown[5:], (folder.uri(folder.names()[0]) + "\n").encode())
    assert delete(url, takedown, s3).deleted == 1
    before = answer(url, queries, f"{bucket}/before.parquet", client, "seed", storage_options=s3)
    assert compact(url, force=True, client=client, storage_options=s3) is not None
    plan = gc(url, GcSettings(keep_versions=1, min_age=0), s3)
    assert plan.garbage and plan_gc(url, 1, 0, s3).garbage == []
    assert list_versions(url, s3) == [read_manifest(url, s3).version]
    assert_same_results(answer(url, queries, f"{bucket}/after.parquet", client, "seed", storage_options=s3), before, "s3")


def test_sync_killed_on_s3_then_rerun_ends_as_one_run(client, tiny_model, fmnist_train, s3, bucket):
    """A sync of a corpus and index on S3 killed (the CLI, SIGKILL) after encoding and before its
    commit; the rerun ends where one uninterrupted run (in-process) ends."""
    pool = fmnist_train[:80, :, :, 0]
    env = {**os.environ, "PATCHHASH_FAILPOINTS": ""}
    results = {}
    for name in ("killed", "reference"):
        folder = PhotoFolder(f"{bucket}/{name}/photos", pool, s3)
        folder.fill(16)
        url = f"{bucket}/{name}/index"
        index(folder.url, url, tiny_model, IndexSettings(shard_size=4), client=client, storage_options=s3)
        for n in folder.names()[:2]:
            folder.delete(n)
        folder.write(folder.names()[0], 60)
        folder.add(61)
        if name == "killed":
            args = [*CLI, "index", "--corpus", folder.url, "--index", url, "--storage-options", json.dumps(s3)]
            for point in ("index-encoded", "index-before-commit"):
                run = subprocess.run(args, env={**env, "PATCHHASH_FAILPOINTS": point}, capture_output=True, text=True, timeout=300)
                assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
                assert read_manifest(url, s3).version == 1
            final = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
            assert final.returncode == 0, final.stderr
        else:
            index(folder.url, url, None, client=client, storage_options=s3)
        manifest = read_manifest(url, s3)
        results[name] = (manifest.version, manifest.n_ok, manifest.n_deleted, [len(p.deltas) for p in manifest.partitions],
                         [s.n_ok for s in manifest.shards])
    assert results["killed"] == results["reference"]


def test_gc_on_s3_keeps_what_an_old_version_reader_uses_and_dry_run_deletes_nothing(client, tiny_model, fmnist_train, s3, bucket):
    """gc --dry-run on S3 lists and deletes nothing; a query job paused on version V while newer
    versions are committed and gc runs with --min-age 1h finishes with V's results; then a
    collection with --min-age 0 leaves only the current version, which still answers."""
    from mirror_helpers import results
    from workflows.query import QuerySettings, query

    pool = fmnist_train[:80, :, :, 0]
    fs = fsspec.filesystem("s3", **s3)
    folder = PhotoFolder(f"{bucket}/photos", pool, s3)
    folder.fill(30)
    url, queries = f"{bucket}/index", f"{bucket}/q.npy"
    with fs.open(queries[5:], "wb") as f:
        np.save(f, pool[:20])
    index(folder.url, url, tiny_model, client=client, storage_options=s3)
    reference = answer(url, queries, f"{bucket}/ref.parquet", client, "default", storage_options=s3)
    started, release = threading.Event(), threading.Event()

    def slow(block, topk):
        started.set()
        release.wait(60)

    out = f"{bucket}/during.parquet"
    job = threading.Thread(target=query, args=(url, queries, out, QuerySettings(k=5, block_size=5, max_blocks_in_flight=1)),
                           kwargs={"client": client, "on_block": slow, "storage_options": s3})
    job.start()
    assert started.wait(120)
    for name in folder.names()[:5]:
        folder.delete(name)
    index(folder.url, url, None, IndexSettings(max_delete_fraction=1, compaction=CompactionPolicy(max_garbage=0.01)),
          client=client, storage_options=s3)
    def objects() -> set[str]:  # every run adds its record to runs/
        fs.invalidate_cache()
        return {o for o in fs.find(url[5:]) if "/runs/" not in o}

    before = objects()
    dry = gc(url, GcSettings(keep_versions=1, min_age=0, dry_run=True), s3)
    assert dry.garbage and objects() == before, "a dry run deletes nothing"
    kept = gc(url, GcSettings(keep_versions=1, min_age="1h"), s3)
    assert 1 in kept.kept
    release.set()
    job.join(120)
    assert_same_results(results(out, s3), reference, "query on the old version during gc on s3")
    gc(url, GcSettings(keep_versions=1, min_age=0), s3)
    assert list_versions(url, s3) == [read_manifest(url, s3).version]
    assert answer(url, queries, f"{bucket}/after.parquet", client, "default", storage_options=s3)


@pytest.mark.parametrize("command, point", [("compact", "compact-group-done"), ("compact", "compact-before-commit"),
                                            ("gc", "gc-deleting")])
def test_compaction_and_gc_killed_on_s3_then_rerun_end_as_one_run(client, tiny_model, fmnist_train, s3, bucket, command, point):
    pool = fmnist_train[:80, :, :, 0]
    env = {**os.environ, "PATCHHASH_FAILPOINTS": ""}
    contents = {}
    for name in ("killed", "reference"):
        folder = PhotoFolder(f"{bucket}/{name}/photos", pool, s3)
        folder.fill(16)
        url = f"{bucket}/{name}/index"
        index(folder.url, url, tiny_model, IndexSettings(shard_size=4, partitions=2), client=client, storage_options=s3)
        for n in folder.names()[:4]:
            folder.delete(n)
        index(folder.url, url, None, IndexSettings(max_delete_fraction=1, compaction=None), client=client, storage_options=s3)
        if name == "killed":
            args = [*CLI, command, "--index", url, "--storage-options", json.dumps(s3)]
            args += ["--all", "--workers", "1"] if command == "compact" else ["--min-age", "0"]
            run = subprocess.run(args, env={**env, "PATCHHASH_FAILPOINTS": point}, capture_output=True, text=True, timeout=300)
            assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
            for version in list_versions(url, s3):
                if version <= read_manifest(url, s3).version:
                    read_manifest(url, s3, version=version)  # every committed version still whole
            final = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
            assert final.returncode == 0, final.stderr
        elif command == "compact":
            compact(url, force=True, client=client, storage_options=s3)
        else:
            gc(url, GcSettings(min_age=0), s3)
        manifest = read_manifest(url, s3)
        contents[name] = ([(p.start, p.stop, len(p.deltas), p.tombstones is None) for p in manifest.partitions],
                          [(s.start, s.stop, s.n_ok) for s in manifest.shards], list_versions(url, s3))
    assert contents["killed"] == contents["reference"]


@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_any_sequence_of_changes_on_s3_answers_as_a_fresh_index(client, tiny_model, fmnist_train, s3, ops, tmp_path_factory):
    """The property test of tests/test_sync.py with corpus, index and results on S3 (2 examples: that test tries 6
    locally; this one adds the transport)."""
    name = f"prop-{uuid.uuid4().hex[:12]}"
    fs = fsspec.filesystem("s3", **s3)
    fs.mkdir(name)
    bucket, pool = f"s3://{name}", fmnist_train[:200, :, :, 0]
    queries = f"{bucket}/q.npy"
    with fs.open(queries[5:], "wb") as f:
        np.save(f, pool[:40])
    folder = PhotoFolder(f"{bucket}/photos", pool, s3)
    folder.fill(20)
    url = f"{bucket}/index"
    index(folder.url, url, tiny_model, ONE_PARTITION, client=client, storage_options=s3)
    work = tmp_path_factory.mktemp("s3prop")
    for step, op in enumerate(ops):
        apply(folder, op)
        index(folder.url, url, None, IndexSettings(max_delete_fraction=1), client=client, storage_options=s3)
        assert_mirrors(url, folder, queries, tiny_model, work / f"step{step}", client, storage_options=s3,
                       out=f"{bucket}/step{step}")

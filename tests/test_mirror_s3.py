"""The mirror on S3 (a moto server on 127.0.0.1, through s3fs): corpus and index in a bucket;
syncs, the mass-deletion guard, delete, compaction, gc, and a sync killed then rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import fsspec
import numpy as np
import pytest
from corpus_helpers import moto_s3
from mirror_helpers import PhotoFolder, answer, assert_mirrors, assert_same_results

from storage import MassDeletionError
from storage.gc import plan_gc
from storage.manifest import list_versions, read_manifest
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
    for i in range(24):
        folder.write(f"img{i:04d}.png", i)
    url = f"{bucket}/index"
    index(folder.url, url, tiny_model, client=client, storage_options=s3)

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


def test_sync_killed_on_s3_then_rerun_ends_as_one_run(tiny_model, fmnist_train, s3, bucket):
    pool = fmnist_train[:80, :, :, 0]
    env = {**os.environ, "PATCHHASH_FAILPOINTS": ""}
    options = json.dumps(s3)
    results = {}
    for name in ("killed", "reference"):
        folder = PhotoFolder(f"{bucket}/{name}/photos", pool, s3)
        for i in range(16):
            folder.write(f"img{i:04d}.png", i)
        url = f"{bucket}/{name}/index"
        args = [*CLI, "index", "--corpus", folder.url, "--index", url, "--workers", "1", "--shard-size", "4",
                "--storage-options", options]
        assert subprocess.run([*args, "--model", tiny_model], env=env, capture_output=True, timeout=300).returncode == 0
        for n in folder.names()[:2]:
            folder.delete(n)
        folder.write(folder.names()[0], 60)
        folder.add(61)
        if name == "killed":
            for point in ("index-encoded", "index-before-commit"):
                run = subprocess.run(args, env={**env, "PATCHHASH_FAILPOINTS": point}, capture_output=True, text=True, timeout=300)
                assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
                assert read_manifest(url, s3).version == 1
        final = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert final.returncode == 0, final.stderr
        manifest = read_manifest(url, s3)
        results[name] = (manifest.version, manifest.n_ok, manifest.n_deleted, [len(p.deltas) for p in manifest.partitions])
    assert results["killed"] == results["reference"]

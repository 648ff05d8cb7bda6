"""The bulk indexing job: codes, image tables, bucket maps, resume, append, model binding."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from PIL import Image
from reference import brute_force_buckets
from snapshots import index_snapshot as _snapshot

from storage import CorpusError, IndexNotFoundError, ModelMismatchError, join_url
from storage.arrays import read_array_group
from storage.image_tables import read_image_uris
from storage.manifest import read_manifest
from workflows import index as index_module
from workflows.cluster import ClusterSettings
from workflows.index import IndexSettings, index


@pytest.fixture(scope="module")
def corpus_npy(tmp_path_factory, fmnist_train) -> str:
    path = tmp_path_factory.mktemp("corpus") / "images.npy"
    np.save(path, fmnist_train[:700, :, :, 0])
    return str(path)


def _encode_directly(model: str, images: np.ndarray) -> np.ndarray:
    from pipeline.encode import load_encoder

    return load_encoder(model).encode(images)


def _brute_force(codes: np.ndarray, ids: np.ndarray, positional: bool) -> dict:
    return brute_force_buckets(codes[ids].reshape(len(ids), -1), ids, positional)


def _maps_from_index(index_url: str, kind: str, storage_options=None) -> dict:
    manifest = read_manifest(index_url, storage_options)
    table: dict = defaultdict(set)
    for part in manifest.partitions:  # each partition's base map and its deltas
        for entry in (part.maps[kind], *(d.maps[kind] for d in part.deltas)):
            arrays, attrs = read_array_group(join_url(index_url, entry.path), storage_options)
            assert attrs["stats"] == entry.stats
            keys, offsets, ids, bounds = arrays["keys"], arrays["offsets"], arrays["ids"], arrays["key_bounds"]
            for block in range(len(bounds) - 1):
                for i in range(bounds[block], bounds[block + 1]):
                    bucket = ids[offsets[i] : offsets[i + 1]].astype(np.int64) + attrs["id_base"]
                    assert np.all(np.diff(bucket) > 0), "bucket ids must be sorted and unique"
                    assert np.all((bucket >= part.start) & (bucket < part.stop))
                    table[(block, int(keys[i])) if kind == "pos" else int(keys[i])].update(bucket.tolist())
    return {k: sorted(v) for k, v in table.items()}


@pytest.mark.parametrize("shard_size, partitions", [(128, 1), (100, 3), (700, 2), (64, 7)])
def test_codes_and_bucket_maps_are_exact(client, tiny_model, corpus_npy, fmnist_train, tmp_path, shard_size, partitions):
    url = str(tmp_path / "idx")
    report = index(corpus_npy, url, tiny_model, IndexSettings(shard_size=shard_size, partitions=partitions), client=client)
    assert report.version == 1 and report.n_new == 700 and report.n_errors_new == 0
    codes = zarr.open_array(f"{url}/codes", mode="r")
    assert codes.shape == (700, 7, 7) and codes.dtype == np.uint32 and codes.chunks[0] == shard_size
    expected = _encode_directly(tiny_model, fmnist_train[:700])
    np.testing.assert_array_equal(codes[:], expected)  # bit for bit
    ids = np.arange(700)
    for kind, positional in (("any", False), ("pos", True)):
        assert _maps_from_index(url, kind) == _brute_force(expected, ids, positional)
    manifest = read_manifest(url)
    # partitions are whole shards, so the count can come out below the one asked for
    assert manifest.partition_size % shard_size == 0
    assert len(manifest.partitions) == -(-700 // manifest.partition_size) <= partitions
    table = pq.read_table(f"{url}/{manifest.shards[0].images}").to_pydict()
    assert table["image_id"][:3] == [0, 1, 2] and table["uri"][0] == f"{corpus_npy}#0"


def test_in_process_and_two_process_clusters_build_identical_indexes(client, tiny_model, corpus_npy, tmp_path):
    a, b = str(tmp_path / "threads"), str(tmp_path / "procs")
    settings = IndexSettings(shard_size=128, partitions=3)
    index(corpus_npy, a, tiny_model, settings, client=client)
    index(corpus_npy, b, tiny_model, settings, ClusterSettings(workers=2, threads_per_worker=1, processes=True))
    assert _snapshot(a) == _snapshot(b)


def test_rerun_is_a_quick_no_op(client, tiny_model, corpus_npy, tmp_path):
    url = str(tmp_path / "idx")
    index(corpus_npy, url, tiny_model, IndexSettings(shard_size=200), client=client)
    before = _snapshot(url)
    started = time.perf_counter()
    report = index(corpus_npy, url, None, client=client)
    assert report.n_new == 0 and report.version == 1
    assert time.perf_counter() - started < 5
    assert _snapshot(url) == before


def test_append_adds_only_new_images_and_updates_buckets(client, tiny_model, fmnist_train, tmp_path):
    first, second = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(first, fmnist_train[:250, :, :, 0])
    np.save(second, fmnist_train[250:600, :, :, 0])
    url = str(tmp_path / "idx")
    index(str(first), url, tiny_model, IndexSettings(shard_size=100, partitions=2), client=client)
    v1 = read_manifest(url)
    report = index(str(second), url, tiny_model, client=client)
    assert (report.version, report.n_new, report.n_images) == (2, 350, 600)
    v2 = read_manifest(url)
    assert v2.parent == 1 and [s.corpus for s in v2.sources] == [str(first), str(second)]
    # the first new shard completes the partial chunk [200, 300); then whole chunks
    assert [(s.start, s.stop) for s in v2.shards] == [(0, 100), (100, 200), (200, 250), (250, 300), (300, 400), (400, 500), (500, 600)]
    expected = _encode_directly(tiny_model, fmnist_train[:600])
    np.testing.assert_array_equal(zarr.open_array(f"{url}/codes", mode="r")[:], expected)
    for kind, positional in (("any", False), ("pos", True)):
        assert _maps_from_index(url, kind) == _brute_force(expected, np.arange(600), positional)
    # partitions of [0, 200) were not touched by the append and are reused as they are
    reused = [p for p in v2.partitions if p.stop <= 200]
    assert reused and all(p in v1.partitions for p in reused)
    # version 1 stays readable and unchanged
    assert read_manifest(url, version=1).n_images == 250
    # appending the same files again is a no-op
    assert index(str(second), url, None, client=client).n_new == 0


def test_append_of_new_files_in_a_folder(client, tiny_model, fmnist_train, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in (0, 2, 4):
        Image.fromarray(fmnist_train[i, :, :, 0]).save(folder / f"{i:03d}.png")
    url = str(tmp_path / "idx")
    index(str(folder), url, tiny_model, IndexSettings(shard_size=2), client=client)
    for i in (1, 3, 5):  # new files sort between the old ones
        Image.fromarray(fmnist_train[i, :, :, 0]).save(folder / f"{i:03d}.png")
    report = index(str(folder), url, None, client=client)
    assert report.n_new == 3
    uris = {}
    for shard in read_manifest(url).shards:
        t = pq.read_table(f"{url}/{shard.images}").to_pydict()
        uris.update(zip(t["image_id"], t["uri"]))
    assert [os.path.basename(uris[i]) for i in range(6)] == ["000.png", "002.png", "004.png", "001.png", "003.png", "005.png"]
    codes = zarr.open_array(f"{url}/codes", mode="r")[:]
    np.testing.assert_array_equal(codes, _encode_directly(tiny_model, fmnist_train[[0, 2, 4, 1, 3, 5]]))


def test_index_refuses_another_model(client, tiny_model, corpus_npy, tmp_path):
    url = str(tmp_path / "idx")
    index(corpus_npy, url, tiny_model, IndexSettings(shard_size=350), client=client)
    with pytest.raises(ModelMismatchError, match="was built with model 'tiny'"):
        index(corpus_npy, url, "fashion-mnist", client=client)


def test_a_card_with_other_input_rules_and_the_same_weights(client, tiny_model, corpus_npy, tmp_path, caplog):
    """A card changed since the index was built (the same weights, other input rules): extending
    the index with it keeps the index's own card, and says so; an uncommitted attempt's card is
    replaced by the new one."""
    import json
    import logging
    import shutil

    from pipeline.modelcard import read_card
    from workflows.index import install_model

    changed = tmp_path / "changed"
    shutil.copytree(tiny_model, changed)
    card = json.loads((changed / "card.json").read_text())
    card["input"] = {"background": "black", "centre": "mass", "levels": "stretch"}
    (changed / "card.json").write_text(json.dumps(card))
    url = str(tmp_path / "idx")
    index(corpus_npy, url, tiny_model, IndexSettings(shard_size=350), client=client)
    with caplog.at_level(logging.WARNING, logger="workflows.index"):
        index(corpus_npy, url, str(changed), client=client)
    assert "keeps the input rules it was built with" in caplog.text and "'levels': 'stretch'" in caplog.text
    assert read_card(join_url(url, "model")).input_rules == read_card(tiny_model).input_rules
    install_model(str(tmp_path / "attempt"), tiny_model)  # an attempt left uncommitted, then retried with the new card
    install_model(str(tmp_path / "attempt"), str(changed))
    assert read_card(join_url(str(tmp_path / "attempt"), "model")).input_rules.levels == "stretch"


def test_a_new_index_without_a_model_gets_the_one_for_its_kind_of_corpus(client, fmnist_train, tmp_path):
    """Arrays (the Fashion-MNIST demo's kind) get ``fashion-mnist``; image files get
    ``icons-photos`` (docs/MODEL.md says why); a later run without ``--model`` keeps the index's."""
    from pipeline.modelcard import read_card

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(fmnist_train[i, :, :, 0]).save(folder / f"{i}.png")
    np.save(tmp_path / "images.npy", fmnist_train[:3, :, :, 0])
    for corpus, expected in ((str(tmp_path / "images.npy"), "fashion-mnist"), (str(folder), "icons-photos")):
        url = str(tmp_path / f"idx-{expected}")
        index(corpus, url, None, IndexSettings(shard_size=2), client=client)
        assert read_card(join_url(url, "model")).name == expected
    Image.fromarray(fmnist_train[3, :, :, 0]).save(folder / "3.png")
    assert index(str(folder), str(tmp_path / "idx-icons-photos"), None, client=client).n_new == 1


def test_unreadable_images_are_recorded_and_strict_fails_before_commit(client, tiny_model, fmnist_train, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(fmnist_train[i, :, :, 0]).save(folder / f"{i}.png")
    (folder / "2.png").write_bytes(b"not a png")
    (folder / "9.jpg").write_bytes(b"")
    strict_url = str(tmp_path / "strict")
    with pytest.raises(CorpusError, match="--strict"):
        index(str(folder), strict_url, tiny_model, IndexSettings(shard_size=4, strict=True), client=client)
    with pytest.raises(IndexNotFoundError):
        read_manifest(strict_url)
    url = str(tmp_path / "idx")
    report = index(str(folder), url, tiny_model, IndexSettings(shard_size=4), client=client)
    assert (report.n_new, report.n_errors_new) == (6, 2)
    manifest = read_manifest(url)
    assert (manifest.n_ok, manifest.n_errors) == (4, 2)
    errors = {}
    for shard in manifest.shards:
        if shard.errors:
            t = pq.read_table(f"{url}/{shard.errors}").to_pydict()
            errors.update(zip(t["uri"], t["reason"]))
    assert sorted(os.path.basename(u) for u in errors) == ["2.png", "9.jpg"]
    assert all(errors.values())
    uris = read_image_uris(url, manifest)  # what a query job writes beside its hits: none for unreadable ids
    assert (len(uris), len(uris.chunks)) == (6, 2)
    got = uris.take(np.array([5, 0, 2, 4, 1, 3, 0])).to_pylist()
    assert [u and os.path.basename(u) for u in got] == [None, "0.png", None, "4.png", "1.png", "3.png", "0.png"]
    any_ids = set(_maps_from_index(url, "any").values().__iter__().__next__())
    assert 2 not in {i for v in _maps_from_index(url, "any").values() for i in v} and any_ids


def test_memory_index_with_in_process_cluster(client, tiny_model, fmnist_train):
    src = "memory://patchhash-test/corpus.npy"
    fs = fsspec.filesystem("memory")
    with fs.open("/patchhash-test/corpus.npy", "wb") as f:
        np.save(f, fmnist_train[:300, :, :, 0])
    url = "memory://patchhash-test/idx"
    try:
        report = index(src, url, tiny_model, IndexSettings(shard_size=128), client=client)
        assert report.n_new == 300
        codes = zarr.open_array(url + "/codes", mode="r")
        np.testing.assert_array_equal(codes[:], _encode_directly(tiny_model, fmnist_train[:300]))
        assert _maps_from_index(url, "any") == _brute_force(codes[:], np.arange(300), False)
    finally:
        fs.rm("/patchhash-test", recursive=True)


def fail_encoding_from(monkeypatch, first_id: int):
    """Make the encode tasks of shards starting at ``first_id`` or above fail; returns the
    real task, to put back with ``monkeypatch.setattr``."""
    real_task = index_module.encode_shard_task

    def flaky(index_url, codes, shard, id_start, *rest):
        if id_start >= first_id:
            raise RuntimeError("injected worker failure")
        return real_task(index_url, codes, shard, id_start, *rest)

    monkeypatch.setattr(index_module, "encode_shard_task", flaky)
    return real_task


def test_failed_run_resumes_and_ends_identical(client, tiny_model, corpus_npy, tmp_path, monkeypatch):
    settings = IndexSettings(shard_size=100, partitions=2)
    reference = str(tmp_path / "reference")
    index(corpus_npy, reference, tiny_model, settings, client=client)

    url = str(tmp_path / "idx")
    real_task = fail_encoding_from(monkeypatch, 400)
    with pytest.raises(RuntimeError, match="injected"):
        index(corpus_npy, url, tiny_model, settings, client=client)
    with pytest.raises(IndexNotFoundError):
        read_manifest(url)  # nothing committed
    monkeypatch.setattr(index_module, "encode_shard_task", real_task)
    report = index(corpus_npy, url, tiny_model, settings, client=client)
    assert report.shards_skipped >= 1 and report.shards_skipped + report.shards_done == 7
    assert _snapshot(url) == _snapshot(reference)


def test_sigkilled_cli_run_resumes_and_ends_identical(make_index, tiny_model, fmnist_train, tmp_path):
    corpus, reference = make_index(fmnist_train[:3000], shard_size=100, partitions=2)  # an uninterrupted run
    args = [sys.executable, "-m", "workflows.cli", "index", "--corpus", corpus, "--model", tiny_model,
            "--shard-size", "100", "--partitions", "2"]

    url = str(tmp_path / "idx")
    proc = subprocess.Popen([*args, "--index", url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    done_dir = tmp_path / "idx" / "_staging" / "v000001" / "done"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (done_dir.exists() and len(os.listdir(done_dir)) >= 3):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert done_dir.exists() and not (tmp_path / "idx" / "manifest.json").exists(), "the run should have been killed mid-way"
    result = subprocess.run([*args, "--index", url], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stderr
    assert _snapshot(url) == _snapshot(reference)


# --------------------------------------------------------------------------- the default shard size (issue 18)


@pytest.mark.parametrize("n_images, threads, file_bytes, expected", [
    (60_000, 2, None, 7_500),            # Fashion-MNIST on 2 workers: 4 tasks per thread
    (1_000_000, 2, None, 10_000),        # big corpora of small images: cut as before
    (10_000_000, 64, 800, 10_000),
    (2_281, 2, None, 286),               # the 2,281 images: 8 tasks, not 1
    (2_281, 2, 1.4e6, 191),              # ... of 1.4 MB each: 12 tasks of ~256 MiB
    (1_140, 2, 1.4e6, 143),
    (20_000, 2, 5e6, 53),                # large photos: ~256 MiB of files per task
    (48, 2, None, 16),                   # a few dozen images: 3 tasks of the smallest size
    (5, 8, None, 16),                    # fewer images than the smallest shard: one task
    (100, 2, 300e6, 1),                  # files over 256 MiB: one per task
    (0, 0, 0.0, 16),
])
def test_auto_shard_size_rule(n_images, threads, file_bytes, expected):
    from workflows.sharding import MAX_SHARD_SIZE, MAX_TASK_BYTES, MIN_SHARD_SIZE, auto_shard_size

    size = auto_shard_size(n_images, threads, file_bytes)
    assert size == expected
    assert 1 <= size <= MAX_SHARD_SIZE
    if file_bytes:
        assert size == 1 or size * file_bytes <= MAX_TASK_BYTES
    if size >= MIN_SHARD_SIZE and n_images >= 4 * threads * MIN_SHARD_SIZE and size < MAX_SHARD_SIZE:
        assert -(-n_images // size) >= 4 * threads  # enough tasks for every thread


def test_mean_file_bytes_reads_size_fingerprints():
    from storage.fingerprint import info_fingerprint
    from workflows.sharding import mean_file_bytes

    old = {"size": 3_000_000, "mtime": 1.7e9}
    assert mean_file_bytes([info_fingerprint(old), "size:1000000:mtime:5", None]) == 2e6
    assert mean_file_bytes(["etag:abc", "sha256:00", None]) is None  # object stores' checksums, content hashes, array rows
    assert mean_file_bytes([]) is None


def test_default_shard_size_splits_a_small_folder_for_every_worker(client, tiny_model, fmnist_train, tmp_path, monkeypatch):
    from mirror_helpers import PhotoFolder

    folder = PhotoFolder(str(tmp_path / "photos"), fmnist_train[:60, :, :, 0])
    for i in range(48):
        folder.write(f"img{i:04d}.png", i)
    totals = []
    real_track = index_module.track

    def counted(futures, total, desc, unit):
        totals.append((desc, total))
        return real_track(futures, total, desc, unit)

    monkeypatch.setattr(index_module, "track", counted)
    url = str(tmp_path / "idx")
    report = index(folder.url, url, tiny_model, client=client)  # 2 workers x 1 thread, no --shard-size
    manifest = read_manifest(url)
    assert manifest.shard_size == 16 and report.shards_done == 3 == len(manifest.shards)
    assert ("encode", 3) in totals
    assert zarr.open_array(f"{url}/codes", mode="r").chunks[0] == 16
    # later runs keep the index's shard size, whatever the default would choose now
    for i in range(48, 60):
        folder.write(f"img{i:04d}.png", i)
    report = index(folder.url, url, None, client=client)
    assert report.n_new == 12 and read_manifest(url).shard_size == 16
    assert [(s.start, s.stop) for s in read_manifest(url).shards][-2:] == [(32, 48), (48, 60)]


def test_interrupted_run_keeps_its_chosen_shard_size_when_resumed(client, tiny_model, fmnist_train, tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(64):
        Image.fromarray(fmnist_train[i, :, :, 0]).save(folder / f"{i:03d}.png")
    url = str(tmp_path / "idx")
    real_task = fail_encoding_from(monkeypatch, 32)
    with pytest.raises(RuntimeError, match="injected"):
        index(str(folder), url, tiny_model, client=client)
    monkeypatch.setattr(index_module, "encode_shard_task", real_task)
    # the rerun sees a cluster of another size: the default would now choose another shard size
    monkeypatch.setattr(index_module, "auto_shard_size", lambda *args: 8)
    report = index(str(folder), url, tiny_model, client=client)
    assert read_manifest(url).shard_size == 16 and report.shards_skipped >= 1
    assert report.shards_skipped + report.shards_done == 4
    # a new index of the same files takes the (patched) default
    assert index(str(folder), str(tmp_path / "other"), tiny_model, client=client).shards_done == 8

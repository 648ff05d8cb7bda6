"""An index that mirrors a changing corpus: rerunning `patchhash index` adds, removes, re-encodes
changed files and retries unreadable ones, and answers as a fresh index of the live files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from mirror_helpers import ONE_PARTITION, OPS, PhotoFolder, answer, apply, assert_mirrors, live_codes, query_ids
from reference import reference_seed_search

from storage import MassDeletionError
from storage.manifest import list_versions, read_manifest
from storage.layout import FORMAT_VERSION
from storage.runlog import read_runs
from workflows.index import IndexSettings, index

CLI = [sys.executable, "-m", "workflows.cli"]


@pytest.fixture(scope="module")
def pool(fmnist_train) -> np.ndarray:
    return fmnist_train[:200, :, :, 0]


@pytest.fixture(scope="module")
def queries(tmp_path_factory, pool) -> str:
    path = tmp_path_factory.mktemp("queries") / "q.npy"
    np.save(path, pool[:40])
    return str(path)


def _folder(tmp_path: Path, pool: np.ndarray, n: int) -> PhotoFolder:
    folder = PhotoFolder(str(tmp_path / "photos"), pool)
    folder.fill(n)
    return folder


def test_operator_night_adds_removes_reencodes_renames_and_retries(client, tiny_model, pool, queries, tmp_path):
    """The night of the issue, scaled down: 60 files; then 12 added, 6 deleted, 4 overwritten, 3
    renamed and 1 half-uploaded; the same command rerun, then once more when the upload is complete."""
    folder = _folder(tmp_path, pool, 60)
    url = str(tmp_path / "index")
    first = index(folder.url, url, tiny_model, ONE_PARTITION, client=client)
    assert (first.version, first.added, first.n_images) == (1, 60, 60)

    for j in range(60, 72):
        folder.add(j)
    deleted = [folder.uri(n) for n in folder.names()[:6]]
    for name in folder.names()[:6]:
        folder.delete(name)
    overwritten = folder.names()[:4]
    for k, name in enumerate(overwritten):
        folder.write(name, 100 + k)
    renamed_from = [folder.uri(n) for n in folder.names()[10:13]]
    renamed_rows = [folder.content[n] for n in folder.names()[10:13]]
    renamed_to = [folder.uri(folder.rename(n)) for n in folder.names()[10:13]]
    folder.write("uploading.png", None)

    night = index(folder.url, url, None, IndexSettings(compaction=None), client=client)
    assert night.counts() == {"added": 12 + 3 + 1, "removed": 6 + 3, "changed": 4, "retried": 0}
    assert (night.n_errors_new, night.n_images) == (1, 60 + 12 - 6)
    manifest = read_manifest(url)
    assert manifest.n_deleted == 6 + 3 + 4 and manifest.n_errors == 1
    record = read_runs(url, last=1)[0]
    assert (record["added"], record["removed"], record["changed"], record["retried"], record["status"]) == (16, 9, 4, 0, "ok")

    # seed mode is exactly seed 000's rule over the live images (ids and scores, ties by id)
    ids, codes = live_codes(url)
    from pipeline.encode import load_encoder

    query_codes = load_encoder(f"{url}/model").encode(np.load(queries)[..., None]).reshape(40, -1)
    expected = reference_seed_search(query_codes, codes, ids, 3, 10)
    seed = query_ids(url, queries, str(tmp_path / "seed.parquet"), client)
    assert [seed.get(q, []) for q in range(40)] == [[(i, float(sc)) for i, sc in e] for e in expected]

    hits = answer(url, queries, str(tmp_path / "r.parquet"), client, "default", k=10)
    returned = {u for rows in hits.values() for u, _ in rows}
    assert not returned & set(deleted) and not returned & set(renamed_from)
    assert returned <= set(folder.readable())
    # the new content of each overwritten file is found, under its own uri, first with every bit equal
    new_content = str(tmp_path / "new.npy")
    np.save(new_content, pool[100:104])
    found = answer(url, new_content, str(tmp_path / "o.parquet"), client, "default", k=1)
    assert [found[q][0][0] for q in range(4)] == [folder.uri(n) for n in overwritten]
    # a renamed file comes back once, under its new name (the old uri is gone, checked above)
    assert [hits[row][0][0] for row in renamed_rows] == renamed_to

    folder.write("uploading.png", 150)  # the upload completes: the next run reads it again
    retry = index(folder.url, url, None, client=client)
    assert retry.counts() == {"added": 0, "removed": 0, "changed": 0, "retried": 1} and retry.n_errors_new == 0
    assert read_manifest(url).n_errors == 0
    assert_mirrors(url, folder, queries, tiny_model, tmp_path / "fresh", client)
    assert index(folder.url, url, None, client=client).version == retry.version  # nothing left to do


def test_mass_deletion_is_refused_before_anything_is_written(client, tiny_model, pool, tmp_path):
    folder = _folder(tmp_path, pool, 20)
    url = str(tmp_path / "index")
    index(folder.url, url, tiny_model, client=client)
    before = sorted(p.relative_to(url).as_posix() for p in Path(url).rglob("*") if "runs" not in p.parts)
    for name in folder.names()[:5]:  # 25% of the images: a short listing, as far as the index can tell
        folder.delete(name)
    with pytest.raises(MassDeletionError, match=r"5 of the 20 images.*--max-delete-fraction 0.2"):
        index(folder.url, url, None, client=client)
    assert sorted(p.relative_to(url).as_posix() for p in Path(url).rglob("*") if "runs" not in p.parts) == before
    assert read_runs(url, last=1)[0]["status"] == "failed"
    cli = subprocess.run([*CLI, "index", "--corpus", folder.url, "--index", url],
                         capture_output=True, text=True, timeout=300)
    lines = [line for line in cli.stderr.splitlines() if line.startswith("patchhash: error:")]
    assert cli.returncode == 1 and len(lines) == 1 and "--max-delete-fraction" in lines[0], cli.stderr
    allowed = index(folder.url, url, None, IndexSettings(max_delete_fraction=0.3), client=client)
    assert allowed.removed == 5 and read_manifest(url).n_ok == 15


def test_append_only_keeps_the_first_rounds_behaviour(client, tiny_model, pool, tmp_path):
    folder = _folder(tmp_path, pool, 10)
    url = str(tmp_path / "index")
    index(folder.url, url, tiny_model, client=client)
    folder.delete(folder.names()[0])
    folder.write(folder.names()[0], 150)
    folder.add(151)
    report = index(folder.url, url, None, IndexSettings(append_only=True), client=client)
    assert report.counts() == {"added": 1, "removed": 0, "changed": 0, "retried": 0}
    assert read_manifest(url).n_ok == 11


def test_other_sources_are_never_touched(client, tiny_model, pool, queries, tmp_path):
    a = PhotoFolder(str(tmp_path / "a"), pool)
    b = PhotoFolder(str(tmp_path / "b"), pool)
    for i in range(8):
        a.write(f"a{i}.png", i)
        b.write(f"b{i}.png", 20 + i)
    url = str(tmp_path / "index")
    index(a.url, url, tiny_model, client=client)
    index(b.url, url, None, client=client)
    for name in a.names()[:1]:
        a.delete(name)
    a.write(a.names()[0], 50)
    report = index(a.url, url, None, client=client)
    assert report.counts() == {"added": 0, "removed": 1, "changed": 1, "retried": 0}
    manifest = read_manifest(url)
    assert [s.corpus for s in manifest.sources] == [a.url, b.url] and manifest.n_ok == 15
    hits = answer(url, queries, str(tmp_path / "r.parquet"), client, "seed", k=40)
    assert {u for rows in hits.values() for u, _ in rows} >= set(b.readable())


def test_changed_rows_of_an_array_corpus_are_encoded_again(client, tiny_model, pool, tmp_path):
    corpus = tmp_path / "c.npy"
    np.save(corpus, pool[:50])
    url = str(tmp_path / "index")
    index(str(corpus), url, tiny_model, client=client)
    assert index(str(corpus), url, None, client=client).version == 1  # unchanged file: nothing read again
    changed = pool[:50].copy()
    changed[[3, 17]] = pool[[120, 121]]
    np.save(corpus, changed)
    report = index(str(corpus), url, None, client=client)
    assert report.counts() == {"added": 0, "removed": 0, "changed": 2, "retried": 0}
    np.save(tmp_path / "q.npy", pool[[120, 121]])
    hits = answer(url, str(tmp_path / "q.npy"), str(tmp_path / "r.parquet"), client, "default", k=1)
    assert [hits[q][0][0] for q in (0, 1)] == [f"{corpus}#3", f"{corpus}#17"]




@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_after_any_sequence_of_changes_results_equal_a_fresh_index(client, tiny_model, pool, queries, tmp_path_factory, ops):
    """Property: random adds, deletes, overwrites, renames and truncations of a small folder, each
    followed by a sync; after each, both modes answer as a fresh index of the live files."""
    work = tmp_path_factory.mktemp("prop")
    folder = _folder(work, pool, 20)  # the default mode skips codes held by over 10% of a partition: >= 10 images
    url = str(work / "index")
    index(folder.url, url, tiny_model, ONE_PARTITION, client=client)
    for step, op in enumerate(ops):
        apply(folder, op)
        index(folder.url, url, None, IndexSettings(max_delete_fraction=1), client=client)
        assert_mirrors(url, folder, queries, tiny_model, work / f"step{step}", client)


def test_run_summary_and_log_count_each_kind_of_change(tiny_model, pool, tmp_path):
    folder = _folder(tmp_path, pool, 12)
    url = str(tmp_path / "index")
    args = [*CLI, "index", "--corpus", folder.url, "--index", url]
    subprocess.run([*args, "--model", tiny_model], check=True, capture_output=True, timeout=300)
    folder.delete(folder.names()[0])
    folder.write(folder.names()[0], 120)
    folder.add(121)
    folder.write("half.png", None)
    out = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "2 added, 1 removed, 1 changed, 0 retried" in out.stdout
    assert "skipped 1 unreadable image(s); see `patchhash info --index" in out.stderr
    errors = subprocess.run([*CLI, "info", "--index", url, "--errors", "--json"], capture_output=True, text=True, timeout=300)
    assert [os.path.basename(e["uri"]) for e in json.loads(errors.stdout)] == ["half.png"]
    info = json.loads(subprocess.run([*CLI, "info", "--index", url, "--json"], capture_output=True, text=True, timeout=300).stdout)
    assert (info["n_images"], info["n_unreadable"], info["format_version"]) == (12, 1, FORMAT_VERSION)
    assert info["versions"] == list_versions(url)

"""``patchhash evaluate``: figures of modes and baselines, JSON, plot, CLI, and clear errors."""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from corpus_helpers import FASHION_TRAIN_LABELS

from pipeline.baselines import pixel_knn
from pipeline.metrics import average_precision_at_k, precision_at_k
from storage import ConfigError, CorpusError
from workflows.evaluate import EvaluateSettings, evaluate, render_table
from workflows.index import IndexSettings, index
from workflows.query import QuerySettings, query

N_INDEX, N_QUERIES = 400, 60


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, make_index, fmnist_train):
    """An index of 400 real images (2 partitions), 60 other labelled queries, labels as npy."""
    root = tmp_path_factory.mktemp("eval")
    with gzip.open(FASHION_TRAIN_LABELS) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    np.save(root / "labels.npy", labels[:N_INDEX])
    np.save(root / "queries.npy", fmnist_train[2000:2000 + N_QUERIES, :, :, 0])
    np.save(root / "query_labels.npy", labels[2000:2000 + N_QUERIES])
    _, url = make_index(fmnist_train[:N_INDEX], shard_size=100, partitions=2)
    return dict(root=root, index=url, labels=labels[:N_INDEX], query_labels=labels[2000:2000 + N_QUERIES],
                fmnist=fmnist_train)


def _args(d):
    return d["index"], str(d["root"] / "queries.npy"), str(d["root"] / "labels.npy"), str(d["root"] / "query_labels.npy")


def test_figures_match_independent_computation(client, labelled, tmp_path):
    settings = EvaluateSettings(ks=(1, 5), modes=("seed", "default"), baselines=("pixel-knn", "lsh-32"), map_k=20)
    out, plot = tmp_path / "e.json", tmp_path / "e.png"
    result = evaluate(*_args(labelled), settings=settings, client=client, out=str(out), plot=str(plot))
    names = [m.name for m in result.methods]
    assert names == ["seed t=3", "default t=3", "pixel-knn", "lsh-32"]
    by_name = {m.name: m for m in result.methods}
    # pixel-knn against the baseline function and the metric functions, directly
    ids = pixel_knn(labelled["fmnist"][:N_INDEX], labelled["fmnist"][2000:2000 + N_QUERIES], 20)
    knn = by_name["pixel-knn"]
    assert knn.precision[1] == pytest.approx(precision_at_k(ids, labelled["labels"], labelled["query_labels"], 1))
    assert knn.map == pytest.approx(average_precision_at_k(ids, labelled["labels"], labelled["query_labels"], 20))
    assert knn.mean_candidates == N_INDEX
    # the default mode's figures are those of a plain query job's results
    query(labelled["index"], str(labelled["root"] / "queries.npy"), str(tmp_path / "r.parquet"), QuerySettings(k=20), client=client)
    rows = pq.read_table(tmp_path / "r.parquet").to_pydict()
    got = np.full((N_QUERIES, 20), -1)
    for q, r, i in zip(rows["query_id"], rows["rank"], rows["image_id"]):
        got[q, r - 1] = i
    assert by_name["default t=3"].precision[5] == pytest.approx(precision_at_k(got, labelled["labels"], labelled["query_labels"], 5))
    for m in result.methods:
        assert len(m.curve) == 20 and all(0 <= p <= 1 for p in m.curve) and m.ms_per_query > 0
        assert m.mean_candidates > 0
    # a tiny one-epoch model: the modes must still beat chance (0.1) by a wide margin
    assert by_name["default t=3"].precision[5] > 0.3
    saved = json.loads(out.read_text())
    assert saved["n_queries"] == N_QUERIES and [m["name"] for m in saved["methods"]] == names
    assert saved["methods"][2]["precision"]["1"] == pytest.approx(knn.precision[1])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = render_table(result)
    assert "pixel-knn" in table and "P@5" in table and "mAP@20" in table


def test_threshold_sweep_and_limit(client, labelled):
    settings = EvaluateSettings(ks=(1,), modes=("default",), baselines=(), thresholds=(0, 2), map_k=5, limit=25)
    result = evaluate(*_args(labelled), settings=settings, client=client)
    assert [m.name for m in result.methods] == ["default t=0", "default t=2"]
    assert [m.threshold for m in result.methods] == [0, 2]
    assert result.n_queries == 25
    # a wider radius finds at least as many candidates
    assert result.methods[1].mean_candidates >= result.methods[0].mean_candidates


def test_csv_labels_by_uri(client, labelled, tmp_path):
    """Labels as a CSV of uri,label rows in any order, covering both index and queries."""
    from storage import open_corpus
    from storage.manifest import read_manifest
    from workflows.query import image_uris

    uris = image_uris(labelled["index"], read_manifest(labelled["index"]))
    query_uris = open_corpus(str(labelled["root"] / "queries.npy")).uris()
    path = tmp_path / "labels.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uri", "label"])
        rows = list(zip(uris, labelled["labels"])) + list(zip(query_uris, labelled["query_labels"]))
        for uri, label in reversed(rows):
            w.writerow([uri, int(label)])
    settings = EvaluateSettings(ks=(1,), modes=(), baselines=("pixel-knn",), map_k=3)
    by_csv = evaluate(labelled["index"], str(labelled["root"] / "queries.npy"), str(path), settings=settings)
    by_npy = evaluate(*_args(labelled), settings=settings)
    assert by_csv.methods[0].precision == by_npy.methods[0].precision


def test_label_errors_name_the_file_and_the_fix(labelled, tmp_path):
    idx, queries, labels, query_labels = _args(labelled)
    short = tmp_path / "short.npy"
    np.save(short, labelled["labels"][:10])
    settings = EvaluateSettings(modes=(), baselines=("pixel-knn",))
    with pytest.raises(CorpusError, match=r"short\.npy holds 10 labels but the index .* has 400 images"):
        evaluate(idx, queries, str(short), query_labels, settings)
    with pytest.raises(CorpusError, match="pass --query-labels"):
        evaluate(idx, queries, labels, None, settings)


@pytest.mark.parametrize("kwargs, match", [
    (dict(ks=(0,)), "--k"), (dict(modes=("fast",)), "unknown mode"), (dict(baselines=("lsh-0",)), "lsh-B"),
    (dict(baselines=("annoy",)), "unknown baseline"), (dict(thresholds=(-1,)), "thresholds"),
    (dict(modes=(), baselines=()), "nothing to evaluate"), (dict(limit=0), "limit"),
])
def test_settings_are_validated(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        EvaluateSettings(**kwargs)


def test_evaluate_cli_smoke(labelled, tcp_scheduler, tmp_path):
    idx, queries, labels, query_labels = _args(labelled)
    out, plot = tmp_path / "e.json", tmp_path / "e.png"
    result = subprocess.run(
        [sys.executable, "-m", "workflows.cli", "evaluate", "--index", idx, "--queries", queries, "--labels", labels,
         "--query-labels", query_labels, "--k", "1,10", "--baselines", "pixel-knn,lsh-64", "--limit", "30",
         "--out", str(out), "--plot", str(plot), "--scheduler", tcp_scheduler],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    for name in ("seed t=3", "default t=3", "pixel-knn", "lsh-64", "P@10", "mAP@100"):
        assert name in result.stdout
    assert json.loads(out.read_text())["n_queries"] == 30 and plot.stat().st_size > 1000
    bad = subprocess.run(
        [sys.executable, "-m", "workflows.cli", "evaluate", "--index", idx, "--queries", queries, "--labels", labels,
         "--k", "1,x"], capture_output=True, text=True, timeout=600,
    )
    assert bad.returncode == 1 and "patchhash: error: --k takes integers" in bad.stderr


def test_evaluate_an_index_on_s3_that_needs_the_credentials(client, tiny_model, fmnist_train, tmp_path):
    """Index, queries and labels in a moto bucket that refuses anonymous reads: ``evaluate`` with the
    storage options gives the figures of a local evaluation of the same data (every read of the
    index, the query jobs' included, must carry the credentials)."""
    import uuid

    import fsspec
    from corpus_helpers import moto_s3

    with gzip.open(FASHION_TRAIN_LABELS) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    local = {"corpus.npy": fmnist_train[:200, :, :, 0], "labels.npy": labels[:200],
             "queries.npy": fmnist_train[3000:3030, :, :, 0], "query_labels.npy": labels[3000:3030]}
    for name, values in local.items():
        np.save(tmp_path / name, values)
    settings = EvaluateSettings(ks=(1, 5), modes=("seed", "default"), baselines=("pixel-knn",), map_k=10)
    build = IndexSettings(shard_size=100, partitions=2)
    index(str(tmp_path / "corpus.npy"), str(tmp_path / "idx"), tiny_model, build, client=client)
    expected = evaluate(str(tmp_path / "idx"), *(str(tmp_path / n) for n in ("queries.npy", "labels.npy", "query_labels.npy")),
                        settings=settings, client=client)
    with moto_s3() as options:
        fs = fsspec.filesystem("s3", **options)
        bucket = f"eval-{uuid.uuid4().hex[:12]}"  # moto's state is per process, shared by every server
        fs.mkdir(bucket)
        for name in local:
            fs.put_file(str(tmp_path / name), f"{bucket}/{name}")
        root = f"s3://{bucket}"
        index(f"{root}/corpus.npy", f"{root}/idx", tiny_model, build, client=client, storage_options=options)
        anonymous = fsspec.filesystem("s3", anon=True, client_kwargs=options["client_kwargs"], skip_instance_cache=True)
        with pytest.raises(PermissionError):  # the bucket needs the credentials
            anonymous.cat_file(f"{bucket}/idx/manifest.json")
        got = evaluate(f"{root}/idx", f"{root}/queries.npy", f"{root}/labels.npy", f"{root}/query_labels.npy",
                       settings=settings, client=client, storage_options=options)
    assert [m.name for m in got.methods] == [m.name for m in expected.methods] == ["seed t=3", "default t=3", "pixel-knn"]
    for mine, theirs in zip(got.methods, expected.methods):
        assert (mine.precision, mine.map, mine.mean_candidates, mine.curve) == (
            theirs.precision, theirs.map, theirs.mean_candidates, theirs.curve), mine.name
    assert (got.n_index, got.n_queries) == (expected.n_index, expected.n_queries) == (200, 30)

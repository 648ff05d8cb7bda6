"""``--metrics-file``: Prometheus text exposition for node_exporter's textfile collector,
parsed with ``prometheus_client``'s own parser, not grepped."""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest
from prometheus_client import parser  # the dev extra: CI fails loudly without it
from typer.testing import CliRunner


def samples(path) -> dict[tuple[str, str], float]:
    """``(sample name, command) -> value`` of a metrics file, which must parse as exposition text."""
    found = {}
    for family in parser.text_string_to_metric_families(open(path).read()):
        assert family.name.startswith("patchhash_") and family.documentation and family.type in ("gauge", "counter")
        for sample in family.samples:
            assert set(sample.labels) == {"command", "index"}
            found[(sample.name, sample.labels["command"])] = sample.value
    return found


@pytest.fixture
def cli(monkeypatch):
    """``patchhash ...`` through CliRunner in this process (its setup_logging kept to this test)."""
    from workflows.cli import app

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.delenv("PATCHHASH_WORKERS", raising=False)

    def run(*args: str, ok: bool = True):
        result = CliRunner().invoke(app, list(args))
        assert (result.exit_code == 0) == ok, (result.output, result.exception)
        return result

    return run


@pytest.fixture(scope="module")
def built(tmp_path_factory, fmnist_train, make_index):
    """An index of 150 images, its corpus, and 20 query images."""
    _, url = make_index(fmnist_train[:150])
    return url, fmnist_train[150:170, :, :, 0]


def test_index_success_then_failure_keeps_the_last_success(cli, tmp_path, fmnist_train, tiny_model):
    corpus, index, prom = tmp_path / "corpus.npy", str(tmp_path / "index"), tmp_path / "textfile" / "patchhash-index.prom"
    np.save(corpus, fmnist_train[:120, :, :, 0])
    cli("index", "--corpus", str(corpus), "--index", index, "--model", tiny_model, "--shard-size", "60",
        "--partitions", "2", "--metrics-file", str(prom))
    first = samples(prom)
    assert first[("patchhash_images_added", "index")] == 120 and first[("patchhash_index_images", "index")] == 120
    assert first[("patchhash_images_removed", "index")] == first[("patchhash_images_unreadable", "index")] == 0
    assert first[("patchhash_index_version", "index")] == 1
    assert first[("patchhash_runs_succeeded_total", "index")] == 1 and first[("patchhash_runs_failed_total", "index")] == 0
    assert first[("patchhash_last_run_success", "index")] == 1
    assert first[("patchhash_last_success_timestamp_seconds", "index")] == first[("patchhash_last_run_timestamp_seconds", "index")]
    assert 0 < first[("patchhash_last_run_duration_seconds", "index")] < 600
    assert oct(prom.stat().st_mode & 0o777) == oct(0o644)
    files = [p for p in (tmp_path / "index").rglob("*") if p.is_file()]
    assert first[("patchhash_bytes_written", "index")] == sum(p.stat().st_size for p in files)  # a first build writes all

    cli("index", "--corpus", str(corpus), "--index", index, "--metrics-file", str(prom))  # nothing new: a run record
    runs = sorted((tmp_path / "index" / "runs").iterdir())
    first = samples(prom)  # the last success from now on
    assert first[("patchhash_bytes_written", "index")] == runs[-1].stat().st_size

    cli("index", "--corpus", str(tmp_path / "gone.npy"), "--index", index, "--metrics-file", str(prom), ok=False)
    failed = samples(prom)
    assert failed[("patchhash_runs_failed_total", "index")] == 1 and failed[("patchhash_runs_succeeded_total", "index")] == 2
    assert failed[("patchhash_last_run_success", "index")] == 0
    assert failed[("patchhash_last_success_timestamp_seconds", "index")] == first[("patchhash_last_success_timestamp_seconds", "index")]
    assert failed[("patchhash_last_run_timestamp_seconds", "index")] >= first[("patchhash_last_run_timestamp_seconds", "index")]
    assert failed[("patchhash_images_added", "index")] == first[("patchhash_images_added", "index")] == 0, \
        "a failed run keeps the last success's figures (the run that found nothing new)"
    assert failed[("patchhash_index_images", "index")] == 120

    cli("index", "--corpus", str(tmp_path / "gone.npy"), "--index", index, "--metrics-file", str(prom), ok=False)
    assert samples(prom)[("patchhash_runs_failed_total", "index")] == 2
    assert [p.name for p in prom.parent.iterdir()] == [prom.name], "no temporary file is left"


def test_query_and_gc(cli, tmp_path, built):
    url, queries = built
    np.save(tmp_path / "queries.npy", queries)
    prom = tmp_path / "query.prom"
    cli("query", "--index", url, "--queries", str(tmp_path / "queries.npy"), "--out", str(tmp_path / "hits.parquet"),
        "--k", "5", "--metrics-file", str(prom))
    got = samples(prom)
    assert got[("patchhash_queries_answered", "query")] == 20 and got[("patchhash_queries_failed", "query")] == 0
    assert got[("patchhash_result_rows", "query")] >= 20 - got[("patchhash_queries_without_hits", "query")]
    assert got[("patchhash_index_version", "query")] == 1 and got[("patchhash_runs_succeeded_total", "query")] == 1

    index = tmp_path / "index"
    shutil.copytree(url, index)
    cli("gc", "--index", str(index), "--min-age", "0", "--metrics-file", str(prom))
    both = samples(prom)
    assert both[("patchhash_queries_answered", "query")] == 20, "another command's samples in the file stay"
    assert both[("patchhash_runs_succeeded_total", "gc")] == 1 and both[("patchhash_index_version", "gc")] == 1
    assert both[("patchhash_gc_versions_deleted", "gc")] == 0 and both[("patchhash_bytes_deleted", "gc")] >= 0


def test_a_failed_first_run_writes_a_failure_and_no_success(tmp_path):
    from workflows.metrics import command_metrics

    prom = tmp_path / "m.prom"
    with pytest.raises(RuntimeError), command_metrics(str(prom), "query", 's3://key:secret@bucket/"idx"') as metrics:
        metrics.values["patchhash_queries_answered"] = 5
        raise RuntimeError("boom")
    got = samples(prom)
    assert got[("patchhash_runs_failed_total", "query")] == 1 and got[("patchhash_runs_succeeded_total", "query")] == 0
    assert ("patchhash_last_success_timestamp_seconds", "query") not in got
    assert ("patchhash_queries_answered", "query") not in got
    family = next(f for f in parser.text_string_to_metric_families(prom.read_text()) if f.name == "patchhash_last_run_success")
    assert family.samples[0].labels["index"] == 's3://bucket/"idx"', "no credentials; quotes escaped"
    with command_metrics(None, "query", "i"):
        pass  # no file asked for: nothing written
    assert os.listdir(tmp_path) == ["m.prom"]


def test_the_run_log_and_the_log_lines_share_the_run_id(tmp_path, fmnist_train, tiny_model):
    import re

    from typer.testing import CliRunner

    from storage.runlog import read_runs
    from workflows.cli import app

    corpus = tmp_path / "c.npy"
    np.save(corpus, fmnist_train[:40])
    index = tmp_path / "idx"
    done = CliRunner().invoke(app, ["index", "--corpus", str(corpus), "--index", str(index), "--model", tiny_model])
    assert done.exit_code == 0, done.output
    (run,) = read_runs(str(index))
    ids = set(re.findall(r"run=([0-9a-f]{16})", done.output))
    assert ids == {run["token"][:16]}, (ids, run["token"])

"""Large batch query files: results as a partitioned Parquet dataset that resumes when rerun."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from storage import ConfigError
from workflows.index import index
from workflows.query import QuerySettings, query

pytestmark = pytest.mark.slow

SETTINGS = QuerySettings(k=5, block_size=40, max_blocks_in_flight=2)


@pytest.fixture(scope="module")
def setup(client, make_index, fmnist_train, tmp_path_factory) -> dict:
    """A shared index of 500 images (copied by the tests that append to it), 200 more images, 400 queries."""
    root = tmp_path_factory.mktemp("dataset")
    np.save(root / "b.npy", fmnist_train[500:700, :, :, 0])
    np.save(root / "q.npy", fmnist_train[3000:3400, :, :, 0])
    _, url = make_index(fmnist_train[:500], shard_size=100, partitions=2)
    single = str(root / "single.parquet")
    query(url, str(root / "q.npy"), single, SETTINGS, client=client)
    return {"root": root, "index": url, "queries": str(root / "q.npy"), "b": str(root / "b.npy"), "expected": pq.read_table(single)}


def _dataset(path) -> "pq.Table":
    return pq.read_table(str(path))


def test_dataset_parts_hold_exactly_the_single_file_rows(client, setup, tmp_path):
    out = tmp_path / "results"
    report = query(setup["index"], setup["queries"], f"{out}/", SETTINGS, client=client)
    parts = sorted(p for p in os.listdir(out) if p.startswith("part-"))
    assert len(parts) == 10 and parts[0] == "part-000000000000-000000000040.parquet"
    assert (out / "_SUCCESS.json").exists() and report.rows == setup["expected"].num_rows
    assert _dataset(out).equals(setup["expected"])


def test_interrupted_run_resumes_against_the_same_version(client, setup, tmp_path):
    url, out = str(tmp_path / "idx"), f"{tmp_path / 'results'}/"
    shutil.copytree(setup["index"], url)
    seen = []

    def stop_after_three(block, topk) -> None:
        seen.append(block)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        query(url, setup["queries"], out, SETTINGS, client=client, on_block=stop_after_three)
    assert not (tmp_path / "results" / "_SUCCESS.json").exists()
    assert len(os.listdir(tmp_path / "results" / "_done")) == 3

    assert index(setup["b"], url, None, client=client).version == 2  # the index moves on meanwhile
    answered = []
    report = query(url, setup["queries"], out, SETTINGS, client=client, on_block=lambda block, topk: answered.append(block))
    assert report.version == 1 and report.blocks_skipped == 3 and len(answered) == 7
    assert report.rows == setup["expected"].num_rows and report.n_queries == 400
    assert _dataset(tmp_path / "results").equals(setup["expected"])


def test_another_job_into_the_same_folder_is_refused(client, setup, tmp_path):
    out = f"{tmp_path / 'results'}/"
    query(setup["index"], setup["queries"], out, SETTINGS, client=client)
    with pytest.raises(ConfigError, match=r"holds results of another query job \(settings differ\)"):
        query(setup["index"], setup["queries"], out, QuerySettings(k=7, block_size=40), client=client)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not a patchhash results dataset"):
        query(setup["index"], setup["queries"], f"{tmp_path / 'other'}/", SETTINGS, client=client)


def _markers(out) -> int:
    """Blocks whose done-marker is committed (``_done/<start>.json``)."""
    return len(list((out / "_done").glob("*.json"))) if (out / "_done").exists() else 0


def test_sigkilled_cli_query_resumes_from_the_parts_written(setup, tmp_path):
    out = tmp_path / "results"
    args = [sys.executable, "-m", "workflows.cli", "query", "--index", setup["index"], "--queries", setup["queries"],
            "--out", f"{out}/", "--k", "5", "--block-size", "40"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and _markers(out) < 2:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    written = _markers(out)  # a kill can leave a marker's temporary file behind: it is not a marker
    assert 2 <= written < 10 and not (out / "_SUCCESS.json").exists(), "the run should have been killed mid-way"
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resumed an interrupted run: {written} block(s) were already answered" in rerun.stdout
    assert _dataset(out).equals(setup["expected"])


def test_a_part_killed_before_its_rename_is_not_read_as_part_of_the_dataset(client, setup, tmp_path, monkeypatch):
    """A SIGKILL between writing a part's temporary file and renaming it left
    ``part-....parquet.tmp-<id>`` in the folder, and dataset readers read it as one more part
    (the resumed run then held a block twice). Temporary files are now hidden names."""
    import storage.atomic

    out = tmp_path / "results"
    query(setup["index"], setup["queries"], f"{out}/", SETTINGS, client=client)

    def killed(src, dst):
        raise KeyboardInterrupt  # as if the process died here, before the rename

    monkeypatch.setattr(storage.atomic.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        storage.atomic.write_bytes_atomic(str(out / "part-000000000000-000000000040.parquet"),
                                          (out / "part-000000000000-000000000040.parquet").read_bytes())
    monkeypatch.undo()
    left = [name for name in os.listdir(out) if ".tmp-" in name]
    assert len(left) == 1 and left[0].startswith(".part-000000000000-000000000040.parquet.tmp-")
    assert _dataset(out).equals(setup["expected"])

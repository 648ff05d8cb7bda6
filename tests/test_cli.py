"""The command line: help, train, info, index, and clear one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

CLI = [sys.executable, "-m", "workflows.cli"]


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_command_of_the_contract():
    result = run("--help")
    assert result.returncode == 0
    for command in ("train", "index", "query", "evaluate", "bench", "info", "demo"):
        assert command in result.stdout


def test_train_then_info(tmp_path, fmnist_train):
    corpus = tmp_path / "sample.npy"
    np.save(corpus, fmnist_train[:400, :, :, 0])
    out = tmp_path / "model"
    result = run("train", "--corpus", str(corpus), "--out", str(out), "--bits", "16", "--epochs", "1",
                 "--batch-size", "64", "--sample", "300", "--seed", "7", "--stem", "8", "--shift-weight", "1", "--max-shift", "1.5",
                 "--brightness-weight", "0.5", "--max-brightness", "0.2", "--background", "black-luma")
    assert result.returncode == 0, result.stderr
    assert "saved" in result.stdout and "16 bits" in result.stdout
    info = run("info", "--model", str(out), "--json")
    assert info.returncode == 0, info.stderr
    card = json.loads(info.stdout)
    assert (card["bits"], card["grid"], card["training"]["n_images"], card["training"]["seed"]) == (16, [7, 7], 300, 7)
    assert card["architecture"]["stem"] == [8]
    assert (card["training"]["shift_weight"], card["training"]["max_shift"]) == (1.0, 1.5)
    assert card["training"]["final_shift_loss"] >= 0
    assert (card["training"]["brightness_weight"], card["training"]["max_brightness"]) == (0.5, 0.2)
    assert card["training"]["final_brightness_loss"] >= 0 and card["input"]["background"] == "black-luma"
    assert card["training"]["command"].startswith("patchhash train --corpus")
    text = run("info", "--model", str(out))
    assert "bits: 16" in text.stdout


def test_train_with_labels_records_them(tmp_path, fmnist_train):
    import gzip

    from corpus_helpers import FASHION_TRAIN_LABELS

    with gzip.open(FASHION_TRAIN_LABELS) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:400]
    corpus, label_file = tmp_path / "sample.npy", tmp_path / "labels.npy"
    np.save(corpus, fmnist_train[:400, :, :, 0])
    np.save(label_file, labels.astype(np.int64))
    out = tmp_path / "model"
    result = run("train", "--corpus", str(corpus), "--labels", str(label_file), "--label-weight", "2", "--out", str(out),
                 "--bits", "8", "--epochs", "1", "--batch-size", "64", "--sample", "200", "--seed", "1", "--stem", "none")
    assert result.returncode == 0, result.stderr
    card = json.loads(run("info", "--model", str(out), "--json").stdout)
    training = card["training"]
    assert card["architecture"]["stem"] == []
    assert (training["labels"], training["n_classes"], training["label_weight"]) == (str(label_file), 10, 2.0)
    assert training["final_label_loss"] > 0 and training["n_images"] == 200
    np.save(label_file, labels[:10].astype(np.int64))
    bad = run("train", "--corpus", str(corpus), "--labels", str(label_file), "--out", str(tmp_path / "m2"), "--epochs", "1")
    assert bad.returncode == 1 and "holds 10 labels but the corpus has 400 images" in bad.stderr


@pytest.mark.parametrize("name", ["fashion-mnist", "fashion-mnist-unsupervised"])
def test_shipped_model_cards(name):
    result = run("info", "--model", name, "--json")
    assert result.returncode == 0, result.stderr
    card = json.loads(result.stdout)
    assert card["name"] == name and card["input_shape"] == [28, 28, 1]
    assert card["training"]["n_images"] == 60000
    assert card["training"]["command"].startswith("patchhash train")
    assert f"--out pipeline/models/{name} " in card["training"]["command"]
    label_aware = name == "fashion-mnist"
    assert bool(card["training"].get("n_classes")) == label_aware
    assert ("--labels" in card["training"]["command"]) == label_aware


def test_index_and_info_from_the_command_line(tmp_path, tiny_model, fmnist_train):
    corpus = tmp_path / "c.npy"
    np.save(corpus, fmnist_train[:200, :, :, 0])
    url = tmp_path / "idx"
    result = run("index", "--corpus", str(corpus), "--index", str(url), "--model", tiny_model,
                 "--shard-size", "64")
    assert result.returncode == 0, result.stderr
    assert "indexed 200 new images" in result.stdout
    assert "dashboard" in result.stderr and "running on threads of this process" in result.stderr  # a small job
    again = run("index", "--corpus", str(corpus), "--index", str(url))
    assert again.returncode == 0 and "nothing new" in again.stdout
    info = json.loads(run("info", "--index", str(url), "--json").stdout)
    assert (info["version"], info["n_images"], info["n_errors"], info["grid"]) == (1, 200, 0, [7, 7])
    assert info["buckets"]["any"]["partitions"] >= 1
    figures = tmp_path / "bench.json"
    bench = run("bench", "--index", str(url), "--queries", str(corpus), "--limit", "50", "--repeats", "2",
                "--workers", "1", "--out", str(figures))
    assert bench.returncode == 0, bench.stderr
    assert "queries/s" in bench.stdout and "peak RSS per worker" in bench.stdout
    data = json.loads(figures.read_text())
    assert data["n_queries"] == 50 and data["workers"] == 1
    assert {m: len(r) for m, r in data["runs_s"].items()} == {"default": 2, "seed": 2}
    assert {m: len(r) for m, r in data["client_cpu_s"].items()} == {"default": 2, "seed": 2}
    assert all(s > 0 for runs in data["client_cpu_s"].values() for s in runs) and "CPU s per run" in bench.stdout
    assert all(v > 0 for v in data["queries_per_s"].values()) and len(data["peak_rss_mb"]) == 1
    # what benchmarks/scale_model.py --from-bench takes
    plan = data["plan_inputs"]
    assert (plan["images"], plan["partitions"]) == (200, info["buckets"]["pos"]["partitions"])
    assert plan["index_bytes_per_image"] > 100 and plan["objects_per_partition"] > 5 and plan["local_bytes_per_image"] > 100
    assert all(plan[mode]["search_ms"] > 0 and plan[mode]["encode_ms"] > 0 and plan[mode]["merge_ms"] > 0 for mode in ("default", "seed"))
    assert "per query and partition" in bench.stdout and "scale_model.py --from-bench" in bench.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (("info", "--index", "/nonexistent/index"), "no committed patchhash index"),
        (("info", "--model", "/nonexistent/model"), "not a patchhash model directory"),
        (("train", "--corpus", "/nonexistent/x.npy", "--out", "/tmp/never"), "/nonexistent/x.npy"),
        (("train", "--corpus", "x", "--out", "y", "--bits", "3"), "bits"),
        (("index", "--corpus", "x", "--index", "y", "--shard-size", "0"), "--shard-size"),
    ],
)
def test_errors_are_one_clear_line(args, message):
    result = run(*args)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("patchhash: error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr

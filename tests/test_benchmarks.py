"""Benchmarks run in their smoke size, only to keep them working (no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_index_smoke(tmp_path):
    out = tmp_path / "figures.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_index.py"), "--smoke", "--out-json", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    assert figures["images"] == 2000 and figures["patchhash_index_images_per_s"] > 0 and figures["model_predict_images_per_s"] > 0
    assert "ratio" in result.stdout


def test_quality_ablation_smoke(tmp_path):
    out = tmp_path / "quality.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--smoke", "--work", str(tmp_path),
                             "--workers", "1", "--out-json", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["rows"]
    methods = {(r["method"], r["threshold"]) for r in rows}
    assert {("seed", 0), ("seed", 1), ("default", 0), ("default", 1), ("pixel-knn", None), ("lsh-64", None), ("lsh-256", None)} <= methods
    assert all(0 <= r["precision"]["10"] <= 1 for r in rows)
    assert "| default | default | 32 | 1 | 400 | 0.1 |" in result.stdout


def run_smoke(script: str, tmp_path, *args: str) -> tuple[dict, str]:
    out = tmp_path / f"{script}.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke", "--out-json", str(out), *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text()), result.stdout


def test_bench_kernel_smoke(tmp_path):
    figures, stdout = run_smoke("bench_kernel.py", tmp_path)
    # the script exits non-zero unless both kernels found the same matches
    assert figures["matches"] > 0 and figures["ours_comparisons_per_s"] > 0 and figures["faiss_comparisons_per_s"] > 0
    assert figures["read_bandwidth_bytes_per_s"] > 0 and "ours / FAISS" in stdout


def test_bench_query_smoke(tmp_path):
    figures, stdout = run_smoke("bench_query.py", tmp_path)
    for mode in ("default", "seed"):
        assert set(figures["modes"][mode]["queries_per_s"]) == {"1", "2"}
    assert "ratio" in stdout


def test_bench_scale_smoke(tmp_path):
    figures, _ = run_smoke("bench_scale.py", tmp_path)
    (row,) = figures["results"]
    assert row["images"] == 4000 and row["bytes_per_image"] > 0 and set(row["ms_per_query"]) == {"default", "seed"}
    assert len(row["build_peak_rss_mb"]) == 2 and len(row["query_peak_rss_mb"]) == 2


def test_bench_query_file_smoke(tmp_path):
    figures, stdout = run_smoke("bench_query_file.py", tmp_path)
    assert [r["rows"] for r in figures["runs"]] == [200, 600] and figures["rows_ratio"] == 3
    assert figures["client_rss_ratio"] > 0 and figures["worker_rss_ratio"] > 0
    assert "client peak RSS x" in stdout

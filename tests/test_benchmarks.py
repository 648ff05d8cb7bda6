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
    assert "| default | default | 32 | 1 | auto | 0.1 or 300 | 100,000 |" in result.stdout


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


def test_bench_encoder_smoke(tmp_path):
    figures, stdout = run_smoke("bench_encoder.py", tmp_path)
    assert figures["images"] == 300 and set(figures["ms_per_image"]) == {"onednn", "eigen"}
    assert all(v > 0 for v in figures["ms_per_image"].values()) and figures["code_bits"] == 300 * 49 * 32
    assert figures["bits_differing"] < figures["code_bits"] // 1000 and "oneDNN / Eigen" in stdout


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


def test_peak_rss_of_a_child_is_its_own_not_its_parents():
    """``ru_maxrss`` survives fork and exec: a query job started by a benchmark that had written
    a 313 MB query file reported the parent's memory as its own (client "growing" with the file).
    ``peak_rss_mb`` reads the process's own high-water mark."""
    import numpy as np

    from workflows.bench import peak_rss_mb

    ballast = np.ones(400 * 2**20, np.uint8)  # 400 MB resident in this process
    child = subprocess.run([sys.executable, "-c", "from workflows.bench import peak_rss_mb; print(peak_rss_mb())"],
                           cwd=ROOT, capture_output=True, text=True, check=True, timeout=120)
    parent = peak_rss_mb()
    assert parent > 400
    # The child imports the same packages as this process (its own peak is a few hundred MB,
    # more on some machines), so it is compared with the parent: without the ballast.
    assert float(child.stdout) < parent - 300, (child.stdout, parent)
    del ballast


def test_candidate_stage_smoke(tmp_path):
    figures, stdout = run_smoke("candidate_stage.py", tmp_path)
    rows = figures["rows"]
    assert figures["images"] == 20000 and len(rows) == 8
    assert all(0 <= r["recall_at_10"] <= 1 and 0 < r["candidates"] <= 20000 for r in rows)
    # a vote budget can only shrink the radius: never more candidates than the same row without one
    free = {(r["t"], r["cap"]): r["candidates"] for r in rows if r["vote_budget"] is None}
    assert all(r["candidates"] <= free[r["t"], r["cap"]] for r in rows if r["vote_budget"] is not None)
    assert "| t | shortlist |" in stdout
    timed = figures["substrings"]  # each count gave the same results as the cost model's choice
    assert {"2", "4", str(timed["cost_model_choice"])} == set(timed["ms_per_query"])
    assert "the cost model picks" in stdout


def test_shift_sweep_smoke(tmp_path):
    figures, stdout = run_smoke("shift_sweep.py", tmp_path)
    assert figures["indexed"] == 300 and [(r["size"], r["shift"]) for r in figures["rows"]] == [(112, 1), (112, 2)]
    for row in figures["rows"]:
        assert set(row["found"]) == {"r=0 s=1", "r=1 s=1", "r=0.5 s=0.5", "r=1 s=0.5"}
        assert all(0 <= v <= row["originals"] for v in row["found"].values())
    assert "| 112x112 moved 2 px |" in stdout

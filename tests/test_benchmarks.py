"""Benchmarks run in their smoke size, only to keep them working (no timing is asserted).

Each smoke test reads the run of the script named by its ``@smoke_run`` mark (the ``smoke``
fixture; the runs start together, two at a time: tests/smoke_runs.py).
"""

import subprocess
import sys
from pathlib import Path

from smoke_runs import RUN_DIR, smoke_run

ROOT = Path(__file__).resolve().parent.parent


@smoke_run("bench_index.py")
def test_bench_index_smoke(smoke):
    figures, stdout = smoke
    assert figures["images"] == 2000 and figures["patchhash_index_images_per_s"] > 0 and figures["model_predict_images_per_s"] > 0
    assert "ratio" in stdout


@smoke_run("quality.py", "--work", RUN_DIR, "--workers", "1")
def test_quality_ablation_smoke(smoke):
    figures, stdout = smoke
    rows = figures["rows"]
    methods = {(r["method"], r["threshold"]) for r in rows}
    assert {("seed", 0), ("seed", 1), ("default", 0), ("default", 1), ("pixel-knn", None), ("lsh-64", None), ("lsh-256", None)} <= methods
    assert all(0 <= r["precision"]["10"] <= 1 for r in rows)
    assert "| default | default | 32 | 1 | auto | 0.1 or 300 | 100,000 |" in stdout


@smoke_run("bench_kernel.py")
def test_bench_kernel_smoke(smoke):
    figures, stdout = smoke
    # the script exits non-zero unless both kernels found the same matches
    assert figures["matches"] > 0 and figures["ours_comparisons_per_s"] > 0 and figures["faiss_comparisons_per_s"] > 0
    assert figures["read_bandwidth_bytes_per_s"] > 0 and "ours / FAISS" in stdout


@smoke_run("bench_encoder.py")
def test_bench_encoder_smoke(smoke):
    figures, stdout = smoke
    assert figures["images"] == 300 and set(figures["ms_per_image"]) == {"onednn", "eigen"}
    assert all(v > 0 for v in figures["ms_per_image"].values()) and figures["code_bits"] == 300 * 49 * 32
    assert figures["bits_differing"] < figures["code_bits"] // 1000 and "oneDNN / Eigen" in stdout


@smoke_run("bench_query.py")
def test_bench_query_smoke(smoke):
    figures, stdout = smoke
    for mode in ("default", "seed"):
        assert set(figures["modes"][mode]["queries_per_s"]) == {"1", "2"}
    assert "ratio" in stdout


@smoke_run("bench_scale.py")
def test_bench_scale_smoke(smoke):
    figures, _ = smoke
    (row,) = figures["results"]
    assert row["images"] == 4000 and row["bytes_per_image"] > 0 and set(row["ms_per_query"]) == {"default", "seed"}
    assert len(row["build_peak_rss_mb"]) == 2 and len(row["query_peak_rss_mb"]) == 2


@smoke_run("bench_query_file.py")
def test_bench_query_file_smoke(smoke):
    figures, stdout = smoke
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


@smoke_run("candidate_stage.py")
def test_candidate_stage_smoke(smoke):
    figures, stdout = smoke
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


@smoke_run("shift_sweep.py")
def test_shift_sweep_smoke(smoke):
    figures, stdout = smoke
    assert figures["indexed"] == 300 and [(r["size"], r["shift"]) for r in figures["rows"]] == [(112, 1), (112, 2)]
    for row in figures["rows"]:
        assert set(row["found"]) == {"r=0 s=1", "r=1 s=1", "r=0.5 s=0.5", "r=1 s=0.5"}
        assert all(0 <= v <= row["originals"] for v in row["found"].values())
    assert "| 112x112 moved 2 px |" in stdout


@smoke_run("fashion_shifts.py", "--work", RUN_DIR, "--workers", "1")
def test_fashion_shifts_smoke(smoke):
    figures, stdout = smoke
    assert figures["n_index"] == 2000 and figures["n_moved_queries"] == 50 and figures["n_test_queries"] == 200
    rows = figures["moved_copies"]
    kinds = ("moved 1 px", "dimmed to 75%", "noise sigma 12", "JPEG q70")
    assert set(rows) == {f"{kind}: {name}, default" for kind in kinds for name in ("shipped (centre: box)", "without the rule (centre: none)")} | {
        "moved 1 px: without the rule (centre: none), --shift-radius 1"}
    # the box rule brings moved copies back where the same weights without it cannot (50 copies: a loose floor)
    assert rows["moved 1 px: shipped (centre: box), default"]["recall@10"] >= 0.9 > rows["moved 1 px: without the rule (centre: none), default"]["recall@10"]
    assert all(0 <= r["recall@1"] <= r["recall@10"] <= 1 for r in rows.values())
    assert all(0.6 < q["P@10"] <= 1 and q["ms_per_query"] > 0 for q in figures["test_queries"].values())
    assert figures["cost_ratio_shipped_vs_without"] > 0 and "cost ratio, shipped / without the rule" in stdout


@smoke_run("bench_sync.py")
def test_bench_sync_smoke(smoke):
    figures, stdout = smoke
    nights = figures["nights"]
    assert [n["night"] for n in nights] == [1, 2, 3]
    assert all(n["added"] > 0 and n["removed"] > 0 and n["changed"] > 0 and n["written_bytes"] > 0 for n in nights)
    summary = figures["summary"]
    assert summary["objects_ratio"] > 0 and summary["bytes_ratio"] > 0 and summary["ms_per_query_ratio"] > 0
    assert 0 < summary["median_written_share"] <= summary["max_written_share"] and 0 <= summary["compaction_nights"] <= 3
    assert all(n["compact_written_bytes"] > 0 for n in nights if n["compacted"])
    assert "after 3 nights vs a fresh build of the same" in stdout


@smoke_run("bench_startup.py")
def test_bench_startup_smoke(smoke):
    figures, stdout = smoke
    assert (figures["images"], figures["queries"], figures["runs"]) == (300, 5, 1) and list(figures["paths"]) == ["in-process"]
    small = figures["paths"]["in-process"]
    assert small["in_process_logged"] and small["n_queries"] == 5 and small["wall_s"] > 0 and small["cpu_s"] > 0
    assert small["steps_s"]["tensorflow import"] > 0 and all(v >= 0 for v in small["steps_s"].values())
    assert "| path | whole command, wall s |" in stdout and "| tensorflow import |" in stdout

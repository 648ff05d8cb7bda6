"""benchmarks/scale_model.py: the cost model's arithmetic, the plan, the simulated merge of many
partitions' lists (checked against one sort), and a plan from `patchhash bench` figures."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.topk import TopK

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # where a script finds its sibling modules (_common)
spec = importlib.util.spec_from_file_location("scale_model", BENCHMARKS / "scale_model.py")
sm = sys.modules.setdefault("scale_model", importlib.util.module_from_spec(spec))
spec.loader.exec_module(sm)

CAL = sm.Calibration(partition_size=1_000_000, search_ms=2.0, encode_ms=0.5, merge_ms=0.001, index_bytes_per_image=470,
                     local_bytes_per_image=840, objects_per_partition=75, build_images_per_s_per_core=30_000)


def test_the_model_spreads_cpu_over_cores_or_follows_a_blocks_critical_path():
    # one partition on 2 cores: one task searches it all, after the block's larger encode part (512 of 1000)
    assert sm.predict_ms_per_query(CAL, 1_000_000, 2) == pytest.approx(0.512 * 0.5 + 2.0)
    # 10 partitions on 2 cores: 5 rounds of searches after the encoding (the longer of the two)
    assert sm.predict_ms_per_query(CAL, 10_000_000, 2) == pytest.approx(0.512 * 0.5 + 5 * 2.0)
    # a block is cut in whole encoder batches, no more parts than cores: one core encodes it all
    assert sm.predict_ms_per_query(CAL, 10_000_000, 1) == pytest.approx(0.5 + 10 * 2.001)
    # many cores, few partitions: 8 blocks in flight keep 80 cores searching; the first block in 4 parts of 256
    assert sm.predict_ms_per_query(CAL, 10_000_000, 1000, queries=100_000) == pytest.approx(
        (256 * 0.5 + 100_000 * 10 * 2.0 / 80) / 100_000)
    # as many partitions as cores, each pinned: a partition's 100 blocks one after the other, or
    # the spread work (merges and every block's encoding included), the longer here
    assert sm.predict_ms_per_query(CAL, 1_000_000_000, 1000, queries=100_000) == pytest.approx(
        max(256 * 0.5 + 100 * 1000 * 2.0, 100_000 * (0.5 + 1000 * 2.001) / 1000) / 100_000)
    # twice the partitions: the spread work (merges included) is the longer
    assert sm.predict_ms_per_query(CAL, 2_000_000_000, 1000, queries=100_000) == pytest.approx(
        max(100_000 * (0.5 + 2000 * 2.001) / 1000, 256 * 0.5 + 100 * 2 * 1000 * 2.0) / 100_000)


def test_the_plan_counts_partitions_storage_and_time():
    plan = sm.plan(CAL, 1_000_000_000, 250, encode_images_per_s_per_core=2000)
    assert (plan["partitions"], plan["partitions_per_core"], plan["s3_objects"]) == (1000, 4, 75_000)
    assert plan["index_gb"] == pytest.approx(470) and plan["local_disk_per_core_gb"] == pytest.approx(4 * 0.84)
    assert plan["s3_storage_usd_per_month"] == pytest.approx(470 * sm.S3_PRICES["gb_month"])
    rate = 1 / (1 / 2000 + 1 / 30_000)
    assert plan["index_hours"] == pytest.approx(1e9 / (rate * 250) / 3600)


def test_a_simulated_merge_of_many_partitions_equals_one_sort_of_every_list():
    rng = np.random.default_rng(0)
    lists = []
    for j in range(3):  # partition j holds ids [j * 100, (j + 1) * 100)
        ids = np.stack([rng.choice(100, 10, replace=False) for _ in range(6)]) + j * 100
        ids[0, 7:] = -1  # a query with fewer hits
        scores = -np.sort(-rng.integers(0, 50, (6, 10)), axis=1).astype(np.float64)
        lists.append(TopK(ids, scores, np.full(6, 10)))
    result = sm.simulate_merge(lists, 100, 70, k=10)
    assert result["checked"] and result["partitions"] == 70 and result["queries"] == 6


def test_a_plan_from_patchhash_bench_figures(tmp_path):
    figures = {"plan_inputs": {"images": 10_000_000, "partitions": 10, "partition_size": 1_000_000, "index_bytes_per_image": 471,
                               "objects_per_partition": 74.5, "local_bytes_per_image": 837,
                               "default": {"search_ms": 3.0, "encode_ms": 0.67, "merge_ms": 0.0006}}}
    (tmp_path / "bench.json").write_text(json.dumps(figures))
    cal = sm.from_bench(str(tmp_path / "bench.json"), 30_000)
    assert (cal.search_ms, cal.encode_ms, cal.partition_size, cal.local_bytes_per_image) == (3.0, 0.67, 1_000_000, 837)

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

"""``make bench``: every benchmark, each printing ours vs its reference measured side by side.

    python benchmarks/run.py            # full sizes (the figures in docs/BENCHMARKS.md)
    python benchmarks/run.py --smoke    # tiny sizes, seconds: keeps the scripts working (CI)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["bench_index.py", "bench_encoder.py", "bench_query_vs_seed.py", "bench_kernel.py", "bench_query.py", "bench_scale.py", "bench_query_file.py", "bench_sync.py",
              "candidate_stage.py", "quality.py", "shift_sweep.py", "fashion_shifts.py", "bench_startup.py"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    failed = []
    for script in BENCHMARKS:
        print(f"\n== {script}", flush=True)
        cmd = [sys.executable, str(HERE / script)] + (["--smoke"] if args.smoke else [])
        if subprocess.run(cmd, cwd=HERE.parent).returncode:
            failed.append(script)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()

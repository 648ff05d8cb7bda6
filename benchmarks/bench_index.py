"""Indexing overhead: ``patchhash index`` vs plain ``model.predict`` on the same images in memory.

    python benchmarks/bench_index.py                 # 60k Fashion-MNIST train images, 2 workers
    python benchmarks/bench_index.py --smoke         # 2k images, for CI

Both sides run in the same invocation, back to back, on the same machine. The index side is
the whole CLI command (cluster start-up, reading the IDX file, encoding, Zarr writes, bucket
maps, commit); the reference is ``model.predict`` of the encoder on images already decoded
and normalised in memory, with TensorFlow free to use every core. Prints medians and the ratio.
"""

from __future__ import annotations

import gzip
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from _common import TRAIN_IMAGES, add_smoke_and_out_json, parser, write_json


def reference_predict(n: int, repeats: int, model: str) -> float:
    """Images/s of ``encoder.predict`` over ``n`` in-memory images (median of ``repeats``)."""
    from pipeline.encode import load_encoder

    with gzip.open(TRAIN_IMAGES) as f:
        pixels = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)[:n]
    enc = load_encoder(model)
    x = enc.card.normalization.apply(pixels)
    enc._encoder.predict(x[:512], batch_size=256, verbose=0)  # warm-up (graph tracing)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        enc._encoder.predict(x, batch_size=256, verbose=0)
        rates.append(n / (time.perf_counter() - started))
    return statistics.median(rates)


def patchhash_index(n: int, workers: int, repeats: int, model: str) -> float:
    """Images/s of the whole ``patchhash index`` command (median of ``repeats``)."""
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = TRAIN_IMAGES
        if n < 60000:
            with gzip.open(TRAIN_IMAGES) as f:
                np.save(os.path.join(tmp, "corpus.npy"), np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n])
            corpus = os.path.join(tmp, "corpus.npy")
        for i in range(repeats):
            url = os.path.join(tmp, f"idx{i}")
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "workflows.cli", "index", "--corpus", corpus, "--index", url,
                            "--model", model, "--workers", str(workers), "--shard-size", str(max(1000, n // (4 * workers)))],
                           check=True, capture_output=True)
            rates.append(n / (time.perf_counter() - started))
            shutil.rmtree(url)
    return statistics.median(rates)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--images", type=int, default=60000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="fashion-mnist", help="model directory or built-in name")
    add_smoke_and_out_json(ap, "2k images, 1 repeat (CI)")
    args = ap.parse_args()
    if args.smoke:
        args.images, args.repeats = 2000, 1
    ours = patchhash_index(args.images, args.workers, args.repeats, args.model)
    reference = reference_predict(args.images, args.repeats, args.model)
    row = {"model": args.model, "images": args.images, "workers": args.workers, "repeats": args.repeats,
           "patchhash_index_images_per_s": round(ours), "model_predict_images_per_s": round(reference),
           "ratio": round(ours / reference, 3)}
    print(f"patchhash index ({args.workers} workers, whole command): {ours:9.0f} images/s")
    print(f"model.predict (in memory, reference):      {reference:9.0f} images/s")
    print(f"ratio: {ours / reference:.2f} (overhead {100 * (1 - ours / reference):.0f}%)")
    write_json(args.out_json, row)


if __name__ == "__main__":
    main()

"""The encoder on one thread: TensorFlow's oneDNN kernels (patchhash's default) vs its Eigen ones.

TensorFlow chooses its convolution kernels when it is first imported, from
``TF_ENABLE_ONEDNN_OPTS``; it turns oneDNN on by itself only on CPUs with AVX-512 VNNI, BF16
or AMX.
``import pipeline`` sets the variable to 1 unless it is already set. This script encodes the
same test images in two child processes, one per setting (alternating, ``--repeats`` each),
with TensorFlow pinned to one thread as in a worker, and prints the median CPU ms per image,
the ratio, and how many code bits the two settings disagree on::

    python benchmarks/bench_encoder.py [--images 4096] [--repeats 3]
    python benchmarks/bench_encoder.py --smoke
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np
from _common import ROOT, TEST_IMAGES, add_smoke_and_out_json, parser, write_json

CHILD = """
import json, sys, time
import numpy as np
from pipeline.encode import load_encoder
from storage import open_corpus

model, images, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
encoder = load_encoder(model)
corpus = open_corpus(sys.argv[4])
pixels = corpus.read(encoder.card.image_spec, 0, min(images, len(corpus))).pixels
encoder.encode(pixels[:256])  # builds TensorFlow's function
started = time.process_time()
codes = encoder.encode(pixels)
ms = 1000 * (time.process_time() - started) / len(pixels)
np.save(out, codes)
print(json.dumps({"ms_per_image": ms}))
"""


def encode_once(onednn: str, model: str, images: int, corpus: str, codes_path: str) -> float:
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn, "TF_NUM_INTRAOP_THREADS": "1",
           "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", CHILD, model, str(images), codes_path, corpus], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"encoding with TF_ENABLE_ONEDNN_OPTS={onednn} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])["ms_per_image"]


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="fashion-mnist", help="model directory or built-in name")
    ap.add_argument("--corpus", default=TEST_IMAGES)
    add_smoke_and_out_json(ap, "300 images, 1 repeat (CI)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.images, args.repeats = 300, 1
    runs: dict[str, list[float]] = {"onednn": [], "eigen": []}
    with tempfile.TemporaryDirectory(prefix="bench-encoder-") as tmp:
        for _ in range(args.repeats):
            for name, value in (("onednn", "1"), ("eigen", "0")):
                runs[name].append(encode_once(value, args.model, args.images, args.corpus, f"{tmp}/{name}.npy"))
        a, b = np.load(f"{tmp}/onednn.npy"), np.load(f"{tmp}/eigen.npy")
    differ = np.bitwise_xor(a, b)
    result = {
        "model": args.model, "images": len(a), "repeats": args.repeats,
        "ms_per_image": {name: statistics.median(values) for name, values in runs.items()}, "runs": runs,
        "code_bits": int(a.size * a.dtype.itemsize * 8),
        "bits_differing": int(np.unpackbits(differ.view(np.uint8)).sum()),
        "codes_differing": int(np.count_nonzero(differ)),
    }
    result["ratio"] = result["ms_per_image"]["eigen"] / result["ms_per_image"]["onednn"]
    ms = result["ms_per_image"]
    print(f"{result['images']} images, one thread, CPU ms per image (median of {args.repeats}):")
    print(f"  oneDNN (default)  {ms['onednn']:.3f}")
    print(f"  Eigen             {ms['eigen']:.3f}")
    print(f"  oneDNN / Eigen speed: {result['ratio']:.2f}x; codes differing: {result['codes_differing']} of {a.size:,} "
          f"({result['bits_differing']} of {result['code_bits']:,} bits)")
    write_json(args.out_json, result)
    return result


if __name__ == "__main__":
    main()

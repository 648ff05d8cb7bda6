"""What the benchmark scripts share: their setup, the Fashion-MNIST files, the options and the
JSON output. A script imports it before anything of patchhash::

    from _common import TRAIN_IMAGES, parser, write_json  # sets up sys.path and TensorFlow's logging

(a script's own folder is first on ``sys.path``, so ``_common`` and sibling scripts such as
``bench_scale`` import by name).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# The checkout's packages, also when patchhash is not installed; TensorFlow's C++ log quiet.
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from workflows.demo import FASHION_MNIST_DIR  # noqa: E402 - after the path above

TRAIN_IMAGES = f"{FASHION_MNIST_DIR}/train-images-idx3-ubyte.gz"
TRAIN_LABELS = f"{FASHION_MNIST_DIR}/train-labels-idx1-ubyte.gz"
TEST_IMAGES = f"{FASHION_MNIST_DIR}/t10k-images-idx3-ubyte.gz"
TEST_LABELS = f"{FASHION_MNIST_DIR}/t10k-labels-idx1-ubyte.gz"


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser described by the first paragraph of a script's docstring."""
    return argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])


def add_smoke_and_out_json(ap: argparse.ArgumentParser, smoke: str, out_json: str | None = None) -> None:
    """The two options of every benchmark that ``make bench-smoke`` and tests/test_benchmarks.py run:
    ``--smoke`` (tiny sizes, described by ``smoke``) and ``--out-json``."""
    ap.add_argument("--smoke", action="store_true", help=smoke)
    ap.add_argument("--out-json", help=out_json)


def write_json(path: str | os.PathLike | None, figures, newline: bool = False) -> None:
    """Write ``figures`` as indented JSON to ``path`` (``--out-json``); nothing when it is ``None``."""
    if path:
        Path(path).write_text(json.dumps(figures, indent=1) + ("\n" if newline else ""))

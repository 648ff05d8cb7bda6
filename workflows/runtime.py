"""Process set-up shared by every command: quiet TensorFlow, logging, thread counts."""

from __future__ import annotations

import logging
import os

__all__ = ["quiet_tensorflow", "setup_logging"]


def quiet_tensorflow(threads: int | None = None) -> None:
    """Silence TensorFlow's C++ banner and, optionally, pin its thread pools.

    Must run before TensorFlow is first imported in the process to take effect.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # 3: also the bogus "NodeDef mentions attribute" errors
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if threads:
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
        os.environ["TF_NUM_INTEROP_THREADS"] = "1"


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("distributed", "tensorflow", "absl", "numba", "fsspec", "asyncio", "botocore", "s3fs", "aiobotocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

"""The compute: the Keras model and its binary layer, encoding, bucket maps, Hamming search.

Names are imported lazily, so that ``import pipeline`` (and the CLI) pays for TensorFlow or
numba only when a name that needs them is used.
"""

import os
from importlib import import_module

# TensorFlow's oneDNN kernels run the default model's convolutions 1.3x faster per core than
# its Eigen ones on this project's AVX2 machine, where TensorFlow leaves them off by itself (it
# turns them on only with AVX-512 VNNI, BF16 or AMX). The codes are the same but for float
# rounding at the binary threshold (docs/BENCHMARKS.md, section 3). TensorFlow reads this when
# it is first imported, and every import of it here goes through pipeline.backend. A value
# already set (0 to turn them off) is kept.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

_EXPORTS = {
    "Binarize": "binarize",
    "ModelConfig": "model",
    "PRESETS": "model",
    "build_autoencoder": "model",
    "build_encoder": "model",
    "code_dtype": "packing",
    "pack_bits": "packing",
    "unpack_bits": "packing",
    "Normalization": "normalize",
    "ModelCard": "modelcard",
    "read_card": "modelcard",
    "Encoder": "encode",
    "load_encoder": "encode",
    "TrainSettings": "train",
    "train_autoencoder": "train",
    "save_model": "train",
    "BucketMap": "buckets",
    "build_bucket_map": "buckets",
    "merge_bucket_maps": "buckets",
    "TopK": "topk",
    "seed_search": "seed",
    "merge_topk": "topk",
    "precision_at_k": "metrics",
    "average_precision_at_k": "metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(import_module(f"pipeline.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__

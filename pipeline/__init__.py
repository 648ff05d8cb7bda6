"""The compute: the Keras model and its binary layer, encoding, bucket maps, Hamming search.

Names are imported lazily, so that ``import pipeline`` (and the CLI) pays for TensorFlow or
numba only when a name that needs them is used.
"""

from importlib import import_module

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
    "TopK": "search",
    "seed_search": "search",
    "merge_topk": "search",
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

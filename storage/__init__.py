"""Where bytes live: fsspec URLs, corpus readers, the on-disk index format."""

from storage.errors import (
    ClusterUnavailableError,
    ConfigError,
    CorpusError,
    ImageReadError,
    IndexFormatError,
    IndexNotFoundError,
    MassDeletionError,
    MissingExtraError,
    ModelError,
    ModelMismatchError,
    PatchhashError,
    StorageUnavailableError,
    WorkerMismatchError,
)
from storage.corpus import Corpus, ReadError, Shard, ShardData, open_corpus
from storage.fs import display_url, is_local, join_url, url_to_fs
from storage.canonical import InputRules
from storage.images import ImageSpec, convert, decode_image
from storage.labels import read_labels
from storage.location import IndexLocation

__all__ = [
    "Corpus",
    "ImageSpec",
    "IndexLocation",
    "InputRules",
    "ReadError",
    "Shard",
    "ShardData",
    "convert",
    "decode_image",
    "open_corpus",
    "read_labels",
    "ClusterUnavailableError",
    "ConfigError",
    "CorpusError",
    "ImageReadError",
    "IndexFormatError",
    "IndexNotFoundError",
    "MassDeletionError",
    "MissingExtraError",
    "ModelError",
    "ModelMismatchError",
    "PatchhashError",
    "StorageUnavailableError",
    "WorkerMismatchError",
    "display_url",
    "is_local",
    "join_url",
    "url_to_fs",
]

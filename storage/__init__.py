"""Where bytes live: fsspec URLs, corpus readers, the on-disk index format."""

from storage.errors import (
    ConfigError,
    CorpusError,
    ImageReadError,
    IndexFormatError,
    IndexNotFoundError,
    MassDeletionError,
    ModelError,
    ModelMismatchError,
    PatchhashError,
    StorageUnavailableError,
)
from storage.corpus import Corpus, ReadError, Shard, ShardData, open_corpus
from storage.fs import display_url, is_local, join_url, url_to_fs
from storage.images import ImageSpec, convert, decode_image
from storage.labels import read_labels
from storage.location import IndexLocation

__all__ = [
    "Corpus",
    "ImageSpec",
    "IndexLocation",
    "ReadError",
    "Shard",
    "ShardData",
    "convert",
    "decode_image",
    "open_corpus",
    "read_labels",
    "ConfigError",
    "CorpusError",
    "ImageReadError",
    "IndexFormatError",
    "IndexNotFoundError",
    "MassDeletionError",
    "ModelError",
    "ModelMismatchError",
    "PatchhashError",
    "StorageUnavailableError",
    "display_url",
    "is_local",
    "join_url",
    "url_to_fs",
]

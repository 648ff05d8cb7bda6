"""Opening a corpus: :func:`open_corpus` finds the format of a URL and lists its images."""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping
from typing import Any

from fsspec.spec import AbstractFileSystem

from storage.corpus._corpus import Corpus, IdxCorpus, ImageFilesCorpus, NpyCorpus, UriListCorpus, ZarrCorpus
from storage.corpus._urilists import LIST_SUFFIXES, read_uri_list
from storage.corpus.formats import DAMAGED, IDX_NAME_PATTERN, reading
from storage.errors import CorpusError
from storage.fs import display_url, is_local, url_to_fs
from storage.retry import retry_call

__all__ = ["IMAGE_EXTENSIONS", "open_corpus"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
_GLOB_CHARS = re.compile(r"[*?\[]")
_FORMATS_HELP = (
    "expected a folder or glob of images (png, jpg, jpeg, bmp, tif, tiff, gif, webp), "
    "a single image file, an IDX file (*-idx3-ubyte[.gz]), a .npy array, a Zarr array, "
    "or a list of uris (.txt, .lst, .csv, .parquet)"
)


def open_corpus(url: str, storage_options: Mapping[str, Any] | None = None) -> Corpus:
    """Open the images at ``url``; see :mod:`storage.corpus` for the accepted URLs.

    Parameters
    ----------
    url : str
        Local path or fsspec URL (``s3://``, ``memory://``...).
    storage_options : dict, optional
        fsspec options (credentials, endpoint...), used for every URL the corpus reads.

    Returns
    -------
    Corpus

    Raises
    ------
    CorpusError
        Nothing readable at ``url``, or a file of a known format with a bad header or shape.
    """
    url = str(url)
    options = dict(storage_options or {})
    fs, path = url_to_fs(url, options)
    if _GLOB_CHARS.search(path):
        return _open_glob(fs, path, url, options)
    shown = display_url(fs, path.rstrip("/") or path)
    name = posixpath.basename(path.rstrip("/")).lower()
    if IDX_NAME_PATTERN.search(name):
        return IdxCorpus(shown, options)
    if name.endswith(".npy"):
        return NpyCorpus(shown, options)
    if name.endswith(LIST_SUFFIXES):
        return UriListCorpus(shown, options, read_uri_list(fs, path, shown))
    with reading(shown, "corpus"):
        if fs.isdir(path):
            return _open_folder(fs, path, shown, options)
        if fs.isfile(path) and _is_image_name(name):
            return ImageFilesCorpus(shown, options, [shown])
        exists = fs.exists(path)
    if not exists:
        raise CorpusError(
            f"no images found at {url}: nothing exists at that path (check it"
            f"{'' if is_local(fs) else ', and --storage-options'}); {_FORMATS_HELP}"
        )
    raise CorpusError(f"no images found at {url}; {_FORMATS_HELP}")


def _is_image_name(path: str) -> bool:
    return posixpath.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def _open_folder(
    fs: AbstractFileSystem, path: str, shown: str, options: dict[str, Any]
) -> Corpus:
    node_type = _zarr_node_type(fs, path)
    if node_type == "array":
        return ZarrCorpus(shown, options)
    if node_type == "group":
        raise CorpusError(
            f"{shown} is a Zarr group, not an array; pass the URL of the image array "
            f"inside it (e.g. {shown}/<array name>)"
        )
    files = sorted(p for p in retry_call(f"listing {shown}", fs.find, path) if _is_image_name(p))
    if not files:
        raise CorpusError(f"no images found at {shown} (searched recursively); {_FORMATS_HELP}")
    return ImageFilesCorpus(shown, options, [display_url(fs, p) for p in files])


def _open_glob(
    fs: AbstractFileSystem, pattern: str, url: str, options: dict[str, Any]
) -> Corpus:
    matches = retry_call(f"listing {url}", fs.glob, pattern, detail=True)
    files = sorted(
        p for p, info in matches.items() if info.get("type") == "file" and _is_image_name(p)
    )
    if not files:
        raise CorpusError(
            f"no images found at {url}: the glob matched {len(matches)} paths, none of them "
            f"an image file; {_FORMATS_HELP}"
        )
    return ImageFilesCorpus(display_url(fs, pattern), options, [display_url(fs, p) for p in files])


def _zarr_node_type(fs: AbstractFileSystem, path: str) -> str | None:
    """``"array"``, ``"group"`` or None when ``path`` is not a Zarr node."""
    try:
        metadata = json.loads(fs.cat_file(posixpath.join(path, "zarr.json")))
    except (FileNotFoundError, ValueError):
        pass
    else:
        if not isinstance(metadata, dict):
            raise CorpusError(f"{display_url(fs, path)}/zarr.json is not Zarr metadata (not a JSON object); {DAMAGED}")
        return metadata.get("node_type")
    for name, node_type in ((".zarray", "array"), (".zgroup", "group")):
        if fs.isfile(posixpath.join(path, name)):
            return node_type
    return None

"""Readers of the file formats that corpora and label files share.

IDX and ``.npy`` headers (checked before any data is read, nothing unpickled), whole IDX
files, UTF-8 text and CSV rows, the check of a file's size against its header, and
:func:`reading`, which turns the I/O errors of reading a file as a whole into one-line
:class:`CorpusError` messages. :mod:`storage.labels` reads its IDX1, npy and CSV files with
them, so that labels get the same checks and messages as corpora.
"""

from __future__ import annotations

import csv
import io
import math
import re
import tokenize
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, BinaryIO

import numpy as np
from fsspec.spec import AbstractFileSystem

from storage.errors import CorpusError, PatchhashError
from storage.fs import url_to_fs

__all__ = [
    "DAMAGED",
    "IDX_NAME_PATTERN",
    "brief",
    "check_size",
    "file_error_reason",
    "open_idx_stream",
    "read_csv_rows",
    "read_idx_file",
    "read_idx_header",
    "read_npy_header",
    "read_text",
    "reading",
]

IDX_NAME_PATTERN = re.compile(r"[.-]idx\d([-_.]ubyte)?(\.gz)?$", re.IGNORECASE)
DAMAGED = "the file is damaged or incomplete: write or download it again"


def brief(exc: BaseException, limit: int = 300) -> str:
    """``exc``'s message on one line, at most ``limit`` characters (for one-line errors)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def file_error_reason(exc: BaseException) -> str | None:
    """The short reason an image file is unreadable for the well-known I/O errors ("file not
    found", "is a directory", "permission denied"); None for any other error."""
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return None


@contextmanager
def reading(url: str, what: str) -> Iterator[None]:
    """Turn I/O errors raised while reading ``url`` as a whole into :class:`CorpusError`."""
    try:
        yield
    except PatchhashError:
        raise
    except FileNotFoundError:
        raise CorpusError(f"{what} not found: {url}; check the path") from None
    except IsADirectoryError:
        raise CorpusError(f"{what} {url} is a directory; expected a file") from None
    except PermissionError as exc:
        raise CorpusError(
            f"cannot read {what} {url}: permission denied ({brief(exc)}); check its permissions "
            "(and --storage-options for a remote URL)"
        ) from None
    except (OSError, EOFError, zlib.error) as exc:
        hint = DAMAGED
        if "gzip" in str(exc).lower() and url.lower().endswith(".gz"):
            hint = "it is not a complete gzip file: download it again, or drop the .gz suffix if it is not compressed"
        raise CorpusError(f"cannot read {what} {url}: {brief(exc)}; {hint}") from None


def check_size(fs: AbstractFileSystem, path: str, url: str, offset: int, shape: tuple[int, ...], itemsize: int) -> None:
    """Refuse a file shorter than its header says (``offset`` bytes of header, then the data)."""
    expected = offset + math.prod(shape) * itemsize
    size = fs.size(path)
    if size is not None and size < expected:
        raise CorpusError(
            f"{url} is truncated: {size} bytes, but its header announces shape {shape} "
            f"({expected} bytes); {DAMAGED}"
        )


def read_text(fs: AbstractFileSystem, path: str, shown: str) -> str:
    """Content of a UTF-8 text file (a byte-order mark is dropped); ``shown`` names it in errors."""
    try:
        return fs.cat_file(path).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{shown} is not a UTF-8 text file ({exc}); save it as UTF-8") from None


def read_csv_rows(text: str, shown: str) -> list[list[str]]:
    """The non-blank rows of a CSV text; a malformed line raises :class:`CorpusError` naming it."""
    reader = csv.reader(io.StringIO(text))
    try:
        return [row for row in reader if any(c.strip() for c in row)]
    except csv.Error as exc:
        raise CorpusError(f"{shown}, line {reader.line_num}: not valid CSV ({brief(exc)}); fix that line") from None


def read_idx_header(
    stream: BinaryIO, url: str, magic: int, expected: str, hint: str
) -> tuple[int, ...]:
    """Check the magic number of an IDX stream and return its dimensions.

    Parameters
    ----------
    stream : file-like
        Positioned at the start of the (decompressed) file; left at the start of the data.
    url : str
        For error messages.
    magic : int
        The magic number required, e.g. ``0x00000803`` (uint8, 3 dimensions).
    expected, hint : str
        What the magic number means and how to fix a mismatch, for the error message.

    Raises
    ------
    CorpusError
        Another magic number, or a truncated header.
    """
    head = stream.read(4)
    if len(head) < 4 or int.from_bytes(head, "big") != magic:
        found_magic = int.from_bytes(head, "big") if len(head) == 4 else None
        found = f"magic number 0x{found_magic:08x}" if found_magic is not None else f"a file of {len(head)} bytes"
        if found_magic is None or found_magic >> 8 != 0x08 or found_magic & 0xFF not in (1, 3):
            # not the other kind of uint8 IDX file: another format, or a damaged file
            hint = f"patchhash reads IDX files of {expected} only: check that this is the right file; if it is, {DAMAGED}"
        raise CorpusError(
            f"{url} is not an IDX file of {expected}: found {found}, expected magic number "
            f"0x{magic:08x}. {hint}"
        )
    ndim = magic & 0xFF
    raw = stream.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise CorpusError(f"{url}: truncated IDX header ({4 + len(raw)} bytes); {DAMAGED}")
    return tuple(int.from_bytes(raw[i : i + 4], "big") for i in range(0, 4 * ndim, 4))


def read_idx_file(
    url: str, options: Mapping[str, Any] | None, magic: int, expected: str, hint: str
) -> np.ndarray:
    """Whole content of a uint8 IDX file (gzip-compressed when its name ends in ``.gz``).

    See :func:`read_idx_header` for the parameters.
    """
    fs, path = url_to_fs(url, options)
    with reading(url, "IDX file"), open_idx_stream(fs, path) as stream:
        shape = read_idx_header(stream, url, magic, expected, hint)
        data = stream.read()
    size = math.prod(shape)
    if len(data) < size:
        raise CorpusError(
            f"{url} is truncated: {len(data)} bytes of data, {size} expected for shape {shape}; {DAMAGED}"
        )
    return np.frombuffer(data, dtype=np.uint8, count=size).reshape(shape)


def open_idx_stream(fs: AbstractFileSystem, path: str) -> BinaryIO:
    """Open an IDX file for reading, decompressing it when its name ends in ``.gz``."""
    compression = "gzip" if path.lower().endswith(".gz") else None
    return fs.open(path, "rb", compression=compression)


_NPY_VERSIONS = ((1, 0), (2, 0), (3, 0))
# What numpy's header parser may raise on malformed input (it wraps most, not all, in ValueError;
# its fallback for headers written by Python 2 lets tokenize.TokenError out).
_NPY_HEADER_ERRORS = (
    ValueError, TypeError, SyntaxError, OverflowError, RecursionError, MemoryError, KeyError, tokenize.TokenError,
)


def read_npy_header(stream: BinaryIO, url: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, data offset)`` of a ``.npy`` stream; nothing is unpickled.

    Raises
    ------
    CorpusError
        Not a ``.npy`` file, an unknown version, or a malformed header.
    """
    try:
        version = np.lib.format.read_magic(stream)
        if version not in _NPY_VERSIONS:
            raise ValueError(f"unknown .npy format version {version[0]}.{version[1]}")
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, fortran_order, dtype = read_header(stream)
    except _NPY_HEADER_ERRORS as exc:
        raise CorpusError(
            f"{url} is not a valid .npy file ({brief(exc)}); write it with numpy.save"
        ) from None
    return tuple(shape), bool(fortran_order), dtype, stream.tell()

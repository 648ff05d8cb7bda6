"""Packing of bottleneck bits into unsigned integer codes.

Bit order is little-endian: bottleneck unit ``j`` becomes bit ``j`` of the code, i.e. the
code is ``sum(bit[j] << j)`` (seed 000 used the same ``2**arange(d)`` weights). Codes of at
most 32 bits are stored as ``uint32``, of at most 64 bits as ``uint64``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MIN_BITS", "MAX_BITS", "code_dtype", "pack_bits", "unpack_bits"]

MIN_BITS = 8
MAX_BITS = 64


def code_dtype(bits: int) -> np.dtype:
    """The unsigned dtype that holds a ``bits``-bit code."""
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be between {MIN_BITS} and {MAX_BITS}, got {bits}")
    return np.dtype(np.uint32) if bits <= 32 else np.dtype(np.uint64)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack a ``[..., d]`` array of 0/1 values into ``[...]`` integer codes.

    Raises ``ValueError`` if any value is not exactly 0 or 1.
    """
    bits = np.asarray(bits)
    d = bits.shape[-1]
    dtype = code_dtype(d)
    if ((bits != 0) & (bits != 1)).any():
        raise ValueError("pack_bits expects values that are exactly 0 or 1")
    packed = np.packbits(bits.astype(np.uint8), axis=-1, bitorder="little")  # [..., ceil(d/8)] bytes
    width = dtype.itemsize
    if packed.shape[-1] < width:
        pad = [(0, 0)] * (packed.ndim - 1) + [(0, width - packed.shape[-1])]
        packed = np.pad(packed, pad)
    return np.ascontiguousarray(packed).view(dtype.newbyteorder("<"))[..., 0].astype(dtype)


def unpack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``[...]`` codes -> ``[..., bits]`` uint8 of 0/1."""
    dtype = code_dtype(bits)
    codes = np.ascontiguousarray(np.asarray(codes, dtype=dtype).astype(dtype.newbyteorder("<")))
    as_bytes = codes[..., None].view(np.uint8)
    return np.unpackbits(as_bytes, axis=-1, count=bits, bitorder="little")

"""Settings read from environment variables, each refused up front when it does not parse.

A value that is not a size or a number, or is out of range, raises
:class:`~storage.errors.ConfigError` naming the variable, what it holds and a value that works,
instead of a bare ``ValueError`` from deep inside a job (or a silent clamp).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

from storage.errors import ConfigError

__all__ = ["env_bytes", "env_number"]


def env_bytes(name: str, example: str, default: int | None = None) -> int | None:
    """Bytes set by ``name`` (``2GiB``, ``500MB``, ``2000000000``, ``0``), else ``default``.

    Parameters
    ----------
    name : str
        The environment variable.
    example : str
        What the error message suggests instead, e.g. ``"2GiB"``.
    default : int, optional
        Returned when the variable is unset or empty.
    """
    value = os.environ.get(name)
    if not value:
        return default
    from dask.utils import parse_bytes

    try:
        size = parse_bytes(value)
    except (ValueError, TypeError):
        size = -1
    if size < 0:
        raise ConfigError(f"{name}={value!r} is not a size; set it to e.g. {example}")
    return int(size)


def env_number(name: str, kind: Callable[[str], float], default: float, minimum: float) -> float:
    """The number set by ``name`` (converted by ``kind``: ``int`` or ``float``), at least
    ``minimum``; ``default`` when the variable is unset or empty."""
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = kind(value)
    except ValueError:
        number = None
    if number is None or not math.isfinite(number) or number < minimum:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{name}={value!r} must be {what} >= {minimum}; set it to e.g. {default}")
    return number

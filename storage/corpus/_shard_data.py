"""What a read of corpus rows gives: :class:`ShardData`, with a :class:`ReadError` for each
image that could not be read."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ReadError", "ShardData"]


@dataclass(frozen=True)
class ReadError:
    """An image of a corpus that could not be read.

    Attributes
    ----------
    image_id : int
        Id of the image in its corpus.
    uri : str
        Its uri.
    reason : str
        Short reason, e.g. ``"file not found"``, ``"truncated image"``.
    """

    image_id: int
    uri: str
    reason: str


@dataclass
class ShardData:
    """Pixels of the rows of a shard that could be read, and the rows that could not.

    Attributes
    ----------
    ids : numpy.ndarray
        ``int64 [m]`` ids of the images read, ascending.
    uris : list of str
        Their uris.
    pixels : numpy.ndarray
        ``uint8 [m, height, width, channels]`` images converted to the requested spec.
    errors : list of ReadError
        The other rows of the shard, ascending by id.
    """

    ids: np.ndarray
    uris: list[str]
    pixels: np.ndarray
    errors: list[ReadError]

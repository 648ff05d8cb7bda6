"""Thumbnails of the original images for the HTML report (:mod:`workflows.report`).

Each image the report shows is read once, by its uri, however many rows show it, and gives two
views (:class:`ImageViews`):

* a **thumbnail** of the original (:class:`Thumbnail`): colour and alpha kept, aspect ratio
  kept, at most :data:`THUMB_PX` pixels on its long side (never enlarged), encoded as JPEG for
  photos and as PNG where the image has alpha or few colours (PNG too when it is no more than
  1.5 times the JPEG's size: small images and icons stay exact), at most
  :data:`MAX_THUMB_BYTES`;
* the **model input**: the image converted to the model's :class:`~storage.images.ImageSpec`
  by :func:`storage.images.convert`, from the same decode.

Where images come from, as :func:`storage.corpus.open_corpus` names them:

* an image file, by any fsspec URL with the storage options of the index (hits) or of the query
  corpus (queries): one fetch per file (retried on transient errors), at most
  :data:`MAX_SOURCE_BYTES`, decoded reduced (``decode_image(..., min_size=...)``: just large
  enough to cover both the thumbnail and the model input, never at full size where the
  decoder can reduce);
* ``<array url>#<row>``: the array row itself is the original (IDX, npy, Zarr), read with the
  other rows of its array in one go at the array's native geometry
  (:meth:`storage.Corpus.native_spec`; an RGBA array's rows are shown composited on black, as
  the corpus reader gives them).

Files are read in parallel (:data:`READ_THREADS` threads; a thread holds one decoded image at a
time). Nothing here raises for an image: one that cannot be read (missing, corrupt, forbidden,
too large...) gives a :class:`Thumbnail` with a ``reason`` and no model input. The work and the
report's size are bounded: only the images asked for are read, in the order asked (the
report's display order), and once their encoded thumbnails and model inputs add up to
``budget_bytes`` (:data:`MAX_REPORT_IMAGE_BYTES` by default) the rest are not read and get a
placeholder reason instead.

Converting an array to a thumbnail (:func:`make_thumbnail`) takes the layouts and value ranges of
:mod:`storage.images` (grey, grey + alpha, RGB, RGBA; bool, uint8, uint16, other integers,
float), keeping alpha.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import stat
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from storage.corpus import UriListCorpus, open_corpus
from storage.corpus.formats import file_error_reason
from storage.errors import ImageReadError, StorageUnavailableError
from storage.fs import is_local, url_to_fs
from storage.images import ImageSpec, convert, decode_image
from storage.retry import retry_call

__all__ = [
    "MAX_REPORT_IMAGE_BYTES",
    "MAX_SOURCE_BYTES",
    "MAX_THUMB_BYTES",
    "READ_THREADS",
    "THUMB_PX",
    "ImageViews",
    "Thumbnail",
    "image_to_uint8",
    "make_thumbnail",
    "read_image_views",
]

log = logging.getLogger(__name__)

#: Long side of a thumbnail, in pixels.
THUMB_PX = 128
#: An encoded thumbnail is at most this large (a JPEG of lower quality replaces a larger one).
MAX_THUMB_BYTES = 32 << 10
#: The images of one report (thumbnails encoded, model inputs raw) add up to at most this.
MAX_REPORT_IMAGE_BYTES = 16 << 20
#: A larger image file is not fetched for a thumbnail.
MAX_SOURCE_BYTES = 256 << 20
#: Image files fetched and decoded at once.
READ_THREADS = 8

_ROW_REF = re.compile(r"^(?P<url>.+)#(?P<row>\d+)$")
_JPEG_QUALITIES = (85, 70, 50, 30)
_PNG_OVER_JPEG = 1.5  # PNG is kept (exact) unless it is more than this times the JPEG


@dataclass(frozen=True)
class Thumbnail:
    """A thumbnail ready to embed, or why there is none.

    Attributes
    ----------
    data_url : str or None
        ``data:image/jpeg;base64,...`` or ``data:image/png;base64,...``; ``None`` if the image
        could not be read.
    width, height : int
        Size of the encoded image in pixels (0 when there is none).
    has_alpha : bool
        Whether the thumbnail has transparent pixels (shown on a checkerboard).
    reason : str or None
        Why there is no thumbnail, e.g. ``"file not found"``.
    nbytes : int
        Size of the encoded image (before base64).
    """

    data_url: str | None
    width: int = 0
    height: int = 0
    has_alpha: bool = False
    reason: str | None = None
    nbytes: int = 0

    @classmethod
    def unreadable(cls, reason: str) -> "Thumbnail":
        """A thumbnail that is only its ``reason``."""
        return cls(None, reason=reason)


@dataclass(frozen=True)
class ImageViews:
    """The two views of one image in the report.

    Attributes
    ----------
    thumbnail : Thumbnail
        The original, reduced (or why it cannot be shown).
    model_input : numpy.ndarray or None
        ``uint8 [h, w, c]`` as the model's :class:`~storage.images.ImageSpec`; ``None`` if the
        image could not be read.
    """

    thumbnail: Thumbnail
    model_input: np.ndarray | None = field(default=None, compare=False)

    @property
    def nbytes(self) -> int:
        """What the views add to the report, about (the model input counted raw)."""
        return self.thumbnail.nbytes + (0 if self.model_input is None else int(self.model_input.nbytes))


def image_to_uint8(image: np.ndarray) -> np.ndarray:
    """``uint8 [h, w, c]`` (``c`` 1 to 4, alpha kept) of a decoded image or array row.

    Value ranges as :mod:`storage.images`: bool -> 0/255, uint16 / 257, other integers clipped
    to [0, 255], floats scaled by 255 when every finite value is in [0, 1] (NaN -> 0).

    Raises
    ------
    ValueError
        Not ``[h, w]`` / ``[h, w, 1..4]``, 0 pixels, or not a bool, integer or float array.
    """
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4) or 0 in array.shape[:2]:
        raise ValueError(f"cannot show an image of shape {np.shape(image)}")
    kind = array.dtype.kind
    if kind not in "biuf":
        raise ValueError(f"cannot show an image of dtype {array.dtype}")
    if array.dtype == np.uint8:
        return array
    if kind == "b":
        return np.where(array, np.uint8(255), np.uint8(0))
    if array.dtype == np.uint16:
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if kind in "iu":
        return np.clip(array, 0, 255).astype(np.uint8)
    finite = array[np.isfinite(array)]
    unit = finite.size > 0 and finite.min() >= 0 and finite.max() <= 1
    values = np.nan_to_num(np.clip(array.astype(np.float32), 0, 255), nan=0.0)
    return np.rint(values * 255 if unit else values).clip(0, 255).astype(np.uint8)


def make_thumbnail(image: np.ndarray, max_px: int = THUMB_PX) -> Thumbnail:
    """The thumbnail of a decoded image (any layout and dtype of :func:`image_to_uint8`).

    The image is reduced with a Lanczos filter, keeping its aspect ratio, to at most
    ``max_px`` on its long side (a smaller image keeps its size), then encoded: PNG where it
    has transparent pixels, or 256 colours at most before reduction and a PNG no more than 1.5
    times the JPEG (exact where it was not reduced); JPEG otherwise. An encoding over :data:`MAX_THUMB_BYTES` is replaced by a JPEG of lower
    quality (composited on white where it had alpha).
    """
    pixels = image_to_uint8(image)
    if pixels.shape[2] in (2, 4) and pixels[:, :, -1].min() == 255:
        pixels = pixels[:, :, :-1]  # an opaque alpha channel only costs bytes
    has_alpha = pixels.shape[2] in (2, 4)
    picture = Image.fromarray(np.ascontiguousarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels))
    few_colours = not has_alpha and picture.getcolors(256) is not None  # icons, drawings, small images
    picture.thumbnail((max_px, max_px), Image.Resampling.LANCZOS, reducing_gap=3.0)
    mime, data = _encode(picture, has_alpha, few_colours)
    if len(data) > MAX_THUMB_BYTES:
        mime, data, has_alpha = "image/jpeg", _jpeg(_flatten(picture), small=True), False
    url = f"data:{mime};base64," + base64.b64encode(data).decode("ascii")
    return Thumbnail(url, picture.width, picture.height, has_alpha, None, len(data))


def read_image_views(
    requests: Sequence[tuple[str, Mapping[str, Any] | None]],
    spec: ImageSpec,
    *,
    max_px: int = THUMB_PX,
    budget_bytes: int = MAX_REPORT_IMAGE_BYTES,
    threads: int = READ_THREADS,
) -> list[ImageViews]:
    """The views of each requested image, in request order; never raises for an image.

    Parameters
    ----------
    requests : sequence of (str, mapping)
        ``(uri, storage_options)`` of each image, in the order the report shows them. The same
        pair twice is read once.
    spec : ImageSpec
        The model's input geometry (the model-input view).
    max_px : int
        Long side of the thumbnails.
    budget_bytes : int
        Once the views read add up to this (:attr:`ImageViews.nbytes`), the images after them
        are not read; their thumbnail's reason says so.
    threads : int
        Image files fetched and decoded at once.

    Returns
    -------
    list of ImageViews
        One per request.
    """
    started = time.perf_counter()
    keys = [(uri, _options_key(options)) for uri, options in requests]
    options_of = {key: dict(options or {}) for key, (_, options) in zip(keys, requests)}
    todo = list(dict.fromkeys(keys))
    views: dict[tuple[str, str], ImageViews] = {}
    used, step = 0, max(1, 4 * threads)
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="thumbnail") as pool:
        for low in range(0, len(todo), step):
            chunk = todo[low : low + step]
            if used >= budget_bytes:
                break
            read = _read_chunk(chunk, options_of, spec, max_px, pool)
            for key in chunk:  # in display order: the budget cuts at the same image every run
                view = read[key]
                if used + view.nbytes > budget_bytes:
                    used = budget_bytes
                    break
                views[key], used = view, used + view.nbytes
    over = ImageViews(Thumbnail.unreadable(f"not shown: the report's images reached their cap of {budget_bytes >> 10} KiB"))
    out = [views.get(key, over) for key in keys]
    unreadable = sum(view.thumbnail.data_url is None for view in views.values())
    log.info("report images: %d read (%d unreadable, %d over the size cap) in %.1f s, %d KiB",
             len(views), unreadable, len(todo) - len(views), time.perf_counter() - started, used >> 10)
    return out


def _options_key(options: Mapping[str, Any] | None) -> str:
    """A hashable stand-in for storage options (the same options give the same key)."""
    return json.dumps(dict(options or {}), sort_keys=True, default=repr)


def _read_chunk(chunk, options_of, spec: ImageSpec, max_px: int, pool: ThreadPoolExecutor) -> dict:
    """The views of the keys of ``chunk``: array rows per array here, files on ``pool``."""
    out = {}
    refs: dict[tuple[str, str], list[tuple[tuple[str, str], int]]] = defaultdict(list)
    files = []
    for key in chunk:
        uri = key[0]
        ref = _ROW_REF.match(uri)
        if not uri:
            out[key] = ImageViews(Thumbnail.unreadable("empty uri"))
        elif ref:
            refs[(ref["url"], key[1])].append((key, int(ref["row"])))
        else:
            files.append(key)
    futures = {key: pool.submit(_file_views, key[0], options_of[key], spec, max_px) for key in files}
    for (array_url, _), rows in refs.items():
        out.update(_array_views(array_url, rows, options_of[rows[0][0]], spec, max_px))
    for key, future in futures.items():
        out[key] = future.result()
    return out


def _file_views(uri: str, options: Mapping[str, Any], spec: ImageSpec, max_px: int) -> ImageViews:
    """Fetch, decode (reduced) and convert one image file."""
    try:
        data = _fetch(uri, options)
        cover = (max(max_px, spec.height), max(max_px, spec.width))
        decoded = decode_image(data, uri, min_size=cover)
        return _views(decoded, spec, max_px, uri)
    except Exception as exc:  # a thumbnail never fails the report, nor the query job
        return ImageViews(Thumbnail.unreadable(_reason(exc)))


def _fetch(uri: str, options: Mapping[str, Any]) -> bytes:
    """The bytes of one image file, at most :data:`MAX_SOURCE_BYTES`.

    A local device, pipe or socket is refused before it is opened (it could block forever).
    """
    fs, path = url_to_fs(uri, options)
    if is_local(fs):
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(info.st_mode):
            raise _Unreadable("not a regular file (a device, pipe or socket)")
    data = retry_call(f"reading {uri}", fs.cat_file, path, start=0, end=MAX_SOURCE_BYTES + 1)
    if len(data) > MAX_SOURCE_BYTES:
        raise _Unreadable(f"file too large for a thumbnail (over {MAX_SOURCE_BYTES >> 20} MiB)")
    return data


def _array_views(array_url: str, rows, options: Mapping[str, Any], spec: ImageSpec, max_px: int) -> dict:
    """The views of rows of one array (``(key, row)`` pairs): the rows are the originals."""
    try:
        native = open_corpus(array_url, options).native_spec()
        if native is None:
            raise _Unreadable(f"{array_url} is not an array")
        data = UriListCorpus(array_url, options, [key[0] for key, _ in rows]).read(native)
    except Exception as exc:  # the array cannot be opened: every row says why
        reason = ImageViews(Thumbnail.unreadable(f"cannot read array ({_reason(exc)})"))
        return {key: reason for key, _ in rows}
    out = {rows[int(e.image_id)][0]: ImageViews(Thumbnail.unreadable(e.reason)) for e in data.errors}
    for image_id, pixels in zip(data.ids.tolist(), data.pixels):
        try:
            out[rows[image_id][0]] = _views(pixels, spec, max_px, rows[image_id][0][0])
        except Exception as exc:
            out[rows[image_id][0]] = ImageViews(Thumbnail.unreadable(_reason(exc)))
    return out


def _views(image: np.ndarray, spec: ImageSpec, max_px: int, uri: str) -> ImageViews:
    return ImageViews(make_thumbnail(image, max_px), convert(image, spec, uri))


class _Unreadable(Exception):
    """Why an image is not read; its message is the reason shown."""


def _reason(exc: BaseException) -> str:
    """A short, credential-free reason for an image that could not be read."""
    if isinstance(exc, ImageReadError):
        return getattr(exc, "reason", None) or str(exc)
    if isinstance(exc, _Unreadable):
        return str(exc)
    if known := file_error_reason(exc):
        return known
    if isinstance(exc, StorageUnavailableError):
        return "storage unavailable"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"cannot read ({type(exc).__name__}{': ' + text[:200] if text else ''})"


def _encode(picture: Image.Image, has_alpha: bool, few_colours: bool) -> tuple[str, bytes]:
    """(MIME type, bytes): PNG for alpha, or for few colours unless much larger than JPEG."""
    if has_alpha:
        return "image/png", _png(picture)
    jpeg = _jpeg(picture)
    if not few_colours:
        return "image/jpeg", jpeg
    png = _png(_palette(picture) if picture.getcolors(256) is not None else picture)
    return ("image/png", png) if len(png) <= _PNG_OVER_JPEG * len(jpeg) else ("image/jpeg", jpeg)


def _png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _jpeg(picture: Image.Image, small: bool = False) -> bytes:
    """JPEG (4:2:0, optimised) at the best quality under :data:`MAX_THUMB_BYTES` (``small``) or 85."""
    data = b""
    for quality in _JPEG_QUALITIES if small else _JPEG_QUALITIES[:1]:
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=quality, optimize=True)
        data = buffer.getvalue()
        if len(data) <= MAX_THUMB_BYTES:
            break
    return data


def _palette(picture: Image.Image) -> Image.Image:
    """An RGB image of at most 256 colours as an exact palette image (grey stays ``L``)."""
    if picture.mode != "RGB":
        return picture
    rgb = np.asarray(picture).reshape(-1, 3)
    colours, index = np.unique(rgb, axis=0, return_inverse=True)
    paletted = Image.fromarray(index.reshape(picture.height, picture.width).astype(np.uint8))
    paletted.putpalette(colours.astype(np.uint8).tobytes())
    return paletted


def _flatten(picture: Image.Image) -> Image.Image:
    """The picture without alpha, composited on white."""
    if picture.mode not in ("LA", "RGBA"):
        return picture
    background = Image.new("RGBA", picture.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, picture.convert("RGBA")).convert("RGB")

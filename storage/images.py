"""Decoding of image files and conversion of images to the model's input geometry.

Every image, whatever its source (an image file, a row of an IDX/npy/Zarr array), is
converted to ``uint8 [spec.height, spec.width, spec.channels]`` by :func:`convert` with the
following rules, applied in this order:

1. **Layout.** ``[h, w]`` is grey; ``[h, w, c]`` has ``c`` = 1 (grey), 2 (grey + alpha),
   3 (RGB) or 4 (RGBA). An image with 0 pixels is an error.
2. **Value range** (to ``uint8``):

   * ``uint8``: unchanged;
   * ``bool``: ``False`` -> 0, ``True`` -> 255;
   * ``uint16``: divided by 257 and rounded (65535 -> 255);
   * other integer types: clipped to [0, 255];
   * floating point: decided per image. If every finite value lies in [0, 1] the image is
     multiplied by 255, otherwise it is taken as already being on the 0-255 scale; then it is
     rounded to the nearest integer and clipped to [0, 255]. NaN pixels become 0 and +/-inf
     clip to 255/0; an image whose values are all NaN is an error.
3. **Alpha** (grey + alpha, RGBA): the image is composited on black, i.e. each colour value is
   multiplied by ``alpha / 255`` and rounded, then the alpha channel is dropped.
   *Canonical form*: where ``spec.rules`` asks for it (a model card's ``"input"``), a plain
   background becomes black and the image is centred (on its brightness or its bounding box)
   here, in colour, by the rules of :mod:`storage.canonical` (an image that step 5 resizes is moved by the exact
   fraction of a pixel within the resize instead); by default neither is done. The levels and
   mirror rules of :mod:`storage.canonical`, where asked for, stretch and flip the result of step 5.
4. **Channels.** RGB -> grey uses the ITU-R 601-2 luma transform, bit-exact with Pillow's
   ``convert("L")``: ``L = (19595 R + 38470 G + 7471 B + 32768) >> 16``, i.e.
   ``R * 299/1000 + G * 587/1000 + B * 114/1000`` rounded. Grey -> RGB replicates the grey
   value into the three channels.
5. **Size.** When ``(h, w)`` differs from ``(spec.height, spec.width)`` the image is scaled,
   keeping its aspect ratio, by the smallest factor that makes it cover the target (for a
   square target: its shorter side becomes the target size, the longer side is truncated to
   an integer as torchvision does) with Pillow's bilinear filter, which antialiases when
   downscaling; the longer side is then centre-cropped (the offset ``round((long - target) / 2)``
   rounds half to even, as torchvision's ``CenterCrop``). This is the CLIP / torchvision
   ``Resize`` + ``CenterCrop`` convention. An image that already has the target size is never
   resampled, so its pixels pass through bit-exact.

Decoding (:func:`decode_image`) uses Pillow and only reads the first frame of animated or
multi-page files. Pillow modes map to arrays as follows: ``1`` -> bool, ``L`` -> uint8,
``I;16*`` -> uint16, ``I`` -> int32, ``F`` -> float32, ``LA`` -> grey + alpha, ``RGB`` and
``RGBA`` unchanged, palette images (``P``, ``PA``) go through Pillow's conversion to RGB (or
RGBA when the palette has transparency), and other modes (CMYK, YCbCr, LAB, HSV...) are
converted to RGB by Pillow. EXIF orientation tags are not applied.

**Reduced decoding.** Given the size the image will be scaled to cover
(``decode_image(data, uri, min_size=(h, w))``; the corpus readers pass the model's input
size through :func:`decode_and_convert`), the image is decoded no larger than needed: by an
integer factor ``f`` (each side divided by ``f``, rounded up) chosen as large as keeps both
sides at least :data:`REDUCING_GAP` (3) times the size that covers ``(h, w)``, so that the
final bilinear resize gives practically the pixels of the full image's resize (on 28 x 28
grey the mean absolute difference is well under one grey level, ``tests/test_decode.py``). A
JPEG is decoded at 1/2, 1/4 or 1/8 size by libjpeg's DCT scaling (``Image.draft``), so that
its full-size pixels never exist; Pillow's box ``reduce`` (premultiplied by alpha) does the
rest, and the whole of it for other formats. The mode conversions, alpha compositing on black
and RGB -> grey included, are then done by Pillow on the reduced image, bit-exact with the
rules above. An image too small for a factor of 2 (for a square target, a shorter side under
``2 * REDUCING_GAP`` times the target's side: under 168 pixels for 28 x 28) is not reduced and
is converted bit for bit as ``convert(decode_image(data, uri), spec)``.

Decompression bombs: an image is refused ("image too large") when the pixels it would decode
exceed twice ``PIL.Image.MAX_IMAGE_PIXELS`` (Pillow's own limit, 179 M pixels by default); a
JPEG counts at its reduced size, so a 100 M-pixel photo read for a small model decodes about
1.6 M pixels and is read without Pillow's warning. Other formats are decoded whole by Pillow
before their reduction, so their memory is bounded by Pillow's limit only.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, JpegImagePlugin, UnidentifiedImageError

from storage.canonical import InputRules, luma
from storage.errors import ImageReadError

__all__ = [
    "REDUCING_GAP",
    "ImageSpec",
    "decode_image",
    "decode_and_convert",
    "convert",
    "convert_batch",
]

# Largest image (in pixels) the "scale to cover" step may produce: an image of extreme aspect
# ratio (e.g. 1 x 10 million pixels, a few KB as a PNG) would otherwise be scaled to billions
# of pixels. 64 Mi pixels is far above any real photo scaled to a model input.
MAX_RESIZE_PIXELS = 1 << 26

# A reduced decode stays at least this many times the size it is finally resized to, as
# Pillow's ``reducing_gap``: at 3 the bilinear resize that follows gives practically the
# result of resizing the full image.
REDUCING_GAP = 3.0

_JPEG_SOI = b"\xff\xd8\xff"

_NATIVE_MODES = frozenset({"1", "L", "LA", "RGB", "RGBA", "I", "F"})
_ALPHA_MODES = {"La": "LA", "PA": "RGBA", "RGBa": "RGBA"}


@dataclass(frozen=True)
class ImageSpec:
    """Geometry of the model's input images.

    Parameters
    ----------
    height, width : int
        Size in pixels, both >= 1.
    channels : int
        1 for grey, 3 for RGB.
    rules : storage.canonical.InputRules, optional
        The canonical-form rules (background, centre) applied after alpha compositing and
        before the resize; none by default. A model card says which its model uses.
    placements : tuple of storage.canonical.InputRules, optional
        More placements of each image, each by its own rules: the converted image is the
        placements one below the other (``rules``' first), ``height`` rows each.
    """

    height: int
    width: int
    channels: int
    rules: InputRules = field(default_factory=InputRules)
    placements: tuple[InputRules, ...] = ()

    def __post_init__(self) -> None:
        for name in ("height", "width", "channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"ImageSpec.{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.height < 1 or self.width < 1:
            raise ValueError(f"ImageSpec height and width must be >= 1, got {self.height}x{self.width}")
        if self.channels not in (1, 3):
            raise ValueError(f"ImageSpec.channels must be 1 (grey) or 3 (RGB), got {self.channels}")
        if not isinstance(self.rules, InputRules):
            raise ValueError(f"ImageSpec.rules must be an InputRules, got {self.rules!r}")
        object.__setattr__(self, "placements", tuple(self.placements))
        if not all(isinstance(rules, InputRules) for rules in self.placements):
            raise ValueError(f"ImageSpec.placements must be InputRules, got {self.placements!r}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(height, width, channels)`` of one converted image, its placements one below the other."""
        return (self.height * (1 + len(self.placements)), self.width, self.channels)

    def each(self) -> tuple["ImageSpec", ...]:
        """One spec per placement, without placements of its own: ``rules`` first."""
        return tuple(ImageSpec(self.height, self.width, self.channels, rules=rules) for rules in (self.rules, *self.placements))


def _image_error(uri: str, reason: str) -> ImageReadError:
    """An :class:`ImageReadError` for ``uri`` whose short ``reason`` is kept as an attribute."""
    error = ImageReadError(f"cannot read image {uri or '<array>'}: {reason}")
    error.reason = reason
    return error


def decode_image(
    data: bytes, uri: str, min_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode the bytes of an image file with Pillow, reduced when ``min_size`` allows.

    Parameters
    ----------
    data : bytes
        Content of the file.
    uri : str
        Where the bytes come from, used in error messages only.
    min_size : (int, int), optional
        ``(height, width)`` the caller will scale the image to cover. When given, the image
        may come back reduced by an integer factor as described under "Reduced decoding" in
        the module docstring: still at least :data:`REDUCING_GAP` times the size that covers
        ``min_size``, each side the original one divided by the factor and rounded up. An
        image too small to be reduced comes back exactly as without ``min_size``.

    Returns
    -------
    numpy.ndarray
        ``[h, w]`` or ``[h, w, c]`` array as described in the module docstring (colour and
        alpha kept), ready for :func:`convert`. A reduced bilevel (``1``) image comes back as
        ``uint8`` grey.

    Raises
    ------
    ImageReadError
        The bytes are empty, not an image, truncated, corrupt or too large to decode;
        ``error.reason`` holds a short reason such as ``"truncated image"``.
    ValueError
        ``min_size`` is not two integers >= 1.
    """
    target = _check_min_size(min_size)
    with _decoding(uri):
        image, _ = _load(_open(data, uri), uri, target)
        return _pillow_to_array(image)


def decode_and_convert(data: bytes, uri: str, spec: ImageSpec) -> np.ndarray:
    """Decode an image file straight to ``uint8 [spec.height, spec.width, spec.channels]``.

    What the corpus readers use: :func:`decode_image` reduced for ``spec``'s size, with the
    colour conversions and the final bilinear resize done by Pillow on the reduced image. The
    result is ``convert(decode_image(data, uri), spec, uri)`` bit for bit when the image is
    not reduced (for a square target: its shorter side is under ``2 * REDUCING_GAP`` times
    the target's side, 168 pixels for 28 x 28), and close to it otherwise (see the module
    docstring).

    Parameters
    ----------
    data : bytes
        Content of the file.
    uri : str
        Where the bytes come from, used in error messages only.
    spec : ImageSpec
        Target geometry.

    Returns
    -------
    numpy.ndarray
        The converted image.

    Raises
    ------
    ImageReadError
        As :func:`decode_image` and :func:`convert`.
    """
    with _decoding(uri):
        image = _open(data, uri)
        _check_cover_size(image.height, image.width, spec, uri)  # before any pixel is decoded
        image, scale = _load(image, uri, (spec.height, spec.width))
        if spec.placements:  # decoded once, converted by each placement's rules
            return np.concatenate([_model_input(image, scale, one, uri) for one in spec.each()])
        return _model_input(image, scale, spec, uri)


@contextmanager
def _decoding(uri: str) -> Iterator[None]:
    """Pillow's failures while decoding ``uri`` as one-line :class:`ImageReadError`s."""
    try:
        yield
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise _image_error(uri, "cannot identify image file") from None
    except Image.DecompressionBombError as exc:
        raise _image_error(uri, f"image too large ({exc})") from None
    except Exception as exc:  # Pillow plugins raise many exception types on malformed input
        if "truncated" in str(exc):
            raise _image_error(uri, "truncated image") from None
        raise _image_error(uri, f"corrupt image ({type(exc).__name__}: {exc})") from None


def _check_min_size(min_size: tuple[int, int] | None) -> tuple[int, int] | None:
    if min_size is None:
        return None
    try:
        height, width = min_size
    except (TypeError, ValueError):
        height = width = None
    if not all(_is_int(v) and v >= 1 for v in (height, width)):
        raise ValueError(f"min_size must be (height, width), two integers >= 1, got {min_size!r}")
    return int(height), int(width)


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _open(data: bytes, uri: str) -> Image.Image:
    """Open ``data`` without decoding its pixels.

    A JPEG is opened by Pillow's JPEG plugin itself, which skips ``Image.open``'s pixel limit:
    a JPEG is decoded reduced, so :func:`_load` checks the size it will decode instead.
    """
    if not data:
        raise _image_error(uri, "empty file")
    if data.startswith(_JPEG_SOI):
        try:
            return JpegImagePlugin.jpeg_factory(io.BytesIO(data))
        except Exception:  # not a JPEG after all: Image.open tries every format, as always
            pass
    return Image.open(io.BytesIO(data))


def _load(
    image: Image.Image, uri: str, target: tuple[int, int] | None
) -> tuple[Image.Image, tuple[int, int, int]]:
    """Decode the opened ``image``, reduced when an integer factor keeps it covering ``target`` with a
    margin of :data:`REDUCING_GAP`; modes other than ``1``, ``L``, ``LA``, ``RGB``, ``RGBA``,
    ``I``, ``F`` and ``I;16*`` are converted as the module docstring says.

    Returns the image and ``(factor, full height, full width)``.
    """
    full_width, full_height = image.size
    factor = 1
    wanted = None if target is None else _wanted_size(full_height, full_width, target)
    if wanted is not None and isinstance(image, JpegImagePlugin.JpegImageFile):
        if min(full_width // wanted[1], full_height // wanted[0]) >= 2:
            drafted = image.draft(None, (wanted[1], wanted[0]))  # DCT scaling: 1/2, 1/4, 1/8
            if drafted is not None:
                factor = round(full_width / drafted[1][2])
    _check_decoded_size(image.size, uri)
    image.load()
    image = _native_mode(image)
    if wanted is not None:
        width, height = image.size
        extra = min(width // wanted[1], height // wanted[0])
        if extra >= 2:
            image = _reduce(image, extra)
            factor *= extra
    return image, (factor, full_height, full_width)


def _wanted_size(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    """The smallest size a reduced image may have: REDUCING_GAP times its cover size."""
    cover_height, cover_width = _cover_size(height, width, target)
    return math.ceil(cover_height * REDUCING_GAP), math.ceil(cover_width * REDUCING_GAP)


def _check_decoded_size(size: tuple[int, int], uri: str) -> None:
    """Refuse to decode more pixels than Pillow's decompression-bomb limit allows."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and size[0] * size[1] > 2 * limit:
        raise _image_error(
            uri,
            f"image too large ({size[0]}x{size[1]} pixels to decode, more than twice "
            f"PIL.Image.MAX_IMAGE_PIXELS = {limit}; raise that limit to read it)",
        )


def _native_mode(image: Image.Image) -> Image.Image:
    """``image`` in one of the modes that map to arrays directly (module docstring)."""
    mode = image.mode
    if mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if mode in _ALPHA_MODES:
        return image.convert(_ALPHA_MODES[mode])
    if mode not in _NATIVE_MODES and not mode.startswith("I;16"):
        return image.convert("RGB")
    return image


def _reduce(image: Image.Image, factor: int) -> Image.Image:
    """Pillow's box reduction (premultiplied for LA and RGBA), for every native mode."""
    if image.mode == "1":
        return image.convert("L").reduce(factor)
    if image.mode.startswith("I;16"):
        return image.convert("I").reduce(factor).convert(image.mode)
    return image.reduce(factor)


def _pillow_to_array(image: Image.Image) -> np.ndarray:
    if image.mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)
    return np.asarray(image)


def _model_input(
    image: Image.Image, scale: tuple[int, int, int], spec: ImageSpec, uri: str
) -> np.ndarray:
    """The rules of :func:`convert` applied by Pillow to a decoded 8-bit image."""
    factor, full_height, full_width = scale
    if image.mode not in ("L", "LA", "RGB", "RGBA"):  # 1, I;16*, I, F: one band
        if factor == 1:
            return convert(_pillow_to_array(image), spec, uri)
        grey, ok = _to_uint8(_pillow_to_array(image)[np.newaxis, :, :, np.newaxis])
        if not ok[0]:
            raise _image_error(uri, "all pixel values are NaN")
        image = Image.fromarray(grey[0, :, :, 0])
    if image.mode in ("LA", "RGBA"):  # composited on black: colour * alpha / 255, rounded
        premultiplied = image.convert(image.mode[:-1] + "a")
        bands = premultiplied.split()[:-1]
        image = bands[0] if len(bands) == 1 else Image.merge("RGB", bands)
    cover_height, cover_width = _cover_size(full_height, full_width, (spec.height, spec.width))
    resized = factor > 1 or image.size != (cover_width, cover_height)
    shift = None
    if spec.rules.active:
        array = np.asarray(image).reshape(image.height, image.width, -1)
        # an image that is resized is centred by a fractional move within the resize instead
        canonical = spec.rules.apply(array, centre=not resized)
        if resized:
            shift = spec.rules.shift(canonical)
        if canonical is not array:
            image = Image.fromarray(canonical[..., 0] if canonical.shape[2] == 1 else canonical)
    if spec.channels == 1 and image.mode == "RGB":
        image = image.convert("L")  # ITU-R 601-2, the rule of convert
    if resized:  # with factor > 1 the box keeps the reduced image's geometry exactly that of the original
        box = (0.0, 0.0, full_width / factor, full_height / factor)
        image = _resize_moved(image, (cover_width, cover_height), box, shift)
    top = round((cover_height - spec.height) / 2)
    left = round((cover_width - spec.width) / 2)
    array = np.asarray(image)[top : top + spec.height, left : left + spec.width]
    array = array.reshape(spec.height, spec.width, -1)
    if array.shape[2] != spec.channels:  # grey resized once, then replicated
        array = np.repeat(array, spec.channels, axis=2)
    return np.ascontiguousarray(spec.rules.finish(array[np.newaxis])[0])


def _resize_moved(image: Image.Image, size: tuple[int, int], box: tuple[float, ...], shift: tuple[float, float] | None) -> Image.Image:
    """``image``'s ``box`` resized to ``size``, its content moved by ``shift`` (``dy, dx``, in
    pixels of ``image``) first, black coming in at the edges. A centred image is filtered with
    black beyond its edges even when ``shift`` is zero, as its moved copies are; ``None`` (no
    centring) resizes the image as it is."""
    if shift is None:
        return image.resize(size, Image.Resampling.BILINEAR, box=box)
    dy, dx = shift
    pad = int(np.ceil(max(abs(dy), abs(dx)))) + 1  # Pillow takes no box beyond the image
    padded = Image.new(image.mode, (image.width + 2 * pad, image.height + 2 * pad))
    padded.paste(image, (pad, pad))
    x0, y0, x1, y1 = box
    return padded.resize(size, Image.Resampling.BILINEAR, box=(x0 + pad - dx, y0 + pad - dy, x1 + pad - dx, y1 + pad - dy))


def convert(image: np.ndarray, spec: ImageSpec, uri: str = "") -> np.ndarray:
    """Convert one decoded image to ``uint8 [spec.height, spec.width, spec.channels]``.

    Parameters
    ----------
    image : numpy.ndarray
        ``[h, w]`` or ``[h, w, c]`` with c in 1, 2, 3, 4; bool, integer or float.
    spec : ImageSpec
        Target geometry.
    uri : str, optional
        Where the image comes from, used in error messages only.

    Returns
    -------
    numpy.ndarray
        The converted image. When ``image`` already is ``uint8`` of the target shape it is
        returned without copy (it may share memory with the input).

    Raises
    ------
    ImageReadError
        Unsupported shape or dtype, 0 pixels, or only NaN values.
    """
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    if array.ndim != 3:
        raise _image_error(uri, f"unsupported image shape {array.shape}; expected [h, w] or [h, w, c]")
    pixels, ok = convert_batch(array[np.newaxis], spec, uri)
    if not ok[0]:
        raise _image_error(uri, "all pixel values are NaN")
    return pixels[0]


def convert_batch(
    images: np.ndarray, spec: ImageSpec, uri: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """Convert a stack of same-shaped images, vectorised where the rules allow.

    Parameters
    ----------
    images : numpy.ndarray
        ``[n, h, w]`` or ``[n, h, w, c]`` with c in 1, 2, 3, 4.
    spec : ImageSpec
        Target geometry.
    uri : str, optional
        Where the images come from, used in error messages only.

    Returns
    -------
    pixels : numpy.ndarray
        ``uint8 [m, spec.height, spec.width, spec.channels]``: the images that could be
        converted, in input order.
    ok : numpy.ndarray
        ``bool [n]``; False for the images that are all NaN (the only per-image failure).

    Raises
    ------
    ImageReadError
        The stack as a whole has an unsupported shape or dtype, or 0 pixels per image.
    """
    batch = np.asarray(images)
    if batch.ndim == 3:
        batch = batch[..., np.newaxis]
    _check_batch(batch, uri)
    if batch.dtype == np.uint8 and batch.shape[1:] == spec.shape and not spec.rules.active and not spec.placements:
        return np.ascontiguousarray(batch), np.ones(len(batch), dtype=bool)
    _check_cover_size(*batch.shape[1:3], spec, uri)
    batch, ok = _to_uint8(batch)
    batch = _drop_alpha(batch)
    parts = [_placed(batch, one) for one in spec.each()]  # dtype and alpha converted once for every placement
    return (parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)), ok


def _placed(batch: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """``batch`` (``uint8``, alpha composited) by ``spec``'s rules, at its size (one placement)."""
    shifts = [None] * len(batch)
    if spec.rules.active:
        # as in _model_input: an image that is resized is centred by a fractional move within the resize
        resizing = _cover_size(*batch.shape[1:3], (spec.height, spec.width)) != batch.shape[1:3]
        batch = np.stack([spec.rules.apply(image, centre=not resizing) for image in batch]) if len(batch) else batch
        if resizing:
            shifts = [spec.rules.shift(image) for image in batch]
    batch = _match_channels(batch, spec.channels)
    if batch.shape[1:3] != (spec.height, spec.width):
        resized = np.empty((len(batch), *spec.shape), dtype=np.uint8)
        for i, image in enumerate(batch):
            resized[i] = _resize_crop(image, spec, shifts[i])
        batch = resized
    return np.ascontiguousarray(spec.rules.finish(batch))


def _check_batch(batch: np.ndarray, uri: str) -> None:
    if batch.ndim != 4 or batch.shape[3] not in (1, 2, 3, 4):
        raise _image_error(
            uri,
            f"unsupported image shape {batch.shape[1:]}; expected [h, w] or [h, w, c] "
            "with c in 1 (grey), 2 (grey + alpha), 3 (RGB), 4 (RGBA)",
        )
    if batch.dtype.kind not in "biuf":
        raise _image_error(uri, f"unsupported pixel dtype {batch.dtype}; expected bool, integer or float")
    if batch.shape[1] == 0 or batch.shape[2] == 0:
        raise _image_error(uri, f"image has 0 pixels (shape {batch.shape[1:]})")


def _check_cover_size(height: int, width: int, spec: ImageSpec, uri: str) -> None:
    new_height, new_width = _cover_size(height, width, (spec.height, spec.width))
    if new_height * new_width > MAX_RESIZE_PIXELS:
        raise _image_error(
            uri,
            f"aspect ratio too extreme ({height}x{width} pixels): scaling it to cover "
            f"{spec.height}x{spec.width} would take {new_height}x{new_width} pixels",
        )


def _cover_size(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    """Size of an image scaled, keeping its aspect ratio, to just cover ``target`` (h, w)."""
    target_height, target_width = target
    if target_height * width >= target_width * height:
        return target_height, max(target_width, width * target_height // height)
    return max(target_height, height * target_width // width), target_width


def _to_uint8(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = np.ones(len(batch), dtype=bool)
    if not batch.dtype.isnative:
        batch = batch.astype(batch.dtype.newbyteorder("="))
    if batch.dtype == np.uint8:
        return batch, ok
    if batch.dtype.kind == "b":
        return np.where(batch, np.uint8(255), np.uint8(0)), ok
    if batch.dtype == np.uint16:
        # (x + 128) // 257 rounds x / 257 to nearest; ties cannot occur.
        return ((batch.astype(np.uint32) + 128) // 257).astype(np.uint8), ok
    if batch.dtype.kind in "iu":
        return np.clip(batch, 0, 255).astype(np.uint8), ok
    return _float_to_uint8(batch)


def _float_to_uint8(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = batch.reshape(len(batch), -1)
    ok = ~np.isnan(flat).all(axis=1)
    if not ok.all():
        batch, flat = batch[ok], flat[ok]
    # Clipping first is exact for both rules and keeps huge values finite in float32.
    values = np.clip(batch, 0, 255).astype(np.float32)
    if len(batch):
        low, high = np.nanmin(flat, axis=1), np.nanmax(flat, axis=1)
        unit_range = (low >= 0) & (high <= 1)
        values *= np.where(unit_range, 255.0, 1.0).astype(np.float32).reshape(-1, 1, 1, 1)
    return np.rint(np.nan_to_num(values, nan=0.0)).astype(np.uint8), ok


def _drop_alpha(batch: np.ndarray) -> np.ndarray:
    if batch.shape[3] not in (2, 4):
        return batch
    colour = batch[..., :-1].astype(np.uint16)
    alpha = batch[..., -1:].astype(np.uint16)
    # (c * a + 127) // 255 rounds c * a / 255 to nearest; ties cannot occur.
    return ((colour * alpha + 127) // 255).astype(np.uint8)


def _match_channels(batch: np.ndarray, channels: int) -> np.ndarray:
    if batch.shape[3] == channels:
        return batch
    if channels == 3:
        return np.repeat(batch, 3, axis=3)
    return luma(batch)[..., np.newaxis]


def _resize_crop(image: np.ndarray, spec: ImageSpec, shift: tuple[float, float] | None = None) -> np.ndarray:
    """Scale ``image`` (uint8 [h, w, c]) to cover the target, moved by ``shift`` first, then centre-crop it."""
    height, width, channels = image.shape
    new_height, new_width = _cover_size(height, width, (spec.height, spec.width))
    if (new_height, new_width) != (height, width):
        pil = Image.fromarray(image[..., 0] if channels == 1 else image)
        pil = _resize_moved(pil, (new_width, new_height), (0.0, 0.0, float(width), float(height)), shift)
        image = np.asarray(pil).reshape(new_height, new_width, channels)
    top = round((new_height - spec.height) / 2)
    left = round((new_width - spec.width) / 2)
    return image[top : top + spec.height, left : left + spec.width]

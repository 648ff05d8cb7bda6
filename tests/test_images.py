"""Decoding and conversion of images to the model's input geometry (storage.images)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from corpus_helpers import encode, luma, png_bytes
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from storage.errors import ImageReadError
from storage.images import ImageSpec, convert, convert_batch, decode_image

GREY = ImageSpec(28, 28, 1)
RGB = ImageSpec(32, 32, 3)


# --- ImageSpec ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((28, 28, 2), "channels must be 1 (grey) or 3 (RGB)"),
        ((28, 28, 4), "channels must be 1 (grey) or 3 (RGB)"),
        ((0, 28, 1), "must be >= 1"),
        ((28, -1, 3), "must be >= 1"),
        ((28.0, 28, 1), "must be an integer"),
        ((True, 28, 1), "must be an integer"),
    ],
)
def test_image_spec_rejects_bad_geometry(args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ImageSpec(*args)


def test_image_spec_accepts_numpy_integers():
    spec = ImageSpec(np.int64(28), np.int32(20), np.uint8(3))
    assert spec == ImageSpec(28, 20, 3)
    assert type(spec.height) is int
    assert spec.shape == (28, 20, 3)


# --- decode_image -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "fmt", "shape", "dtype"),
    [
        (Image.new("L", (5, 4), 7), "PNG", (4, 5), np.uint8),
        (Image.new("RGB", (5, 4), (1, 2, 3)), "PNG", (4, 5, 3), np.uint8),
        (Image.new("RGBA", (5, 4), (1, 2, 3, 4)), "PNG", (4, 5, 4), np.uint8),
        (Image.new("LA", (5, 4), (1, 2)), "PNG", (4, 5, 2), np.uint8),
        (Image.new("1", (5, 4), 1), "PNG", (4, 5), np.bool_),
        (Image.fromarray(np.full((4, 5), 1000, np.uint16)), "PNG", (4, 5), np.uint16),
        (Image.fromarray(np.full((4, 5), 0.25, np.float32)), "TIFF", (4, 5), np.float32),
        (Image.new("RGB", (5, 4), (1, 2, 3)).convert("P"), "PNG", (4, 5, 3), np.uint8),
        (Image.new("CMYK", (5, 4), (0, 0, 0, 0)), "JPEG", (4, 5, 3), np.uint8),
    ],
    ids=["L", "RGB", "RGBA", "LA", "1", "I;16", "F", "P", "CMYK"],
)
def test_decode_image_modes(image, fmt, shape, dtype):
    array = decode_image(encode(image, fmt), "x")
    assert array.shape == shape
    assert array.dtype == dtype


def test_decode_palette_with_transparency_keeps_alpha():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    array = decode_image(encode(image, "PNG", transparency=0), "x")
    assert array.shape == (4, 4, 4)
    assert (array[..., 3] == 0).all()
    assert (convert(array, RGB) == 0).all()  # fully transparent red, composited on black


def _truncated_png() -> bytes:
    data = png_bytes(np.random.default_rng(1).integers(0, 256, (50, 50, 3), dtype=np.uint8))
    return data[: len(data) // 2]


def _truncated_jpeg() -> bytes:
    noise = np.random.default_rng(1).integers(0, 256, (50, 50, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "JPEG")
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"hello, I am text", "cannot identify image file"),
        (_truncated_png(), "truncated image"),
        (_truncated_jpeg(), "truncated image"),
    ],
    ids=["empty", "text", "truncated-png", "truncated-jpeg"],
)
def test_decode_image_errors_name_the_uri_and_reason(data, reason):
    with pytest.raises(ImageReadError, match=reason) as info:
        decode_image(data, "s3://bucket/broken.png")
    assert "s3://bucket/broken.png" in str(info.value)
    assert info.value.reason == reason


# --- convert: values ----------------------------------------------------------------------


def test_same_shape_uint8_passes_through_without_copy():
    image = np.random.default_rng(2).integers(0, 256, (28, 28, 1), dtype=np.uint8)
    out = convert(image, GREY)
    assert np.shares_memory(out, image)
    np.testing.assert_array_equal(out, image)
    np.testing.assert_array_equal(convert(image[..., 0], GREY), image)


def test_rgb_to_grey_matches_pillow():
    image = np.random.default_rng(3).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(image).convert("L"))
    np.testing.assert_array_equal(convert(image, GREY)[..., 0], expected)


def test_grey_to_rgb_replicates():
    image = np.random.default_rng(4).integers(0, 256, (32, 32), dtype=np.uint8)
    out = convert(image, RGB)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], image)


@pytest.mark.parametrize(
    ("image", "grey", "rgb"),
    [
        (np.full((28, 28, 3), (200, 100, 50), np.uint8), luma(200, 100, 50), (200, 100, 50)),
        (np.full((28, 28, 4), (255, 0, 0, 128), np.uint8), luma(128, 0, 0), (128, 0, 0)),
        (np.full((28, 28, 4), (9, 9, 9, 0), np.uint8), 0, (0, 0, 0)),
        (np.full((28, 28, 2), (200, 51), np.uint8), 40, (40, 40, 40)),
        (np.full((28, 28), 51400, np.uint16), 200, (200, 200, 200)),
        (np.full((28, 28), 65535, np.dtype(">u2")), 255, (255, 255, 255)),
        (np.full((28, 28), 385, np.uint16), 1, (1, 1, 1)),
        (np.full((28, 28), True), 255, (255, 255, 255)),
        (np.full((28, 28), 0.5, np.float32), 128, (128, 128, 128)),
        (np.full((28, 28), 1.0), 255, (255, 255, 255)),
        (np.full((28, 28), 7.0), 7, (7, 7, 7)),
        (np.full((28, 28), 300.0, np.float16), 255, (255, 255, 255)),
        (np.full((28, 28), -3.0), 0, (0, 0, 0)),
        (np.full((28, 28), 1000, np.int32), 255, (255, 255, 255)),
        (np.full((28, 28), -5, np.int8), 0, (0, 0, 0)),
        (np.full((28, 28), 77, np.int64), 77, (77, 77, 77)),
    ],
    ids=[
        "rgb", "rgba-half", "rgba-transparent", "la", "uint16", "uint16-big-endian",
        "uint16-rounding", "bool", "float-unit", "float-one", "float-255-scale", "float16-clip",
        "float-negative", "int32-clip", "int8-clip", "int64",
    ],
)
def test_uniform_images_convert_to_exact_values(image, grey, rgb):
    assert (convert(image, GREY) == grey).all()
    assert (convert(image, RGB) == np.array(rgb, np.uint8)).all()


def test_float_rule_is_decided_per_image():
    unit = np.linspace(0, 1, 28 * 28).reshape(28, 28)
    np.testing.assert_array_equal(convert(unit, GREY)[..., 0], np.rint(unit * 255))
    scaled = unit * 2  # leaves [0, 1]: taken on the 0-255 scale
    np.testing.assert_array_equal(convert(scaled, GREY)[..., 0], np.rint(scaled))


def test_nan_pixels_become_zero_and_infinities_clip():
    image = np.full((28, 28), 0.5)
    image[0, 0], image[0, 1], image[0, 2] = np.nan, np.inf, -np.inf
    out = convert(image, GREY)[..., 0]
    assert (out[0, 0], out[0, 1], out[0, 2]) == (0, 255, 0)
    assert out[1, 1] == 0  # with inf present the image is not in [0, 1]: 0.5 rounds to 0


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.full((28, 28), np.nan), "all pixel values are NaN"),
        (np.zeros((0, 28), np.uint8), "0 pixels"),
        (np.zeros((5, 0, 3), np.uint8), "0 pixels"),
        (np.zeros((28, 28, 5), np.uint8), "unsupported image shape"),
        (np.zeros((2, 28, 28, 1), np.uint8), "unsupported image shape"),
        (np.zeros(28, np.uint8), "unsupported image shape"),
        (np.zeros((28, 28), np.complex64), "unsupported pixel dtype"),
    ],
)
def test_convert_rejects_unusable_images(image, message):
    with pytest.raises(ImageReadError, match=message) as info:
        convert(image, GREY, uri="/data/x.npy#3")
    assert "/data/x.npy#3" in str(info.value)


# --- convert: geometry ----------------------------------------------------------------------


def test_short_side_already_at_target_is_only_centre_cropped():
    image = np.arange(28 * 56, dtype=np.uint32).reshape(28, 56).astype(np.uint8)
    np.testing.assert_array_equal(convert(image, GREY)[..., 0], image[:, 14:42])
    tall = np.ascontiguousarray(image.T)
    np.testing.assert_array_equal(convert(tall, GREY)[..., 0], tall[14:42, :])


def test_odd_crop_offset_rounds_half_to_even_like_torchvision():
    image = np.arange(28 * 31, dtype=np.uint32).reshape(28, 31).astype(np.uint8)
    # (31 - 28) / 2 = 1.5 -> 2, as torchvision's CenterCrop
    np.testing.assert_array_equal(convert(image, GREY)[..., 0], image[:, 2:30])


def test_downscale_is_pillow_bilinear_then_centre_crop():
    image = np.random.default_rng(5).integers(0, 256, (90, 60, 3), dtype=np.uint8)
    # the short side 60 -> 32, the long side 90 * 32 // 60 = 48, cropped to rows [8, 40)
    resized = np.asarray(Image.fromarray(image).resize((32, 48), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(convert(image, RGB), resized[8:40])


def test_non_square_target_covers_then_crops():
    image = np.random.default_rng(6).integers(0, 256, (20, 20), dtype=np.uint8)
    spec = ImageSpec(10, 30, 1)
    resized = np.asarray(Image.fromarray(image).resize((30, 30), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(convert(image, spec)[..., 0], resized[10:20])


@pytest.mark.parametrize("shape", [(7, 5), (100, 3), (29, 28), (300, 301)])
def test_uniform_image_stays_exact_when_resized(shape):
    image = np.full((*shape, 3), (10, 20, 30), np.uint8)
    assert (convert(image, RGB) == (10, 20, 30)).all()
    assert (convert(image, GREY) == luma(10, 20, 30)).all()


def test_convert_batch_reports_nan_only_images():
    batch = np.full((4, 28, 28), 0.5)
    batch[1] = np.nan
    batch[3, :2] = np.nan
    pixels, ok = convert_batch(batch, GREY)
    assert ok.tolist() == [True, False, True, True]
    assert pixels.shape == (3, 28, 28, 1)
    assert (pixels[2, :2] == 0).all() and (pixels[2, 2:] == 128).all()


# --- property test --------------------------------------------------------------------------

_DTYPES = [np.uint8, np.uint16, np.int16, np.int64, np.float32, np.float64, np.bool_]


@st.composite
def _images(draw):
    dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
    height, width = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    channels = draw(st.sampled_from([None, 1, 2, 3, 4]))
    shape = (height, width) if channels is None else (height, width, channels)
    if dtype.kind == "f":
        elements = st.floats(width=dtype.itemsize * 8)  # NaN and infinities included
    else:
        elements = None
    return draw(hnp.arrays(dtype, shape, elements=elements))


@settings(max_examples=80, deadline=None)
@given(
    image=_images(),
    spec=st.builds(ImageSpec, st.integers(1, 40), st.integers(1, 40), st.sampled_from([1, 3])),
)
def test_convert_always_returns_target_shape_and_dtype(image, spec):
    if image.dtype.kind == "f" and np.isnan(image).all():
        with pytest.raises(ImageReadError, match="NaN"):
            convert(image, spec)
        return
    out = convert(image, spec)
    assert out.shape == spec.shape
    assert out.dtype == np.uint8

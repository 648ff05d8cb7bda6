"""Reduced decoding (storage.images.decode_image's ``min_size``, decode_and_convert): the pixels
of small images unchanged, large ones close to the full decode, the readers and the query
worker on the reduced path, and the memory of a 100 M-pixel JPEG."""

from __future__ import annotations

import json
import subprocess
import sys
import types
import warnings

import numpy as np
import pyarrow as pa
import pytest
from corpus_helpers import encode, parquet_bytes
from PIL import Image

from storage.corpus import open_corpus
from storage.errors import ImageReadError
from storage.images import REDUCING_GAP, ImageSpec, convert, decode_and_convert, decode_image
from storage.location import IndexLocation

GREY = ImageSpec(28, 28, 1)
RGB = ImageSpec(32, 32, 3)
WIDE = ImageSpec(10, 30, 1)
SPECS = [GREY, RGB, WIDE]


def _noise(height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A photo-like RGB image: smooth shapes upscaled from a small random image, plus grain."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    smooth = np.asarray(small.resize((width, height), Image.Resampling.BICUBIC)).astype(np.int16)
    grain = rng.integers(-12, 13, (height, width, 1), dtype=np.int16)
    return np.clip(smooth + grain, 0, 255).astype(np.uint8)


def _as_mode(array: np.ndarray, mode: str) -> Image.Image:
    """An image of ``mode`` made from RGBA noise ``array`` ([h, w, 4] uint8)."""
    if mode == "I;16":
        return Image.fromarray(array[..., 0].astype(np.uint16) * 257)
    if mode == "P+transparency":
        image = Image.fromarray(array[..., :3]).convert("P", palette=Image.Palette.ADAPTIVE)
        image.info["transparency"] = 0
        return image
    return Image.fromarray(array, "RGBA").convert(mode)


_FORMATS = [  # (mode, Pillow format, save parameters)
    ("L", "PNG", {}),
    ("RGB", "PNG", {}),
    ("RGBA", "PNG", {}),
    ("LA", "PNG", {}),
    ("P", "PNG", {}),
    ("P+transparency", "PNG", {"transparency": 0}),
    ("1", "PNG", {}),
    ("I;16", "PNG", {}),
    ("RGB", "JPEG", {"quality": 90}),
    ("L", "JPEG", {"quality": 90}),
    ("CMYK", "JPEG", {}),
    ("RGB", "GIF", {}),
    ("RGB", "BMP", {}),
    ("RGBA", "TIFF", {}),
    ("RGBA", "WEBP", {"lossless": True}),
]
_FORMAT_IDS = [f"{fmt}-{mode}" for mode, fmt, _ in _FORMATS]


def _file(mode: str, fmt: str, params: dict, height: int, width: int, seed: int = 0) -> bytes:
    image = _as_mode(_noise(height, width, 4, seed), mode)
    if fmt == "GIF":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
    return encode(image, fmt, **params)


# --- small images: bit-exact with the full decode ----------------------------------------------

# (height, width): the target's own size, smaller, non-square, and the largest that are not
# reduced for GREY (a shorter side of 167 < 2 * REDUCING_GAP * 28 = 168).
_SMALL_SIZES = [(28, 28), (32, 32), (7, 5), (30, 40), (100, 77), (167, 300), (300, 167)]


@pytest.mark.parametrize(("mode", "fmt", "params"), _FORMATS, ids=_FORMAT_IDS)
@pytest.mark.parametrize("size", _SMALL_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_small_images_convert_bit_exact_with_the_full_decode(mode, fmt, params, size):
    data = _file(mode, fmt, params, *size)
    full = decode_image(data, "x")
    for spec in SPECS:
        expected = convert(full, spec, "x")
        if 2 * REDUCING_GAP * min(spec.height, spec.width) <= min(size):
            continue  # WIDE may reduce (167, 300): compared by the closeness test below
        np.testing.assert_array_equal(decode_and_convert(data, "x", spec), expected)
        np.testing.assert_array_equal(decode_image(data, "x", min_size=spec.shape[:2]), full)


def test_an_image_at_the_target_size_passes_through_bit_exact():
    grey, colour = _noise(28, 28, 1), _noise(32, 32, 3)
    grey_png = encode(Image.fromarray(grey[..., 0]), "PNG")
    np.testing.assert_array_equal(decode_and_convert(grey_png, "x", GREY), grey)
    colour_png = encode(Image.fromarray(colour), "PNG")
    np.testing.assert_array_equal(decode_and_convert(colour_png, "x", RGB), colour)


def test_fashion_mnist_images_keep_their_pixels(fmnist_train):
    for image in fmnist_train[:300]:
        png = encode(Image.fromarray(image[..., 0]), "PNG")
        np.testing.assert_array_equal(decode_and_convert(png, "x.png", GREY), image)
        jpeg = encode(Image.fromarray(image[..., 0]), "JPEG", quality=95)
        for spec in (GREY, RGB):
            np.testing.assert_array_equal(
                decode_and_convert(jpeg, "x.jpg", spec), convert(decode_image(jpeg, "x.jpg"), spec)
            )


# --- large images: close to the full decode ------------------------------------------------------


@pytest.mark.parametrize(("mode", "fmt", "params"), _FORMATS, ids=_FORMAT_IDS)
def test_large_images_convert_close_to_the_full_decode(mode, fmt, params):
    """Photo-like images reduced by factors from 2 to 30: on average well under one level
    (measured: 0.2-0.5 on real wallpapers, under 1.3 even on pure noise)."""
    for height, width, seed in [(180, 170, 1), (700, 1000, 2), (1500, 900, 3)]:
        rgba = np.dstack([_photo(height, width, seed), _noise(height, width, 1, seed) // 2 + 128])
        image = _as_mode(rgba, mode)
        if fmt == "GIF":
            image = image.convert("P", palette=Image.Palette.ADAPTIVE)
        data = encode(image, fmt, **params)
        for spec in SPECS:
            expected = convert(decode_image(data, "x"), spec).astype(np.int16)
            diff = np.abs(decode_and_convert(data, "x", spec) - expected)
            assert diff.mean() < (2.5 if mode == "1" else 1.0), (height, width, spec)


# --- decode_image(min_size) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "fmt", "channels"),
    [
        ("RGB", "JPEG", (3,)),
        ("L", "JPEG", ()),
        ("RGBA", "PNG", (4,)),
        ("P+transparency", "PNG", (4,)),
        ("1", "PNG", ()),
    ],
    ids=["JPEG-RGB", "JPEG-L", "PNG-RGBA", "PNG-P+transparency", "PNG-1"],
)
def test_min_size_reduces_keeping_aspect_colour_and_alpha(mode, fmt, channels):
    height, width = 800, 1200
    data = encode(_as_mode(np.dstack([_photo(height, width), _noise(height, width, 1)]), mode), fmt)
    full = decode_image(data, "x")
    small = decode_image(data, "x", min_size=(128, 128))
    assert small.shape[2:] == full.shape[2:] == channels
    assert small.dtype == (np.uint8 if mode == "1" else full.dtype)  # a reduced 1-bit image is grey
    assert 3 * 128 <= small.shape[0] < 2 * 3 * 128  # covers 128 x 128 with the margin, no more
    factor = height / small.shape[0]
    assert factor >= 2 and abs(width / factor - small.shape[1]) <= 1  # aspect ratio kept


def test_min_size_reduces_a_jpeg_by_dct_scaling_and_box_reduction():
    data = encode(Image.fromarray(_photo(3000, 4000)), "JPEG")
    # 1/8 by libjpeg (375 x 500), then 1/4 by Pillow (94 x 125): the first factor that would
    # go under 3 * 28 = 84 rows
    assert decode_image(data, "x", min_size=(28, 28)).shape == (94, 125, 3)


def test_min_size_larger_than_the_image_changes_nothing():
    data = encode(Image.fromarray(_photo(60, 80)), "PNG")
    np.testing.assert_array_equal(decode_image(data, "x", min_size=(500, 500)), decode_image(data, "x"))


@pytest.mark.parametrize("min_size", [(0, 28), (28,), (28, 28.0), "28", (True, 3)])
def test_min_size_must_be_two_positive_integers(min_size):
    with pytest.raises(ValueError, match="min_size must be"):
        decode_image(encode(Image.new("L", (4, 4)), "PNG"), "x", min_size=min_size)


# --- errors and decompression bombs --------------------------------------------------------------


def test_truncated_large_jpeg_is_a_read_error_when_reduced():
    data = encode(Image.fromarray(_photo(1200, 1600)), "JPEG")
    with pytest.raises(ImageReadError, match="truncated image") as info:
        decode_and_convert(data[: len(data) // 2], "s3://b/cut.jpg", GREY)
    assert "s3://b/cut.jpg" in str(info.value)


def test_a_jpeg_counts_at_its_reduced_size_against_the_pixel_limit(monkeypatch):
    """With a limit of 2 x 100k pixels, a 1200 x 1600 JPEG (1.9 M) is decoded at 1/8 for a
    small model without Pillow's warning, and refused when decoded whole; a PNG is decoded
    whole, so refused either way."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    photo = Image.fromarray(_photo(1200, 1600))
    jpeg, png = encode(photo, "JPEG"), encode(photo, "PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert decode_and_convert(jpeg, "x.jpg", GREY).shape == GREY.shape
        assert decode_image(jpeg, "x.jpg", min_size=(28, 28)).shape == (150, 200, 3)
    for data, call in [
        (jpeg, lambda d: decode_image(d, "big.jpg")),
        (jpeg, lambda d: decode_image(d, "big.jpg", min_size=(600, 800))),
        (png, lambda d: decode_and_convert(d, "big.jpg", GREY)),
    ]:
        with pytest.raises(ImageReadError, match="image too large") as info:
            call(data)
        assert "big.jpg" in str(info.value) and info.value.reason.startswith("image too large")


def test_extreme_aspect_ratio_is_refused_before_decoding():
    data = encode(Image.new("L", (200_000, 1), 9), "PNG")
    with pytest.raises(ImageReadError, match="aspect ratio too extreme"):
        decode_and_convert(data, "x", GREY)


# --- the readers and the query worker read reduced -------------------------------------------


@pytest.fixture
def large_photos(tmp_path, monkeypatch):
    """Three 1200 x 1600 JPEGs, a small PNG and their uri lists, under a pixel limit that
    refuses to decode the photos whole: whatever reads them must read them reduced."""
    folder = tmp_path / "photos"
    folder.mkdir()
    names = []
    for i in range(3):
        photo = Image.fromarray(_photo(1200, 1600, seed=i))
        (folder / f"p{i}.jpg").write_bytes(encode(photo, "JPEG"))
        names.append(f"photos/p{i}.jpg")
    (folder / "small.png").write_bytes(encode(Image.fromarray(_photo(40, 50)), "PNG"))
    names.append("photos/small.png")
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n")
    (tmp_path / "list.csv").write_text("uri\n" + "\n".join(names) + "\n")
    (tmp_path / "list.parquet").write_bytes(parquet_bytes(pa.table({"uri": names})))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400_000)
    return tmp_path, names


@pytest.mark.parametrize("listing", ["photos", "list.txt", "list.csv", "list.parquet"])
def test_corpora_of_large_photos_read_reduced(large_photos, listing):
    root, names = large_photos
    corpus = open_corpus(str(root / listing))
    for spec in (GREY, RGB):
        data = corpus.shards(2)[1].read(spec)
        assert not data.errors
        assert data.ids.tolist() == [2, 3]
        for row, image_id in enumerate(data.ids):
            expected = decode_and_convert((root / names[image_id]).read_bytes(), "x", spec)
            np.testing.assert_array_equal(data.pixels[row], expected)


def test_the_query_worker_reads_uri_lists_reduced(large_photos, monkeypatch):
    """``patchhash query``'s encode task reads its block through the same reader."""
    from workflows.query import encode_block_task

    root, names = large_photos
    seen = []

    class FakeEncoder:
        input_shape = GREY.shape
        card = types.SimpleNamespace(grid=(1, 1), image_spec=GREY)

        def encode(self, pixels):
            seen.append(pixels)
            return np.zeros((len(pixels), 1), np.uint64)

    fake = types.ModuleType("pipeline.encode")
    fake.load_encoder = lambda url, options: FakeEncoder()
    monkeypatch.setitem(sys.modules, "pipeline.encode", fake)
    shard = open_corpus(str(root / "list.csv")).shards(10)[0]
    block = encode_block_task(IndexLocation(str(root / "index")), shard)
    assert block.errors == [] and block.rows.tolist() == [0, 1, 2, 3]
    expected = [decode_and_convert((root / name).read_bytes(), "x", GREY) for name in names]
    np.testing.assert_array_equal(seen[0], np.stack(expected))


# --- memory -----------------------------------------------------------------------------------

# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forked parent (a pytest
# process of 2 GB made this child report 2 GB before reading anything).
_READ_PEAK = """
import json, re, sys
from storage.corpus import open_corpus
from storage.images import ImageSpec

def peak_kib():
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", f.read()).group(1))

corpus = open_corpus(sys.argv[1])
before = peak_kib()
for spec in (ImageSpec(28, 28, 1), ImageSpec(32, 32, 3)):
    data = corpus.shards(len(corpus))[0].read(spec)
    assert not data.errors and len(data.ids) == len(corpus), data.errors
after = peak_kib()
print(json.dumps({"before_kib": before, "after_kib": after}))
"""


def test_reading_a_100_megapixel_jpeg_stays_far_under_a_gigabyte(tmp_path):
    """A 10000 x 10000 colour JPEG (300 MB of pixels decoded whole; the full decode and its
    conversion in numpy took 1.3 GB) is read for the model in a fresh process whose peak
    memory grows by well under 200 MiB (measured: ~35 MiB, mostly the file's bytes)."""
    tile = np.linspace(0, 255, 100 * 100 * 3).reshape(100, 100, 3).astype(np.uint8)
    Image.fromarray(np.tile(tile, (100, 100, 1))).save(tmp_path / "huge.jpg", quality=40)
    (tmp_path / "small.png").write_bytes(encode(Image.fromarray(_photo(40, 50)), "PNG"))
    result = subprocess.run(
        [sys.executable, "-c", _READ_PEAK, str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "DecompressionBombWarning" not in result.stderr
    peak = json.loads(result.stdout.strip().splitlines()[-1])
    grown_mib = (peak["after_kib"] - peak["before_kib"]) / 1024
    assert grown_mib < 200, f"reading grew the peak memory by {grown_mib:.0f} MiB"
    assert peak["after_kib"] / 1024 < 1024

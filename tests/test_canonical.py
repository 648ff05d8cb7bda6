"""The canonical form of an image (storage/canonical.py): a plain background becomes black, an
image moves so that its brightness median is at its centre, it is flipped so that its
brightness mean is left of its centre, and its levels are stretched so that its brightest pixels
are white (issue 19: transparency, shifts, mirrors, brightness).
"""

from __future__ import annotations

import io
import json
from dataclasses import replace

import numpy as np
import pytest
from corpus_helpers import FASHION_TRAIN
from PIL import Image, ImageDraw

from storage import ImageSpec, InputRules, open_corpus
from storage.canonical import (TOLERANCE, black_background, box_shift, centre_image, mass_offset, mirror_by_mean, mirror_margin,
                               stretch_levels, whole_pixels)
from storage.images import convert, convert_batch, decode_and_convert

BLACK = InputRules(background="black")
BACKGROUNDS = ((255, 255, 255), (200, 220, 255), (90, 90, 90))
CENTRED = InputRules(background="black", centre="mass")
CANONICAL = InputRules(background="black", centre="mass", mirror="mean")
BY_LUMA = InputRules(background="black-luma", centre="mass", mirror="mean")  # icons-photos' rules before 2026-12-07
BOXED = InputRules(background="black", centre="box")  # fashion-mnist's rules
SHIPPED = InputRules(background="black-luma-edge", centre="mass", mirror="mean", levels="stretch")  # icons-photos' rules


def icon(seed: int, size: int = 48) -> Image.Image:
    """A transparent RGBA icon: a few anti-aliased coloured shapes with a margin around them, in
    colours unlike :data:`BACKGROUNDS` (a shape the colour of the background it is flattened
    onto cannot be told from it, by this rule or by anyone)."""
    rng = np.random.default_rng(seed)
    big = Image.new("RGBA", (size * 4, size * 4), (0, 0, 0, 0))
    draw = ImageDraw.Draw(big)
    for _ in range(3):
        x0, y0 = rng.integers(size * 0.6, size * 2.2, 2)
        w, h = rng.integers(size * 0.5, size * 1.2, 2)
        colour = tuple(int(c) for c in rng.integers(30, 256, 3))
        while min(np.abs(np.subtract(colour, bg)).max() for bg in BACKGROUNDS) <= 3 * TOLERANCE:
            colour = tuple(int(c) for c in rng.integers(30, 256, 3))
        colour += (255,)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x0 + w, y0 + h), fill=colour)
    return big.resize((size, size), Image.Resampling.LANCZOS)  # soft, partly transparent edges


def flattened(image: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    return Image.alpha_composite(Image.new("RGBA", image.size, colour + (255,)), image).convert("RGB")


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- the rules object


def test_rules_validate_and_round_trip_through_json():
    assert InputRules() == InputRules.from_json(None)  # a card written before the rules
    assert not InputRules().active and BLACK.active and CENTRED.active
    assert InputRules.from_json(json.loads(json.dumps(CENTRED.to_json()))) == CENTRED
    assert InputRules.from_json(json.loads(json.dumps(CANONICAL.to_json()))) == CANONICAL
    assert "mirror" not in CENTRED.to_json()  # written only when set: older readers still read the card
    assert InputRules.from_json(InputRules(background="black-luma").to_json()).background == "black-luma"
    with pytest.raises(ValueError, match="background must be one of keep, black, black-luma"):
        InputRules(background="white")
    assert InputRules.from_json(BOXED.to_json()) == BOXED
    with pytest.raises(ValueError, match="centre must be one of none, mass, box"):
        InputRules(centre="centroid")
    with pytest.raises(ValueError, match="mirror must be one of none, mean"):
        InputRules(mirror="always")
    assert InputRules.from_json(json.loads(json.dumps(SHIPPED.to_json()))) == SHIPPED
    assert "levels" not in CANONICAL.to_json() and SHIPPED.to_json()["levels"] == "stretch"
    with pytest.raises(ValueError, match="levels must be one of none, stretch"):
        InputRules(levels="auto")
    with pytest.raises(ValueError, match="keys background, centre, mirror and levels"):
        InputRules.from_json({"background": "black", "colour": "x"})


# --------------------------------------------------------------------------- background


@pytest.mark.parametrize("seed", range(12))
def test_a_transparent_icon_flattened_on_any_plain_colour_looks_as_on_black(seed):
    original = icon(seed)
    on_black = np.asarray(flattened(original, (0, 0, 0)))
    for colour in BACKGROUNDS:
        canonical = black_background(np.asarray(flattened(original, colour)))
        alpha = np.asarray(original)[..., 3]
        opaque, clear = alpha == 255, alpha == 0
        assert np.array_equal(canonical[opaque], on_black[opaque])  # the icon itself untouched
        assert not canonical[clear].any(), f"background {colour} left visible"
        # only the soft edge differs, by at most what its transparency lets the background through
        edge = ~opaque & ~clear
        assert np.all(np.abs(canonical[edge].astype(int) - on_black[edge]) <= np.max(colour))


def test_black_backgrounds_and_photographs_are_unchanged():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    assert black_background(photo) is photo
    on_black = np.asarray(flattened(icon(1), (0, 0, 0)))
    assert black_background(on_black) is on_black
    dark = np.full((30, 30, 3), TOLERANCE, np.uint8)  # dark grey border: treated as black
    assert black_background(dark) is dark


def test_the_rule_reaches_only_background_connected_to_the_border():
    image = np.full((20, 20, 1), 250, np.uint8)
    image[5:15, 5:15] = 40  # a dark frame...
    image[8:12, 8:12] = 250  # ...around a white hole, the same colour as the background
    out = black_background(image)
    assert (out[:5] == 0).all() and (out[5:15, 5:15] == image[5:15, 5:15]).all()


def test_by_luma_a_grey_copy_loses_the_background_its_colour_original_loses():
    """A border of hues at one brightness: plain to a grey model, not per channel. Judged by
    luma, the colour image and its grey copy lose the same pixels; judged per channel, only the
    grey copy does, and the two differ wherever that background was."""
    rng = np.random.default_rng(0)
    hues = np.array([[200, 120, 120], [110, 160, 140], [130, 140, 200]], np.uint8)  # luma 143-152
    image = hues[rng.integers(0, 3, (40, 40))]
    image[12:28, 12:28] = (250, 240, 30)  # the subject: much brighter than the border
    spec, by_channel = (ImageSpec(40, 40, 1, rules=InputRules(background=b)) for b in ("black-luma", "black"))
    grey = np.asarray(Image.fromarray(image).convert("L"))
    assert black_background(image) is image  # per channel: not a plain border
    luma_out, grey_out = convert(image, spec), convert(grey, spec)
    assert np.abs(luma_out.astype(int) - grey_out).max() <= 1  # Pillow's grey and ours: rounding only
    assert not luma_out[:12].any() and luma_out[20, 20, 0] > 200  # the border went, the subject stayed
    assert np.abs(convert(image, by_channel).astype(int) - convert(grey, by_channel)).max() > 100
    colour = convert(image, ImageSpec(40, 40, 3, rules=InputRules(background="black-luma")))  # an RGB model: judged by luma too
    assert not colour[:12].any() and tuple(colour[20, 20]) == (250, 240, 30)


def test_by_luma_jpeg_noise_of_a_white_background_stays_within_the_tolerance():
    original = icon(3)
    data = io.BytesIO()
    flattened(original, (255, 255, 255)).save(data, format="JPEG", quality=30)
    spec = ImageSpec(48, 48, 1, rules=InputRules(background="black-luma"))
    copy = decode_and_convert(data.getvalue(), "copy.jpg", spec)
    clear = np.asarray(original)[..., 3] == 0
    assert (copy[clear] == 0).mean() > 0.95


def texture(seed: int, spread: float = 10) -> np.ndarray:
    """A grey texture (wood, paper): smooth noise around one level, most of it within the luma
    tolerance of its median, so that its border passes for a plain background."""
    from scipy import ndimage

    field = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=(60, 80)), 3)
    return np.clip(150 + spread * field / field.std(), 0, 255).astype(np.uint8)[..., np.newaxis]


@pytest.mark.parametrize("seed", range(4))
def test_a_texture_keeps_its_plain_border_where_the_edge_rule_asks(seed):
    image = texture(seed)
    assert (black_background(image, by_luma=True) == 0).mean() > 0.5  # "black-luma" takes most of it for background
    assert black_background(image, by_luma=True, edge=True) is image


@pytest.mark.parametrize("seed", range(12))
def test_the_edge_rule_still_takes_an_icons_white_background(seed):
    """An icon flattened onto white, as editors save it. (Onto a colour of the icon's own luma,
    the outline is too faint to a grey model, and the background stays: docs/QUALITY.md.)"""
    copy = np.asarray(flattened(icon(seed), (255, 255, 255)))
    assert np.array_equal(black_background(copy, by_luma=True, edge=True), black_background(copy, by_luma=True))
    data = io.BytesIO()  # and JPEG's ringing around the icon is no texture
    flattened(icon(seed), (255, 255, 255)).save(data, format="JPEG", quality=30)
    jpeg = decode_and_convert(data.getvalue(), "copy.jpg", ImageSpec(48, 48, 1))
    assert np.array_equal(black_background(jpeg, by_luma=True, edge=True), black_background(jpeg, by_luma=True))


def test_a_brighter_copy_of_a_texture_gives_its_originals_input():
    """Scaled by 1.3, a texture's levels spread beyond the tolerance: "black-luma" blackens
    other parts of the copy than of the original. With the edge rule neither loses anything,
    and the levels rule undoes the factor."""
    spec = ImageSpec(28, 28, 1, rules=SHIPPED)
    before = ImageSpec(28, 28, 1, rules=replace(SHIPPED, background="black-luma"))
    for seed in range(4):
        original = texture(seed)
        brighter = np.clip(np.round(original * 1.3), 0, 255).astype(np.uint8)
        assert np.abs(convert(original, spec).astype(int) - convert(brighter, spec)).max() <= 3
        assert np.abs(convert(original, before).astype(int) - convert(brighter, before)).max() > 100


# --------------------------------------------------------------------------- levels


def test_levels_are_stretched_so_the_99th_percentile_of_lit_pixels_is_white():
    image = np.zeros((1, 20, 20, 1), np.uint8)
    image[0, :10, :10, 0] = np.arange(1, 101).reshape(10, 10)  # 100 lit pixels, 1 to 100: the 99th is 99
    out = stretch_levels(image)
    assert out[0, 9, 8, 0] == 255 and out[0, 9, 9, 0] == 255  # 99 -> 255, 100 clipped
    assert out[0, 0, 0, 0] == 3 and out[0, 4, 9, 0] == round(50 * 255 / 99)  # 1 * 255 / 99 = 2.58
    assert not out[0, 10:].any()  # black stays black
    white = np.zeros((1, 10, 10, 3), np.uint8)
    white[0, 2:8, 2:8] = (255, 255, 255)
    assert stretch_levels(white) is white  # already white, and all black: nothing to do
    black = np.zeros((2, 5, 5, 1), np.uint8)
    assert stretch_levels(black) is black


@pytest.mark.parametrize("factor", [0.6, 0.8, 1.25])
def test_a_darker_or_brighter_copy_decodes_to_its_originals_input(factor):
    from PIL import ImageEnhance

    spec = ImageSpec(28, 28, 1, rules=SHIPPED)
    without = ImageSpec(28, 28, 1, rules=replace(SHIPPED, levels="none"))
    for seed in range(6):
        original = flattened(icon(seed), (0, 0, 0))
        original = ImageEnhance.Brightness(original).enhance(0.7)  # nothing white, so a brighter copy clips nothing
        copy = ImageEnhance.Brightness(original).enhance(factor)
        a, b = (decode_and_convert(png(image), "i.png", spec).astype(int) for image in (original, copy))
        assert np.abs(a - b).mean() < 0.5 and np.abs(a - b).max() <= 10  # rounding, twice
        c, d = (decode_and_convert(png(image), "i.png", without).astype(int) for image in (original, copy))
        assert np.abs(c - d).mean() > 1.5 and np.abs(c - d).max() > 15


def test_no_fashion_mnist_image_changes():
    images = open_corpus(str(FASHION_TRAIN)).read(ImageSpec(28, 28, 1)).pixels
    assert len(images) == 60_000
    converted, _ = convert_batch(images, ImageSpec(28, 28, 1, rules=BLACK))
    assert np.array_equal(converted, images)


def test_decoding_with_rules_makes_a_flattened_copy_match_its_transparent_original():
    spec = ImageSpec(28, 28, 1, rules=BLACK)
    for seed in range(6):
        original = icon(seed, size=192)
        ours = decode_and_convert(png(original), "icon.png", spec).astype(int)
        copy = decode_and_convert(png(flattened(original, (255, 255, 255))), "copy.png", spec).astype(int)
        plain = decode_and_convert(png(flattened(original, (255, 255, 255))), "copy.png", ImageSpec(28, 28, 1)).astype(int)
        assert np.abs(ours - copy).mean() < 3, seed  # the soft edges only
        assert np.abs(ours - plain).mean() > 20, seed  # without the rule: another image


def test_arrays_already_at_the_model_size_go_through_the_rules():
    white = np.full((2, 28, 28, 1), 255, np.uint8)
    white[:, 10:18, 10:18] = 100
    out, ok = convert_batch(white, ImageSpec(28, 28, 1, rules=BLACK))
    assert ok.all() and (out[:, :10] == 0).all() and (out[:, 10:18, 10:18] == 100).all()
    same, _ = convert_batch(white, ImageSpec(28, 28, 1))
    assert same is not out and np.array_equal(same, white)


# --------------------------------------------------------------------------- centre


@pytest.mark.parametrize("seed", range(8))
def test_a_moved_copy_is_centred_to_the_same_pixels(seed):
    image = np.asarray(flattened(icon(seed, size=40), (0, 0, 0)))
    padded = np.zeros((64, 64, 3), np.uint8)
    padded[12:52, 12:52] = image
    centred = centre_image(padded)
    for dy, dx in ((0, 1), (1, 0), (-3, 2), (5, -7), (-12, -12)):
        moved = np.roll(padded, (dy, dx), axis=(0, 1))  # black comes in: the content stays whole
        assert np.array_equal(centre_image(moved), centred), (dy, dx)


def test_the_centre_is_the_brightness_median():
    grey = np.zeros((9, 9), np.uint8)
    grey[1, 1] = 200
    assert mass_offset(grey) == (3, 3)  # the only bright pixel goes to the middle
    grey[1, 2] = 200  # two pixels: the median is between them, at x = 2.0 of a 9-wide image
    assert mass_offset(grey) == (3, 3)  # 4.5 - 2.0 = 2.5 rounds half up to 3
    assert mass_offset(np.zeros((5, 5), np.uint8)) == (0, 0)
    text = np.zeros((40, 40), np.uint8)
    text[10:30, 10:30] = 100
    text[36:39, 2:20] = 255  # overlaid text: the median moves up by 3 pixels (the mean would by 5)
    assert mass_offset(text)[0] == -3


def test_centred_fashion_mnist_copies_moved_sideways_convert_identically():
    images = open_corpus(str(FASHION_TRAIN)).read(ImageSpec(28, 28, 1), 0, 2000).pixels[..., 0]
    # Fashion-MNIST garments fill the frame's height or width; those clear of the left and
    # right edges lose nothing when moved sideways by up to two pixels
    narrow = images[~(images[:, :, :2].any((1, 2)) | images[:, :, -2:].any((1, 2)))][:200]
    assert len(narrow) == 200
    spec = ImageSpec(28, 28, 1, rules=CENTRED)
    centred = convert_batch(narrow, spec)[0]
    for dx in (-2, -1, 1, 2):
        assert np.array_equal(convert_batch(np.roll(narrow, dx, axis=2), spec)[0], centred), dx


def test_a_resized_image_is_centred_by_a_fraction_of_a_pixel(tmp_path):
    # 48 px icons moved by 1-3 px on black are 0.6-1.8 px at 28x28: whole source pixels would
    # leave them up to a pixel apart, the fractional move within the resize brings them together
    spec = ImageSpec(28, 28, 1, rules=CENTRED)
    whole = ImageSpec(28, 28, 1, rules=InputRules(background="black", centre="none"))
    for seed in range(6):
        padded = np.zeros((48, 48, 3), np.uint8)
        padded[8:40, 8:40] = np.asarray(flattened(icon(seed, size=32), (0, 0, 0)))
        files = []
        for i, (dy, dx) in enumerate(((0, 0), (1, 0), (0, 3), (-2, 1))):
            moved = np.roll(padded, (dy, dx), axis=(0, 1))
            Image.fromarray(moved).save(tmp_path / f"{seed}-{i}.png")
            files.append(moved)
        centred = convert_batch(np.stack(files), spec)[0].astype(int)
        plain = convert_batch(np.stack(files), whole)[0].astype(int)
        for i in range(1, 4):
            # nearly the same pixels (bilinear rounding only), where the uncentred copies differ widely
            assert np.abs(centred[i] - centred[0]).max() <= 3, (seed, i)
            assert np.abs(plain[i] - plain[0]).max() > 20, (seed, i)
        # decoded from files, the same conversion as from arrays
        decoded = np.stack([decode_and_convert((tmp_path / f"{seed}-{i}.png").read_bytes(), f"{seed}-{i}.png", spec) for i in range(4)])
        assert np.array_equal(decoded, centred)


def test_the_box_rule_centres_the_bounding_box_of_what_is_not_black():
    grey = np.zeros((9, 9), np.uint8)
    grey[1, 1] = 1  # however faint: the box is what is not black
    assert box_shift(grey) == (3.0, 3.0)
    grey[1:3, 1:5] = 90  # 2 x 4: margins of 7 and 5, the odd pixel above and left once rounded
    assert box_shift(grey) == (2.5, 1.5) and whole_pixels(box_shift(grey)) == (3, 2)
    assert box_shift(np.zeros((5, 5), np.uint8)) == (0.0, 0.0)
    full = np.ones((6, 6), np.uint8)  # no black margin: never moved
    assert box_shift(full) == (0.0, 0.0)
    tall = np.zeros((28, 28), np.uint8)
    tall[0:27, 10:18] = 50  # one free row: it goes above, as in Fashion-MNIST
    assert whole_pixels(box_shift(tall)) == (1, 0)


def test_box_centring_leaves_fashion_mnist_in_place_and_brings_moved_copies_back():
    images = open_corpus(str(FASHION_TRAIN)).read(ImageSpec(28, 28, 1), 0, 2000).pixels
    spec = ImageSpec(28, 28, 1, rules=BOXED)
    canonical = convert_batch(images, spec)[0]
    unmoved = (canonical == images).all(axis=(1, 2, 3))
    assert unmoved.mean() > 0.97  # the dataset's own placement (98.5% of the 60,000)
    # a garment spans the frame's height or its width (its longer side was scaled to 28 px); moved
    # across the other way, clear of the edge it moves towards, it loses nothing and comes back
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1), (2, 0), (0, -2)):
        edge = slice(-abs(dy + dx), None) if dy + dx > 0 else slice(0, abs(dy + dx))
        towards = images[:, edge] if dy else images[:, :, edge]
        inner = images[~towards.any(axis=(1, 2, 3)) & unmoved]
        assert len(inner) > 500
        assert np.array_equal(convert_batch(np.roll(inner, (dy, dx), axis=(1, 2)), spec)[0], inner), (dy, dx)
    noisy = np.clip(inner.astype(int) + 3, 0, 255).astype(np.uint8)  # no black margin left: as it is
    assert np.array_equal(convert_batch(noisy, spec)[0], noisy)


def test_a_resized_image_is_box_centred_by_a_fraction_of_a_pixel():
    images = open_corpus(str(FASHION_TRAIN)).read(ImageSpec(28, 28, 1), 0, 300).pixels[..., 0]
    inner = images[~images[:, :, [0, 1, -2, -1]].any(axis=(1, 2))][:20]  # clear of the left and right edges
    big = np.stack([np.asarray(Image.fromarray(img).resize((112, 112), Image.BILINEAR)) for img in inner])
    spec = ImageSpec(28, 28, 1, rules=BOXED)
    plain = ImageSpec(28, 28, 1, rules=BLACK)
    original = convert_batch(big, spec)[0].astype(int)
    assert len(inner) == 20
    for dy, dx in ((0, 2), (0, -3), (0, 4)):  # half a pixel, 0.75 and a whole pixel sideways at 28x28
        moved = np.roll(big, (dy, dx), axis=(1, 2))
        assert np.abs(convert_batch(moved, spec)[0].astype(int) - original).max() <= 8, (dy, dx)
        assert np.abs(convert_batch(moved, plain)[0].astype(int) - convert_batch(big, plain)[0]).max() > 40, (dy, dx)


# --------------------------------------------------------------------------- mirror


def test_an_image_and_its_mirror_image_give_the_same_input():
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (50, 28, 28, 1), dtype=np.uint8)
    assert np.array_equal(mirror_by_mean(batch), mirror_by_mean(batch[:, :, ::-1]))
    grey = batch[..., 0].astype(np.int64)
    moment = (grey * (2 * np.arange(28) - 27)).sum(axis=(1, 2))
    out = mirror_by_mean(batch)
    assert np.array_equal(out[moment <= 0], batch[moment <= 0])  # mean on the left already: unchanged
    assert np.array_equal(out[moment > 0], batch[moment > 0][:, :, ::-1])
    assert (((out[..., 0].astype(np.int64)) * (2 * np.arange(28) - 27)).sum(axis=(1, 2)) <= 0).all()


def test_the_mirror_rule_weighs_colour_by_its_luma_and_keeps_balanced_images():
    rgb = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    rgb[0, :, 6, 2] = 255  # blue on the right: flipped to the left
    rgb[1, :, 1, 0] = rgb[1, :, 6, 0] = 255  # balanced: left as it is
    out = mirror_by_mean(rgb)
    assert out[0, :, 1, 2].all() and not out[0, :, 6].any()
    assert np.array_equal(out[1], rgb[1])
    balanced = rgb[1:]
    assert mirror_by_mean(balanced) is balanced  # nothing to flip: no copy


def test_the_mirror_margin_is_the_means_distance_from_the_centre_line():
    batch = np.zeros((4, 8, 9, 1), dtype=np.uint8)
    batch[0, :, 0] = 200  # all at the left edge: a whole half-width away
    batch[1, :, 4] = 200  # on the centre line
    batch[2, :, 2] = batch[2, :, 8] = 100  # mean at column 5: a quarter of the half-width, right
    # batch[3] is black
    assert mirror_margin(batch).tolist() == [1.0, 0.0, 0.25, 0.0]


@pytest.mark.parametrize("seed", range(6))
def test_a_mirrored_copy_decodes_to_the_same_input(seed):
    """Whole decoding with every rule: a file and its mirror image (at the model's size or
    resized, moved or not) give the same pixels, as the rules promise."""
    from PIL import ImageOps

    spec = ImageSpec(28, 28, 1, rules=CANONICAL)
    for size in (28, 48):
        original = icon(seed, size)
        a = decode_and_convert(png(original), "a.png", spec)
        b = decode_and_convert(png(ImageOps.mirror(original)), "b.png", spec)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, size  # resizing may round a level apart
        arrays, _ = convert_batch(np.stack([np.asarray(original), np.asarray(ImageOps.mirror(original))]), spec)
        assert np.abs(arrays[0].astype(int) - arrays[1].astype(int)).max() <= 1, size


# --------------------------------------------------------------------------- models and whole jobs


def test_cards_say_which_rules_their_model_uses():
    from pipeline.modelcard import ModelCard, read_card
    from storage import ModelError

    shipped = read_card("fashion-mnist")
    assert shipped.input_rules == BOXED and shipped.image_spec == ImageSpec(28, 28, 1, rules=BOXED)
    assert read_card("fashion-mnist-unsupervised").input_rules == InputRules()  # a card from before the rules
    assert read_card("icons-photos").input_rules == SHIPPED  # the default for image files (docs/MODEL.md)
    d = shipped.to_json()
    assert d["input"] == {"background": "black", "centre": "box"}
    assert ModelCard.from_json(d).input_rules == BOXED
    d["input"] = {"background": "white"}
    with pytest.raises(ModelError, match="invalid model card: background must be one of keep, black"):
        ModelCard.from_json(d)


def test_transparent_icons_are_found_from_copies_flattened_on_white(client, tmp_path):
    """The shipped model, a folder of 24 transparent icons, their copies flattened onto white
    (and onto a light blue) as queries: each finds its original first. Without the rule (the
    same weights, a card without ``input``) most do not."""
    import shutil

    from pipeline.modelcard import resolve_model_url
    from workflows.index import IndexSettings, index
    from workflows.query import QuerySettings, query

    icons, copies = tmp_path / "icons", tmp_path / "copies"
    icons.mkdir()
    copies.mkdir()
    for i in range(24):
        original = icon(100 + i, size=64)
        original.save(icons / f"{i:03d}.png")
        flattened(original, BACKGROUNDS[i % 2]).save(copies / f"{i:03d}.png")
    without = tmp_path / "model-without-rules"
    shutil.copytree(resolve_model_url("fashion-mnist"), without)
    card = json.loads((without / "card.json").read_text())
    del card["input"]
    (without / "card.json").write_text(json.dumps(card))
    found = {}
    for label, model in (("rule", "fashion-mnist"), ("no rule", str(without))):
        index(str(icons), str(tmp_path / label / "index"), model, IndexSettings(), client=client)
        out = tmp_path / label / "results.parquet"
        query(str(tmp_path / label / "index"), str(copies), str(out), QuerySettings(k=1), client=client)
        found[label] = found_first_by_name(out)
    assert found["rule"] == 24, found
    assert found["no rule"] < 12, found


def found_first_by_name(results) -> int:
    """How many queries' first hit is the indexed file of the same name."""
    import os

    import pyarrow.parquet as pq

    table = pq.read_table(results).to_pydict()
    return sum(os.path.basename(q) == os.path.basename(u) for q, r, u in zip(table["query_uri"], table["rank"], table["image_uri"])
               if r == 1 and u is not None)


@pytest.mark.parametrize("rules", [BLACK, CENTRED, CANONICAL, BY_LUMA, BOXED, SHIPPED])
def test_decoding_a_small_file_with_rules_is_converting_it_bit_for_bit(rules):
    from storage.images import decode_image

    spec = ImageSpec(28, 28, 1, rules=rules)
    for seed, size in enumerate((28, 48, 100, 160)):
        for image in (icon(seed, size), flattened(icon(seed, size), (255, 255, 255))):
            data = png(image)
            assert np.array_equal(decode_and_convert(data, "i.png", spec), convert(decode_image(data, "i.png"), spec)), (size, image.mode)


def test_training_records_its_rules_in_the_card(fmnist_train, tmp_path):
    from storage import ConfigError
    from workflows.train import train

    np.save(tmp_path / "corpus.npy", fmnist_train[:64, :, :, 0])
    card = train(str(tmp_path / "corpus.npy"), str(tmp_path / "model"), bits=8, stem=(), epochs=1, batch_size=32, centre="mass",
                 mirror="mean", levels="stretch")
    assert card.input_rules == replace(CANONICAL, levels="stretch")
    assert json.loads((tmp_path / "model" / "card.json").read_text())["input"] == {"background": "black", "centre": "mass", "mirror": "mean",
                                                                                   "levels": "stretch"}
    with pytest.raises(ConfigError, match="background must be one of keep, black"):
        train(str(tmp_path / "corpus.npy"), str(tmp_path / "other"), background="white")

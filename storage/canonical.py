"""The canonical form of an image: its background, its position and its orientation.

Copies of an image met in practice differ from it in ways the model's codes should not see. Three
of them are undone here, each by a rule that maps the copy and the original to the same pixels:

* **background** (``"black"``): an icon with transparency is composited on black, but a copy of
  it flattened onto white is opaque, and is a different image. The rule: where most of an
  image's border (:data:`BORDER_SHARE` of its outermost pixels) is within :data:`TOLERANCE` of
  one colour that is not black, the pixels of that colour connected to the border (4-neighbours,
  each within :data:`TOLERANCE` of it) become black. A transparent icon composited on black, and
  its copy flattened onto white or any other plain colour, then look alike to the model. An image
  whose border is black already, or not mostly of one colour (a photograph), is unchanged: on
  the 60,000 Fashion-MNIST training images the rule changes no pixel. ``"black-luma"`` judges
  the same by the image's luma (:func:`luma`), within :data:`LUMA_TOLERANCE`: what a grey
  model sees. A grey copy of a colour image then loses the same background as the image
  (judged per channel, a border whose hues vary at one brightness is plain in grey only), and
  JPEG's noise, mostly in the colour channels, stays within a tighter tolerance.
  ``"black-luma-edge"`` is ``"black-luma"`` for a background that meets the picture at an edge
  (:func:`meets_at_an_edge`): a texture (wood, paper, sand) whose border is plain within the
  tolerance fades into its own darker and lighter parts, and keeps them; a background that
  went would go differently in each copy (a brighter copy, or a rotated one with black corners).
* **centre** (``"mass"``): a copy moved by a few pixels changes most patch codes, since patches
  sit on a fixed grid. The rule moves the image, by whole pixels at the resolution it is
  converted from, so that the median of its brightness (the point that halves the summed grey
  levels, by columns and by rows) lies at the image's centre; what comes in at an edge is black.
  A copy moved on a black or transparent background is moved back to the same place. The median,
  unlike the mean, hardly moves when a small mark such as overlaid text is added. An image that
  is resized to the model input is moved by the exact, fractional offset instead, within the
  resize (:func:`mass_shift`; :mod:`storage.images`): whole pixels of a 48 px icon are 0.6 px at
  28x28, so copies of it at other sizes would land up to a pixel apart.
  ``"box"`` centres the bounding box of the pixels that are not black instead, the odd pixel of
  the margin going above and left (:func:`box_shift`). It is the placement datasets such as
  Fashion-MNIST were made with, so it leaves 98.5% of their images where they are while a copy
  moved on black comes back to them; an image with no black margin is never moved.
* **mirror** (``"mean"``): a mirrored copy (left-right) gives other codes everywhere. The rule
  flips the model's input, after the resize, so that the mean of its brightness lies left of
  its vertical centre line or on it (:func:`mirror_by_mean`): an image and its mirror image
  then give the same input. An image that is nearly balanced left and right can land either
  way, in the original and in a copy: a query job searches such a query both ways
  (:func:`mirror_margin` under :data:`BALANCED`), and ``--flip`` every query.
* **levels** (``"stretch"``): a copy made brighter or darker gives other codes. The rule scales
  the grey levels of the model's input so that the brightest of its lit pixels (the 99th
  percentile, by nearest rank, of the pixels that are not black) are white (:func:`stretch_levels`):
  a copy whose brightness was multiplied by a factor gives its original's input, but for what
  the factor clipped to white and for rounding. An input whose brightest pixels are white
  already is unchanged.

A model card records the rules its model was trained and indexed with (``"input"`` in the card,
:class:`InputRules`); each is off unless the card asks for it, so an index keeps converting
its images as when it was built. The mirror and levels rules are written to a card only when set, so
a card without them reads the same in versions that do not know them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["InputRules", "BORDER_SHARE", "TOLERANCE", "LUMA_TOLERANCE", "black_background", "box_shift", "centre_image", "centre_shift",
           "grey_of", "luma", "mass_offset", "mass_shift", "meets_at_an_edge", "mirror_by_mean", "mirror_margin", "moved", "stretch_levels",
           "whole_pixels", "BALANCED", "EDGE_CONTRAST", "EDGE_SHARE", "LEVELS_PERCENTILE"]

TOLERANCE = 24  # grey levels, per channel: JPEG noise on a plain background stays within it
LUMA_TOLERANCE = 12  # grey levels of luma ("black-luma"), measured in docs/QUALITY.md
BORDER_SHARE = 0.6
EDGE_CONTRAST, EDGE_SHARE = 3, 0.5  # of the tolerance; of the background's rim (docs/QUALITY.md)
LEVELS_PERCENTILE = 99
BALANCED = 0.002  # mirror_margin under which a query is searched both ways (docs/QUALITY.md)

_BACKGROUNDS = ("keep", "black", "black-luma", "black-luma-edge")
_CENTRES = ("none", "mass", "box")
_MIRRORS = ("none", "mean")
_LEVELS = ("none", "stretch")


@dataclass(frozen=True)
class InputRules:
    """The canonical-form rules a model's input goes through (module docstring).

    Parameters
    ----------
    background : {"keep", "black", "black-luma", "black-luma-edge"}
        ``"black"``: a plain, non-black background connected to the border becomes black;
        ``"black-luma"``: the same, judged by the image's luma; ``"black-luma-edge"``: the same,
        where the background meets the picture at an edge.
    centre : {"none", "mass", "box"}
        ``"mass"``: the image is moved so that the median of its brightness is at its centre;
        ``"box"``: so that the bounding box of its pixels that are not black is centred.
    mirror : {"none", "mean"}
        ``"mean"``: the model's input is flipped left-right where the mean of its brightness
        lies right of its centre.
    levels : {"none", "stretch"}
        ``"stretch"``: the model's input is scaled so that its brightest lit pixels are white.
    """

    background: str = "keep"
    centre: str = "none"
    mirror: str = "none"
    levels: str = "none"

    def __post_init__(self) -> None:
        if self.background not in _BACKGROUNDS:
            raise ValueError(f"background must be one of {', '.join(_BACKGROUNDS)}, got {self.background!r}")
        if self.centre not in _CENTRES:
            raise ValueError(f"centre must be one of {', '.join(_CENTRES)}, got {self.centre!r}")
        if self.mirror not in _MIRRORS:
            raise ValueError(f"mirror must be one of {', '.join(_MIRRORS)}, got {self.mirror!r}")
        if self.levels not in _LEVELS:
            raise ValueError(f"levels must be one of {', '.join(_LEVELS)}, got {self.levels!r}")

    @property
    def active(self) -> bool:
        return self != InputRules()

    def to_json(self) -> dict[str, str]:
        d = {"background": self.background, "centre": self.centre}
        if self.mirror != "none":  # only when set: a card without it reads the same everywhere
            d["mirror"] = self.mirror
        if self.levels != "none":
            d["levels"] = self.levels
        return d

    @classmethod
    def from_json(cls, d: object) -> "InputRules":
        """From a card's ``"input"`` (absent: no rule, as cards written before the rules)."""
        if d is None:
            return cls()
        if not isinstance(d, dict) or set(d) - {"background", "centre", "mirror", "levels"}:
            raise ValueError(f"input must be an object with keys background, centre, mirror and levels, got {d!r}")
        return cls(**d)

    def apply(self, image: np.ndarray, centre: bool = True) -> np.ndarray:
        """``uint8 [h, w, c]`` (c = 1 or 3, alpha already composited) in canonical form; the
        input itself when no rule changes it. ``centre=False`` leaves the centring out (to a
        resize that moves the image by :func:`centre_shift` itself)."""
        if self.background != "keep":
            image = black_background(image, by_luma=self.background != "black", edge=self.background == "black-luma-edge")
        if self.centre != "none" and centre:
            image = centre_image(image, self.centre)
        return image

    def shift(self, image: np.ndarray) -> tuple[float, float] | None:
        """The fractional move ``(dy, dx)`` the centre rule asks of ``image`` (``uint8 [h, w, c]``,
        in canonical form but for the centring), for a resize to make; ``None`` without one."""
        return None if self.centre == "none" else centre_shift(grey_of(image), self.centre)

    def finish(self, batch: np.ndarray) -> np.ndarray:
        """``batch`` (``uint8 [n, h, w, c]``, the model's input) with the levels and mirror rules
        applied: the input itself when they are off or change no image."""
        if not len(batch):
            return batch
        if self.levels == "stretch":
            batch = stretch_levels(batch)
        return mirror_by_mean(batch) if self.mirror == "mean" else batch


def black_background(image: np.ndarray, by_luma: bool = False, edge: bool = False) -> np.ndarray:
    """``image`` (``uint8 [h, w, c]``) with a plain, non-black background made black (module
    docstring); ``by_luma``: judged by its luma, within :data:`LUMA_TOLERANCE` (``"black-luma"``);
    ``edge``: only where the background meets the picture at an edge (``"black-luma-edge"``)."""
    seen, tolerance = image, TOLERANCE
    if by_luma:
        seen, tolerance = (luma(image)[..., np.newaxis] if image.shape[2] == 3 else image), LUMA_TOLERANCE
    border = np.concatenate([seen[0], seen[-1], seen[1:-1, 0], seen[1:-1, -1]]).astype(np.int16)
    colour = np.median(border, axis=0)
    if colour.max() <= tolerance:
        return image  # black already (Fashion-MNIST, icons composited on black)
    if (np.abs(border - colour).max(axis=1) <= tolerance).mean() < BORDER_SHARE:
        return image  # no plain background: a photograph
    from scipy import ndimage

    difference = np.abs(seen.astype(np.int16) - colour).max(axis=2)
    near = difference <= tolerance
    seeds = np.zeros_like(near)
    seeds[[0, -1], :] = near[[0, -1], :]
    seeds[:, [0, -1]] = near[:, [0, -1]]
    background = ndimage.binary_propagation(seeds, mask=near)  # 4-connected, from the border
    if edge and not meets_at_an_edge(background, difference, tolerance):
        return image  # a texture: its lighter and darker parts fade into each other
    out = image.copy()
    out[background] = 0
    return out


def meets_at_an_edge(background: np.ndarray, difference: np.ndarray, tolerance: int) -> bool:
    """Whether a background (``bool [h, w]``) meets the picture at an edge: at least
    :data:`EDGE_SHARE` of the pixels around it (outside it, 4-neighbours of it) have a pixel of the
    picture within one pixel that differs from the background's colour (``difference``, grey
    levels) by more than :data:`EDGE_CONTRAST` times ``tolerance``. An icon's outline does (its
    soft edge is a pixel wide); a texture's pixels just beyond the tolerance lie among more of
    the same. A background with nothing around it (the whole image) does."""
    from scipy import ndimage

    rim = ~background & ndimage.binary_dilation(background)
    if not rim.any():
        return True
    nearby = ndimage.maximum_filter(np.where(background, 0, difference), size=3)
    return bool((nearby[rim] > EDGE_CONTRAST * tolerance).mean() >= EDGE_SHARE)


def mass_shift(grey: np.ndarray) -> tuple[float, float]:
    """The move ``(dy, dx)``, in fractions of a pixel, that brings the median of ``grey``'s
    brightness to its centre (positive: down, right)."""
    total = grey.sum(dtype=np.float64)
    if total <= 0:
        return 0.0, 0.0
    return _axis_shift(grey.sum(axis=1, dtype=np.float64), total), _axis_shift(grey.sum(axis=0, dtype=np.float64), total)


def mass_offset(grey: np.ndarray) -> tuple[int, int]:
    """Whole pixels ``(dy, dx)`` that move the median of ``grey``'s brightness to its centre
    (:func:`mass_shift` rounded, halves up)."""
    return whole_pixels(mass_shift(grey))


def box_shift(grey: np.ndarray) -> tuple[float, float]:
    """The move ``(dy, dx)``, in pixels (halves where a margin is odd), that centres the bounding
    box of ``grey``'s pixels that are not black (positive: down, right); none for an all-black
    image. Rounded by :func:`whole_pixels`, the odd pixel of a margin goes above and left."""
    lit = grey > 0
    rows, cols = np.flatnonzero(lit.any(axis=1)), np.flatnonzero(lit.any(axis=0))
    if not len(rows):
        return 0.0, 0.0
    return _box_axis(rows, grey.shape[0]), _box_axis(cols, grey.shape[1])


def _box_axis(lit: np.ndarray, size: int) -> float:
    return float((size - (lit[-1] + 1 - lit[0])) / 2 - lit[0])


def centre_shift(grey: np.ndarray, rule: str) -> tuple[float, float]:
    """The move ``(dy, dx)`` that the centre rule ``rule`` (``"mass"`` or ``"box"``) makes."""
    return {"mass": mass_shift, "box": box_shift}[rule](grey)


def whole_pixels(shift: tuple[float, float]) -> tuple[int, int]:
    """``shift`` rounded to whole pixels, halves up."""
    return int(np.floor(shift[0] + 0.5)), int(np.floor(shift[1] + 0.5))


def _axis_shift(mass: np.ndarray, total: float) -> float:
    # Pixel i covers [i, i + 1) with its mass spread evenly: the median is where the running
    # sum reaches half the total. Moving the image by d pixels moves it by exactly d.
    running = np.cumsum(mass)
    i = int(np.searchsorted(running, total / 2))
    before = running[i - 1] if i else 0.0
    median = i + (total / 2 - before) / mass[i]
    return float(len(mass) / 2 - median)


def grey_of(image: np.ndarray) -> np.ndarray:
    """The brightness the centring and the mirror rule weigh: the one channel, or the luma of RGB (``[..., c]``)."""
    return image[..., 0] if image.shape[-1] == 1 else luma(image)


def centre_image(image: np.ndarray, rule: str = "mass") -> np.ndarray:
    """``image`` (``uint8 [h, w, c]``) moved by whole pixels as the centre rule ``rule``
    (``"mass"`` or ``"box"``) asks, black coming in at the edges."""
    grey = grey_of(image)
    dy, dx = whole_pixels(centre_shift(grey, rule))
    return image if dy == 0 and dx == 0 else moved(image, dy, dx)


def moved(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``image`` (``[h, w, ...]``) moved by whole pixels ``(dy, dx)`` (positive: down, right),
    black coming in at the edges and what leaves the frame lost."""
    h, w = image.shape[:2]
    out = np.zeros_like(image)
    if abs(dy) < h and abs(dx) < w:
        out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)]
    return out


def stretch_levels(batch: np.ndarray) -> np.ndarray:
    """``batch`` (``uint8 [n, h, w, c]``) with each image's levels scaled so that the
    :data:`LEVELS_PERCENTILE`-th percentile (nearest rank) of its lit pixels' brightness
    (:func:`grey_of`, above 0) is 255, rounded and clipped; an image whose percentile is 255, or
    that is all black, is left as it is. Exact integer arithmetic: the same input gives the same
    pixels everywhere."""
    grey = grey_of(batch).reshape(len(batch), -1)
    out = None
    for i, levels in enumerate(grey):
        lit = np.sort(levels[levels > 0])
        if not len(lit):
            continue
        top = int(lit[-(-len(lit) * LEVELS_PERCENTILE // 100) - 1])  # nearest rank: ceil(p n / 100)
        if top == 255:
            continue
        if out is None:
            out = batch.copy()
        out[i] = np.minimum((batch[i].astype(np.uint32) * 255 + top // 2) // top, 255)
    return batch if out is None else out


def mirror_by_mean(batch: np.ndarray) -> np.ndarray:
    """``batch`` (``uint8 [n, h, w, c]``) with each image whose brightness mean lies right of its
    vertical centre line flipped left-right; an image whose mean lies on it is left as it is.

    The test is exact integer arithmetic (the brightness-weighted sum of ``2 x - (w - 1)`` over
    the columns ``x``, which a mirror negates), so an image and its mirror image give the same
    result unless the mean lies exactly on the line.
    """
    moment, _ = _column_moment(batch)
    right = moment > 0
    if not right.any():
        return batch
    out = batch.copy()
    out[right] = batch[right][:, :, ::-1]
    return out


def mirror_margin(batch: np.ndarray) -> np.ndarray:
    """Per image of ``batch`` (``uint8 [n, h, w, c]``), how far the mean of its brightness lies
    from its vertical centre line, as a share of half its width (0 for an all-black image)."""
    moment, total = _column_moment(batch)
    return np.abs(moment) / np.maximum(total * max(batch.shape[2] - 1, 1), 1)


def _column_moment(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the brightness-weighted sum of ``2 x - (w - 1)`` over the columns ``x`` (exact
    integers; positive: the mean lies right of the centre line) and the summed brightness."""
    width = batch.shape[2]
    columns = grey_of(batch).sum(axis=1, dtype=np.int64)
    return columns @ (2 * np.arange(width, dtype=np.int64) - (width - 1)), columns.sum(axis=1)


def luma(rgb: np.ndarray) -> np.ndarray:
    """``uint8`` grey of ``rgb`` (``[..., 3]``) by the ITU-R 601-2 luma transform, bit-exact with
    Pillow's ``convert("L")``: the conversion to grey of :mod:`storage.images`."""
    wide = rgb.astype(np.uint32)
    return ((wide[..., 0] * 19595 + wide[..., 1] * 38470 + wide[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)

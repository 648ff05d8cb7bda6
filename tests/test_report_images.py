"""The report's pictures: thumbnails of the original images (workflows.thumbnails), the model
input one click away, placeholders with reasons, and the report checked in headless Chromium."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import fsspec
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from storage.corpus import ReadError
from storage.image_tables import ImageUris
from storage.images import ImageSpec
from workflows import thumbnails
from workflows.report import query_report_rows, render_report, write_report
from workflows.thumbnails import THUMB_PX, image_to_uint8, make_thumbnail, read_image_views

SPEC = ImageSpec(28, 28, 1)
DATA_URL = re.compile(r'src="data:(image/[a-z]+);base64,([A-Za-z0-9+/=]+)"')
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A colourful, photo-like uint8 RGB image: gradients with noise (thousands of colours)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([255 * x / max(1, width - 1), 255 * y / max(1, height - 1), 128 + 100 * np.sin(x / 7 + y / 11)], -1)
    return np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).astype(np.uint8)


def icon(size: int = 64) -> np.ndarray:
    """An RGBA icon: a red disc with a blue ring on a transparent background (few colours)."""
    y, x = np.mgrid[0:size, 0:size]
    r = np.hypot(y - size / 2 + 0.5, x - size / 2 + 0.5)
    out = np.zeros((size, size, 4), np.uint8)
    out[r < size * 0.45] = (30, 60, 220, 255)
    out[r < size * 0.35] = (220, 30, 30, 255)
    return out


def decode_data_url(url: str) -> Image.Image:
    mime, payload = re.fullmatch(r"data:(image/[a-z]+);base64,(.+)", url).groups()
    image = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
    assert image.format.lower() == mime.split("/")[1]
    return image


@pytest.fixture
def images(tmp_path) -> dict[str, str]:
    """Image files of several sizes and aspects, an RGBA icon, a 16-bit grey image, array rows,
    a missing file and a corrupt one: name -> uri."""
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(photo(480, 640, 1)).save(folder / "landscape.jpg", quality=90)
    Image.fromarray(photo(300, 90, 2)).save(folder / "tall.png")
    Image.fromarray(photo(40, 60, 3)).save(folder / "small.png")
    Image.fromarray(icon(64), "RGBA").save(folder / "icon.png")
    grey16 = (np.linspace(0, 65535, 200 * 50).reshape(50, 200)).astype(np.uint16)
    Image.fromarray(grey16).save(folder / "grey16.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    rows = np.random.default_rng(4).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    np.save(folder / "rows.npy", rows)
    return {
        "landscape": str(folder / "landscape.jpg"),
        "tall": str(folder / "tall.png"),
        "small": str(folder / "small.png"),
        "icon": str(folder / "icon.png"),
        "grey16": str(folder / "grey16.png"),
        "row": f"{folder / 'rows.npy'}#3",
        "missing": str(folder / "gone.jpg"),
        "corrupt": str(folder / "corrupt.png"),
    }


# --------------------------------------------------------------------------- thumbnails


@pytest.mark.parametrize(
    ("shape", "dtype", "fill"),
    [((50, 20), np.bool_, True), ((50, 20), np.uint16, 65535), ((50, 20, 3), np.float32, 1.0),
     ((50, 20, 3), np.float64, 255.0), ((50, 20, 2), np.int32, 300), ((50, 20, 1), np.uint8, 255)],
)
def test_any_dtype_becomes_a_white_uint8_thumbnail(shape, dtype, fill):
    image = np.full(shape, fill, dtype=dtype)
    assert image_to_uint8(image).dtype == np.uint8 and image_to_uint8(image).max() == 255
    thumb = make_thumbnail(image)
    assert (thumb.width, thumb.height) == (20, 50) and not thumb.has_alpha
    decoded = np.asarray(decode_data_url(thumb.data_url).convert("L"))
    assert decoded.min() >= 250


def test_float_nan_and_unit_range():
    image = np.array([[0.0, 0.5], [np.nan, 1.0]], np.float32)
    np.testing.assert_array_equal(image_to_uint8(image)[..., 0], [[0, 128], [0, 255]])
    with pytest.raises(ValueError, match="shape"):
        image_to_uint8(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        image_to_uint8(np.zeros((4, 4), np.complex64))


def test_photo_is_a_small_jpeg_with_its_aspect_and_colour():
    thumb = make_thumbnail(photo(480, 640))
    image = decode_data_url(thumb.data_url)
    assert image.format == "JPEG" and image.mode == "RGB"
    assert (thumb.width, thumb.height) == image.size == (THUMB_PX, 96)
    assert thumb.nbytes < 12_000
    tall = make_thumbnail(photo(300, 90))
    assert (tall.width, tall.height) == (38, THUMB_PX)


def test_icon_keeps_its_alpha_as_png_and_is_never_enlarged():
    thumb = make_thumbnail(icon(64))
    image = decode_data_url(thumb.data_url)
    assert image.format == "PNG" and thumb.has_alpha and image.mode in ("RGBA", "LA")
    assert image.size == (64, 64)
    alpha = np.asarray(image.convert("RGBA"))[..., 3]
    assert alpha[0, 0] == 0 and alpha[32, 32] == 255
    opaque = icon(64)
    opaque[..., 3] = 255  # an alpha channel that hides nothing is dropped
    assert not make_thumbnail(opaque).has_alpha


def test_few_colours_stay_exact_as_png():
    flat = np.zeros((60, 100, 3), np.uint8)
    flat[:, 50:] = (10, 200, 30)
    image = decode_data_url(make_thumbnail(flat).data_url)
    assert image.format == "PNG" and image.size == (100, 60)
    np.testing.assert_array_equal(np.asarray(image.convert("RGB")), flat)
    reduced = decode_data_url(make_thumbnail(np.repeat(np.repeat(flat, 4, 0), 4, 1)).data_url)
    assert reduced.format == "PNG" and reduced.size == (128, 77)


def test_every_thumbnail_is_under_the_byte_cap():
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 4), dtype=np.uint8)
    assert make_thumbnail(noise).nbytes <= thumbnails.MAX_THUMB_BYTES


def test_views_of_files_rows_and_unreadable_images(images):
    names = list(images)
    views = dict(zip(names, read_image_views([(images[n], {}) for n in names], SPEC)))
    for name in ("landscape", "tall", "small", "icon", "grey16", "row"):
        view = views[name]
        assert view.thumbnail.data_url and view.thumbnail.reason is None, name
        assert view.model_input.shape == (28, 28, 1) and view.model_input.dtype == np.uint8
    sizes = {n: (views[n].thumbnail.width, views[n].thumbnail.height) for n in names}
    assert sizes["landscape"] == (128, 96) and sizes["tall"] == (38, 128) and sizes["small"] == (60, 40)
    assert sizes["icon"] == (64, 64) and views["icon"].thumbnail.has_alpha
    assert sizes["grey16"] == (128, 32) and sizes["row"] == (28, 28)
    assert views["missing"].thumbnail.reason == "file not found" and views["missing"].model_input is None
    assert views["corrupt"].thumbnail.reason and views["corrupt"].thumbnail.data_url is None
    # An array row is its own original: same pixels as the model input.
    row = np.asarray(decode_data_url(views["row"].thumbnail.data_url).convert("L"))
    np.testing.assert_array_equal(row, np.load(images["row"].split("#")[0])[3])


def test_fsspec_urls_and_unreadable_arrays():
    memory = fsspec.filesystem("memory")
    buffer = io.BytesIO()
    Image.fromarray(photo(200, 100)).save(buffer, format="PNG")
    memory.pipe_file("/report-test/a.png", buffer.getvalue())
    views = read_image_views([("memory://report-test/a.png", {}), ("memory://report-test/nope.npy#2", {}),
                              ("", {}), ("/no/such/rows.npy#0", None)], SPEC)
    assert (views[0].thumbnail.width, views[0].thumbnail.height) == (64, 128)
    assert views[1].thumbnail.reason.startswith("cannot read array")
    assert views[2].thumbnail.reason == "empty uri"
    assert views[3].thumbnail.reason.startswith("cannot read array")


def test_each_image_is_read_once_per_storage_options(images, monkeypatch):
    fetched = []
    real = thumbnails._fetch
    monkeypatch.setattr(thumbnails, "_fetch", lambda uri, options: fetched.append((uri, dict(options))) or real(uri, options))
    a, b = images["landscape"], images["icon"]
    views = read_image_views([(a, {}), (b, {}), (a, {}), (a, {"auto_mkdir": False}), (b, None)], SPEC)
    assert sorted(fetched, key=str) == sorted([(a, {}), (b, {}), (a, {"auto_mkdir": False})], key=str)
    assert views[0] is views[2] and views[1] is views[4]


def test_permission_denied_is_a_reason(images, monkeypatch):
    def refuse(uri, options):
        raise PermissionError(13, "Permission denied", uri)

    monkeypatch.setattr(thumbnails, "_fetch", refuse)
    assert read_image_views([(images["landscape"], {})], SPEC)[0].thumbnail.reason == "permission denied"


def test_the_report_size_cap_stops_reading(images, monkeypatch):
    fetched = []
    real = thumbnails._fetch
    monkeypatch.setattr(thumbnails, "_fetch", lambda uri, options: fetched.append(uri) or real(uri, options))
    uris = [images[n] for n in ("landscape", "tall", "small", "icon", "grey16", "corrupt")]
    first = read_image_views([(uris[0], {})], SPEC)[0]
    fetched.clear()
    views = read_image_views([(u, {}) for u in uris], SPEC, budget_bytes=first.nbytes, threads=1)
    assert views[0].thumbnail.data_url is not None
    assert all("cap" in v.thumbnail.reason for v in views[1:])
    assert len(fetched) == 4  # the first chunk (4 x threads): nothing is read once the cap is reached


# --------------------------------------------------------------------------- report rows


def answered_blocks(images: dict[str, str]):
    """Two fake answered blocks (what QueryJob keeps) over an index of every test image."""
    index_uris = [images[n] for n in ("landscape", "tall", "small", "icon", "grey16", "row", "missing", "corrupt")]
    block1 = SimpleNamespace(rows=np.array([0, 1]), uris=[images["landscape"], images["icon"]], errors=[])
    topk1 = SimpleNamespace(ids=np.array([[0, 3, 6, 7], [3, 1, 2, -1]]), scores=np.array([[9.0, 8, 7, 6], [5.0, 4, 3, 0]]))
    block2 = SimpleNamespace(rows=np.array([3]), uris=[images["row"]],
                             errors=[ReadError(2, images["corrupt"], "cannot identify image file")])
    topk2 = SimpleNamespace(ids=np.array([[5, 4, 0, 1]]), scores=np.array([[3.0, 2, 1, 0.5]]))
    queries = SimpleNamespace(storage_options={})
    return [(block1, topk1), (block2, topk2)], ImageUris([pa.array(index_uris)], np.array([0, len(index_uris)])), queries


def build_report(images: dict[str, str], path: Path) -> str:
    answered, uris, queries = answered_blocks(images)
    rows = query_report_rows(answered, 10, uris, queries, SPEC, storage_options={})
    write_report(str(path), rows, title="thumbnails", summary={"k": "4"})
    return path.read_text()


def test_report_rows_show_originals_with_the_model_input_one_click_away(images, tmp_path, monkeypatch):
    fetched = []
    real = thumbnails._fetch
    monkeypatch.setattr(thumbnails, "_fetch", lambda uri, options: fetched.append(uri) or real(uri, options))
    text = build_report(images, tmp_path / "report.html")
    # landscape (query and hit), icon (query and two hits): each file read once
    assert sorted(fetched) == sorted(set(fetched))
    assert "<script" not in text and "http://" not in text and "url(" not in text
    mimes = [m for m, _ in DATA_URL.findall(text)]
    assert "image/jpeg" in mimes and "image/png" in mimes
    # 4 queries (one unreadable) and 11 hits; the unreadable ones have a reason, not a toggle
    assert text.count('<details class="view">') == 3 + 2 + 3 + 4  # readable queries, hits of q0, q1, q3
    assert text.count("cannot read: file not found") == 1
    assert text.count("cannot read: ") == 3  # the missing and corrupt hits, the corrupt query
    assert "▸ model input" in text and "▸ original" in text and "click for the 28×28 model input" in text
    assert 'class="alpha' in text  # the icon on a checkerboard
    assert "could not be answered: cannot identify image file" in text


def test_a_failing_image_reader_never_fails_the_report(images, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("workflows.report.read_image_views", broken)
    text = build_report(images, tmp_path / "report.html")
    assert "the report&#x27;s images could not be read" in text and "<img" not in text


def test_hand_made_rows_still_show_the_model_input_alone():
    from workflows.report import ReportHit, ReportQuery

    pixels = np.zeros((28, 28, 1), np.uint8)
    text = render_report([ReportQuery(0, "/q.png", pixels, (ReportHit(1, 5, "/a.png", 1.0, pixels),))], title="t")
    assert "<details" not in text and text.count('<img class="px"') == 2


# --------------------------------------------------------------------------- in a browser

_CHECK = """<script>
addEventListener("load", () => {
  const shown = (el) => el.getBoundingClientRect().width > 0;
  const images = [...document.images];
  const broken = images.filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.alt);
  const view = document.querySelector("details.view");
  const before = [shown(view.querySelector(".orig img")), shown(view.querySelector(".model img"))];
  view.open = true;
  const after = [shown(view.querySelector(".orig img")), shown(view.querySelector(".model img"))];
  const out = document.createElement("pre");
  out.id = "img-check";
  out.textContent = JSON.stringify({images: images.length, broken, before, after,
                                    placeholders: document.querySelectorAll(".missing.unreadable").length});
  document.body.appendChild(out);
});
</script>"""


def chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--virtual-time-budget=10000", *args], capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run does)")
def test_report_in_headless_chromium_has_no_broken_image(images, tmp_path, record_property):
    report = tmp_path / "report.html"
    text = build_report(images, report)
    checked = tmp_path / "report-checked.html"
    checked.write_text(text.replace("</body>", _CHECK + "\n</body>"))
    dom = chromium("--dump-dom", checked.as_uri())
    found = re.search(r'<pre id="img-check">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stderr[-2000:]
    result = json.loads(html.unescape(found.group(1)))
    assert result["broken"] == [] and result["images"] == len(DATA_URL.findall(text)) > 20
    assert result["before"] == [True, False] and result["after"] == [False, True]  # one click flips the view
    assert result["placeholders"] == 3

    screenshot = tmp_path / "report.png"
    shot = chromium(f"--screenshot={screenshot}", "--window-size=1280,1100", report.as_uri())
    assert screenshot.exists(), shot.stderr[-2000:]
    opened = tmp_path / "report-model-inputs.png"  # every view flipped: the model inputs
    (tmp_path / "opened.html").write_text(text.replace('<details class="view">', '<details class="view" open>'))
    chromium(f"--screenshot={opened}", "--window-size=1280,1100", (tmp_path / "opened.html").as_uri())
    print(f"report screenshots: {screenshot} {opened}")
    record_property("screenshot", str(screenshot))
    record_property("screenshot_model_inputs", str(opened))
    picture = np.asarray(Image.open(screenshot).convert("RGB")).astype(int)
    assert picture.shape == (1100, 1280, 3)
    saturation = picture.max(axis=2) - picture.min(axis=2)
    assert (saturation > 80).sum() > 20_000  # colour thumbnails were drawn, not grey boxes

"""The self-contained HTML report of query results (workflows.report)."""

from __future__ import annotations

import base64
import io
import re

import fsspec
import numpy as np
import pytest
from PIL import Image

from workflows.report import (
    ReportHit,
    ReportQuery,
    format_score,
    render_report,
    shorten_uri,
    write_report,
)

IMG_TAG = re.compile(r"<img\b[^>]*>")
DATA_SRC = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def grey(seed: int, shape=(28, 28, 1)) -> np.ndarray:
    """A reproducible uint8 test image."""
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def hit(rank: int, label: str | None = None, pixels: np.ndarray | None = None) -> ReportHit:
    return ReportHit(
        rank=rank, image_id=100 + rank, uri=f"/data/train.gz#{100 + rank}", score=40.0 - rank,
        pixels=grey(rank) if pixels is None else pixels, label=label,
    )


def query(query_id: int = 0, hits=(), **kwargs) -> ReportQuery:
    kwargs.setdefault("pixels", grey(1000 + query_id))
    return ReportQuery(query_id=query_id, uri=f"/data/test.gz#{query_id}", hits=tuple(hits), **kwargs)


def decoded_images(html_text: str) -> list[Image.Image]:
    """Every ``<img>`` of the page, decoded; fails if one is not an inline PNG."""
    images = []
    for tag in IMG_TAG.findall(html_text):
        src = DATA_SRC.search(tag)
        assert src is not None, tag
        image = Image.open(io.BytesIO(base64.b64decode(src.group(1), validate=True)))
        assert image.format == "PNG"
        images.append(image)
    return images


def test_report_is_self_contained_with_images_at_original_size():
    rgb = grey(7, (20, 30, 3))
    queries = [
        query(0, [hit(1), hit(2, pixels=rgb), hit(3, pixels=grey(3, (28, 28)))]),
        query(1, [hit(1)], pixels=None),
    ]
    html_text = render_report(queries, title="results", summary={"k": "3"})
    assert html_text.startswith("<!DOCTYPE html>")
    for external in ("http://", "https://", 'src="file', "<script", "<link", "url("):
        assert external not in html_text
    images = decoded_images(html_text)
    expected = [queries[0].pixels, *(h.pixels for h in queries[0].hits), queries[1].hits[0].pixels]
    assert len(images) == len(expected) == 5
    for image, pixels in zip(images, expected):
        assert image.size == (pixels.shape[1], pixels.shape[0])
        assert image.mode == ("RGB" if pixels.ndim == 3 and pixels.shape[2] == 3 else "L")
        np.testing.assert_array_equal(np.asarray(image), pixels.reshape(np.asarray(image).shape))
    assert "image-rendering: pixelated" in html_text
    assert "no image" in html_text


def test_images_are_scaled_by_the_browser_to_thumb_px():
    queries = [query(0, [hit(1), hit(2, pixels=grey(2, (20, 30, 3)))])]
    sizes = [
        (int(w), int(h))
        for w, h in re.findall(r'<img\b[^>]*width="(\d+)" height="(\d+)"', render_report(queries, title="t", thumb_px=56))
    ]
    assert sizes == [(75, 75), (56, 56), (56, 37)]


def test_every_string_is_escaped():
    nasty = '<script>alert("x")</script> & \'q\''
    queries = [
        query(0, [ReportHit(1, 5, f"s3://b/{nasty}.png", 1.5, grey(0), label=nasty)], label=nasty),
        ReportQuery(query_id=1, uri=nasty, pixels=None, hits=(), error=f"cannot open {nasty}"),
    ]
    html_text = render_report(queries, title=nasty, summary={nasty: nasty})
    assert "<script" not in html_text
    assert "alert(\"x\")" not in html_text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;q&#x27;" in html_text


def test_error_rows_show_the_error_in_place_of_hits():
    queries = [
        query(0, [hit(1)]),
        ReportQuery(query_id=7, uri="/q/broken.png", pixels=None, hits=(), error="cannot decode image file"),
    ]
    html_text = render_report(queries, title="t")
    row = html_text[html_text.index('id="q7"'):]
    assert "query #7" in row
    assert "cannot decode image file" in row
    assert 'class="hits"' not in row and 'class="error"' in row
    assert 'class="hits"' in html_text[: html_text.index('id="q7"')]


def test_query_without_hits_says_so():
    assert "no hits" in render_report([query(0, [])], title="t")


def test_label_matches_are_marked():
    queries = [query(0, [hit(1, "Coat"), hit(2, "Shirt"), hit(3)], label="Coat")]
    html_text = render_report(queries, title="t")
    classes = re.findall(r'<div class="(hit(?: [a-z]+)?)">', html_text)
    assert classes == ["hit match", "hit miss", "hit"]
    assert "✓ Coat" in html_text and "✗ Shirt" in html_text
    assert "1 of 2 match" in html_text
    assert "label: Coat" in html_text


def test_labels_are_not_compared_unless_the_query_has_one():
    html_text = render_report([query(0, [hit(1, "Coat"), hit(2, "Shirt")])], title="t")
    body = html_text[html_text.index("<body>"):]
    assert re.findall(r'<div class="(hit(?: [a-z]+)?)">', body) == ["hit", "hit"]
    assert "Coat" in body and "✓" not in body and "✗" not in body
    assert "match" not in body


def test_hits_appear_in_rank_order():
    ranks = [3, 1, 10, 2, 5, 4, 9, 6, 8, 7]
    html_text = render_report([query(0, [hit(r) for r in ranks])], title="t")
    shown = [int(r) for r in re.findall(r'alt="hit (\d+):', html_text)]
    assert shown == sorted(ranks)
    positions = [html_text.index(f'<span class="rank">#{r}</span>') for r in sorted(ranks)]
    assert positions == sorted(positions)


def test_header_shows_title_and_summary_in_order():
    summary = {"index": "s3://b/idx", "version": "2", "k": "10", "precision@10": "0.781"}
    html_text = render_report([], title="my results", summary=summary)
    assert "<title>my results</title>" in html_text and "<h1>my results</h1>" in html_text
    rows = re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", html_text)
    assert rows == list(summary.items())
    assert "<table" not in render_report([], title="t")


def test_write_report_to_memory_and_local_file(tmp_path):
    queries = [query(0, [hit(1, "Bag"), hit(2, "Bag")], label="Bag")]
    expected = render_report(queries, title="t", summary={"k": "2"}).encode("utf-8")

    write_report("memory://reports/run1/report.html", queries, title="t", summary={"k": "2"})
    assert fsspec.filesystem("memory").cat_file("/reports/run1/report.html") == expected

    local = tmp_path / "nested" / "report.html"
    write_report(str(local), queries, title="t", summary={"k": "2"})
    assert local.read_bytes() == expected
    assert [p.name for p in local.parent.iterdir()] == ["report.html"]


@pytest.mark.parametrize(
    ("score", "text"),
    [(41.0, "41"), (7, "7"), (-2.0, "-2"), (np.float32(3.0), "3"), (0.5, "0.5"), (2 / 3, "0.667"),
     (12.345, "12.3"), (0.0012345, "0.00123")],
)
def test_format_score(score, text):
    assert format_score(score) == text


@pytest.mark.parametrize(
    ("uri", "max_chars", "text"),
    [
        ("/data/fashion/t10k-images-idx3-ubyte.gz#17", 40, "t10k-images-idx3-ubyte.gz#17"),
        ("/data/fashion/t10k-images-idx3-ubyte.gz#17", 12, "…ubyte.gz#17"),
        ("s3://bucket/imgs/a.png", 12, "a.png"),
        ("s3://bucket/imgs/", 12, "imgs"),
    ],
)
def test_shorten_uri(uri, max_chars, text):
    assert shorten_uri(uri, max_chars) == text


def test_rejects_bad_images_and_sizes():
    with pytest.raises(ValueError, match="uint8"):
        render_report([query(0, [hit(1, pixels=np.zeros((28, 28, 1), np.float32))])], title="t")
    with pytest.raises(ValueError, match="uint8"):
        render_report([query(0, pixels=np.zeros((28, 28, 2), np.uint8))], title="t")
    with pytest.raises(ValueError, match="thumb_px"):
        render_report([], title="t", thumb_px=0)


def test_report_records_hash_and_compare_without_their_pixels():
    a, b = query(0, [hit(1)]), query(0, [hit(1)], pixels=grey(99))
    assert a == b and hash(a) == hash(b)

"""A self-contained HTML report of query results: each query image beside its top-k hits.

The report is one HTML file with everything inline: the style sheet in a ``<style>`` element
and every image as a ``data:`` URL, so that it opens the same from a ``file://`` URL, a web
server or an e-mail attachment. It needs no JavaScript.

Each query and hit is shown as a **thumbnail of its original image** (colour, aspect ratio
kept, 128 px on the long side; JPEG for photos, PNG where there is alpha or few colours;
transparent pixels on a checkerboard), made by :mod:`workflows.thumbnails` from its uri: an
image file read with the storage options of the index (hits) or of the query corpus (queries),
or a row of an array (``<array>#<row>``), which is its own original. **One click** on the image
(a ``<details>`` element, no script) shows the **model input** in its place, the image as the
model saw it (e.g. 28x28 grey), scaled up with nearest-neighbour sampling
(``image-rendering: pixelated``); a second click shows the original again. An image that can
no longer be read (missing, corrupt, forbidden) has a placeholder with the reason; it never
fails the report, nor the query job.

Bounds: only the images shown are read, each once however many rows show it, in parallel; the
report holds at most :data:`workflows.thumbnails.MAX_REPORT_IMAGE_BYTES` (16 MiB) of image
data (about 22 MiB of HTML once in base64), each thumbnail at most 32 KiB (about 3-10 KiB for a
photo): past the cap, images are placeholders saying so, and are not read.
``--report-limit`` (50 queries by default) bounds the rows.

Rows made by hand (:class:`ReportQuery`, :class:`ReportHit` without ``original``) show the
model input alone, as PNG at its original size scaled up by the browser.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from string import Template

import numpy as np
from PIL import Image

from storage.atomic import write_bytes_atomic
from workflows.thumbnails import Thumbnail, read_image_views

__all__ = ["ReportHit", "ReportQuery", "render_report", "write_report", "query_report_rows"]

log = logging.getLogger(__name__)

#: The query image is this much larger than the hits' (96 px -> 128 px: a thumbnail's size).
QUERY_SCALE = 4 / 3
#: Default box of a hit's image, in CSS pixels.
THUMB_BOX_PX = 96

_STYLE = Template("""\
:root { color-scheme: light; }
body { margin: 0; padding: 20px 24px 32px; background: #f5f6f8; color: #1f2328;
  font: 13px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
h1 { margin: 0 0 12px; font-size: 20px; font-weight: 600; overflow-wrap: anywhere; }
table.summary { margin: 0 0 14px; border-collapse: collapse; background: #fff;
  border: 1px solid #d0d7de; border-radius: 6px; }
table.summary th, table.summary td { padding: 3px 12px; text-align: left; vertical-align: top;
  border-top: 1px solid #eaeef2; }
table.summary th { color: #57606a; font-weight: 600; white-space: nowrap; }
table.summary td { overflow-wrap: anywhere; font-variant-numeric: tabular-nums; }
p.legend { margin: 0 0 14px; color: #57606a; }
.query { display: flex; gap: 18px; align-items: flex-start; margin: 0 0 10px; padding: 12px;
  background: #fff; border: 1px solid #d0d7de; border-radius: 6px; }
.qcard { flex: 0 0 auto; width: ${qcard}px; }
.qcard .title { font-weight: 600; }
.hits { display: flex; flex: 1 1 0; flex-wrap: wrap; gap: 8px; min-width: 0; }
.hit { width: ${thumb}px; padding: 3px; border: 2px solid transparent; border-radius: 5px; }
.hit.match { border-color: #2da44e; background: #effbf2; }
.hit.miss { border-color: #f3b8b8; background: #fff; }
.hit.miss .label { color: #cf222e; }
.hit.match .label { color: #1a7f37; }
img, .missing { display: block; background: #000; }
img.px { image-rendering: crisp-edges; image-rendering: pixelated; }
img.alpha { background: repeating-conic-gradient(#d0d7de 0 25%, #fff 0 50%) 0 0 / 12px 12px; }
.missing { display: flex; align-items: center; justify-content: center; padding: 4px;
  box-sizing: border-box; background: #eaeef2; color: #57606a; font-size: 11px;
  text-align: center; overflow: hidden; overflow-wrap: anywhere; }
.missing.unreadable { background: #fff4e5; color: #8a4600; border: 1px dashed #d4a72c; }
.qcard .view, .qcard > .missing, .qcard > img { margin: 0 0 4px; }
.hit .view, .hit > .missing, .hit > img { margin: 0 0 3px; }
.view > summary { display: block; list-style: none; cursor: pointer; }
.view > summary::-webkit-details-marker { display: none; }
.view .box { display: flex; align-items: center; justify-content: center; background: #f6f8fa; }
.view:not([open]) .model, .view[open] .orig { display: none; }
.view .flip { display: block; font-size: 10px; line-height: 1.3; color: #0969da; }
.view > summary:focus-visible { outline: 2px solid #0969da; outline-offset: 1px; }
.line { overflow: hidden; white-space: nowrap; text-overflow: ellipsis; }
.hit .line { font-size: 11px; line-height: 1.35; color: #57606a; }
.hit .rank { color: #1f2328; font-weight: 600; }
.uri { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 11px;
  color: #57606a; }
.note { color: #57606a; font-style: italic; align-self: center; }
.error { flex: 1 1 0; min-width: 0; padding: 8px 10px; color: #82071e; background: #ffebe9;
  border: 1px solid #ffcecb; border-radius: 5px; white-space: pre-wrap; overflow-wrap: anywhere; }
""")


@dataclass(frozen=True)
class ReportHit:
    """One hit of a query, as shown in the report.

    Parameters
    ----------
    rank : int
        1 for the best hit.
    image_id : int
        Row of the hit in the index.
    uri : str
        Where the hit's image comes from.
    score : float
        The hit's score.
    pixels : numpy.ndarray or None
        The model input: ``uint8 [h, w, c]`` with ``c`` 1 or 3 (``[h, w]`` is taken as grey);
        ``None`` if the image could not be read.
    label : str or None
        Class label of the hit, if known.
    original : Thumbnail or None
        Thumbnail of the original image (:mod:`workflows.thumbnails`), or why there is none;
        the image is then shown as its original, the model input one click away. ``None``:
        the model input alone is shown.
    """

    rank: int
    image_id: int
    uri: str
    score: float
    pixels: np.ndarray | None = field(compare=False)
    label: str | None = None
    original: Thumbnail | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ReportQuery:
    """One query and its hits, as shown in the report.

    Parameters
    ----------
    query_id : int
        Row of the query in the query file.
    uri : str
        Where the query image comes from.
    pixels : numpy.ndarray or None
        As :attr:`ReportHit.pixels`.
    hits : tuple of ReportHit
        The query's hits, shown in rank order.
    error : str or None
        Why the query could not be answered; shown in place of the hits.
    label : str or None
        Class label of the query, if known. Hits with a label are marked as matching it or not.
    original : Thumbnail or None
        As :attr:`ReportHit.original`.
    """

    query_id: int
    uri: str
    pixels: np.ndarray | None = field(compare=False)
    hits: tuple[ReportHit, ...]
    error: str | None = None
    label: str | None = None
    original: Thumbnail | None = field(default=None, compare=False)


def render_report(
    queries: Sequence[ReportQuery],
    *,
    title: str,
    summary: Mapping[str, str] | None = None,
    thumb_px: int = THUMB_BOX_PX,
) -> str:
    """Return the HTML text of a report of ``queries``.

    Parameters
    ----------
    queries : sequence of ReportQuery
        One row each, in the given order.
    title : str
        Shown as the page title and heading.
    summary : mapping of str to str, optional
        Key/value pairs shown in a table under the heading (index, version, k, time...).
    thumb_px : int
        Width and height, in CSS pixels, of the box each hit's image is scaled into (keeping
        its aspect ratio); the query image is :data:`QUERY_SCALE` times larger.

    Returns
    -------
    str
        A complete, self-contained HTML document.

    Raises
    ------
    ValueError
        If ``thumb_px`` < 1 or an image is not ``uint8 [h, w]`` / ``[h, w, 1 or 3]``.
    """
    if isinstance(thumb_px, bool) or not isinstance(thumb_px, int | np.integer) or thumb_px < 1:
        raise ValueError(f"thumb_px must be a positive integer, got {thumb_px!r}")
    thumb_px = int(thumb_px)
    query_px = round(thumb_px * QUERY_SCALE)
    style = _STYLE.substitute(thumb=thumb_px, qcard=_card_px(query_px))
    body = [
        f"<h1>{escape(title)}</h1>",
        _summary_table(summary or {}),
        _legend(queries),
        *(_query_row(q, thumb_px, query_px) for q in queries),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>\n{style}</style>\n</head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + "\n</body>\n</html>\n"
    )


def write_report(
    url: str,
    queries: Sequence[ReportQuery],
    *,
    title: str,
    summary: Mapping[str, str] | None = None,
    thumb_px: int = THUMB_BOX_PX,
    storage_options: Mapping | None = None,
) -> None:
    """Render a report (see :func:`render_report`) and write it to ``url`` as UTF-8.

    Parameters
    ----------
    url : str
        Any fsspec URL or local path; written whole, so readers never see part of it.
    queries, title, summary, thumb_px
        As for :func:`render_report`.
    storage_options : mapping, optional
        Options of the filesystem of ``url``.
    """
    html_text = render_report(queries, title=title, summary=summary, thumb_px=thumb_px)
    write_bytes_atomic(url, html_text.encode("utf-8"), dict(storage_options or {}))


def query_report_rows(answered: Iterable[tuple], limit: int, uris, queries, spec, labels=None,
                      storage_options: Mapping | None = None) -> list[ReportQuery]:
    """The rows of a report of a query job: its first ``limit`` queries, by query row.

    Parameters
    ----------
    answered : iterable of (QueryBlock, TopK)
        Blocks of the job and their merged top-k (:mod:`workflows.query`); a block's
        unreadable queries (:class:`storage.ReadError`, ``image_id`` the query row) are shown
        with their reason.
    limit : int
        Queries shown.
    uris : storage.image_tables.ImageUris
        Uri of each image id of the index (the hits' images are read from them).
    queries : storage.Corpus
        The query corpus: its ``storage_options`` reach the queries' uris.
    spec : storage.ImageSpec
        What the pixels are converted to (the model's input).
    labels : (numpy.ndarray, numpy.ndarray), optional
        Label of each image id, label of each query row.
    storage_options : mapping, optional
        Options of the filesystems of ``uris``.

    Each image shown is read once (:func:`workflows.thumbnails.read_image_views`): its
    thumbnail and its model input; an image that cannot be read has the reason instead.
    """
    rows = []
    for block, topk in answered:
        rows += [(int(row), block.uris[i], topk.ids[i], topk.scores[i], None) for i, row in enumerate(block.rows)]
        rows += [(int(e.image_id), e.uri, None, None, e.reason) for e in block.errors]
    rows = sorted(rows, key=lambda r: r[0])[:limit]
    wanted = np.unique([int(i) for r in rows if r[2] is not None for i in r[2] if i >= 0]).astype(np.int64)
    hit_uris = dict(zip(wanted.tolist(), uris.take(wanted).to_pylist()))
    # In display order (a query, then its hits), so that the report's size cap cuts the last rows.
    requests = []
    for _, uri, ids, _, _ in rows:
        requests.append((uri, queries.storage_options))
        requests += [(hit_uris[int(i)], storage_options) for i in (() if ids is None else ids) if i >= 0]
    try:
        views = iter(read_image_views(requests, spec))
    except Exception as exc:  # never fail the job for its report's pictures
        log.warning("report images could not be read (%s: %s); the report shows their uris only", type(exc).__name__, exc)
        views = iter([None] * len(requests))
    out = []
    for row, uri, ids, scores, error in rows:
        query_view = next(views)
        hits = []
        for rank, (i, s) in enumerate(zip(() if ids is None else ids, () if ids is None else scores)):
            if i < 0:
                continue
            view = next(views)
            hits.append(ReportHit(rank=rank + 1, image_id=int(i), uri=hit_uris[int(i)], score=float(s),
                                  pixels=_pixels(view), original=_original(view),
                                  label=None if labels is None else str(labels[0][i])))
        out.append(ReportQuery(query_id=row, uri=uri, pixels=_pixels(query_view), hits=tuple(hits), error=error,
                               label=None if labels is None else str(labels[1][row]), original=_original(query_view)))
    return out


def _pixels(view) -> np.ndarray | None:
    return None if view is None else view.model_input


def _original(view) -> Thumbnail:
    return Thumbnail.unreadable("the report's images could not be read") if view is None else view.thumbnail


def format_score(score: float) -> str:
    """Integers without decimals (``41``), anything else to 3 significant digits (``0.123``)."""
    score = float(score)
    return str(int(score)) if score.is_integer() else f"{score:.3g}"


def shorten_uri(uri: str, max_chars: int) -> str:
    """The last path segment of ``uri``, cut to its last ``max_chars`` characters with ``…``.

    ``/data/fashion/t10k-images-idx3-ubyte.gz#17`` -> ``t10k-images-idx3-ubyte.gz#17``, or
    with ``max_chars=12``: ``…ubyte.gz#17``: the end is what tells images of one folder or
    array apart.
    """
    name = uri.rstrip("/").rsplit("/", 1)[-1] or uri
    if len(name) <= max_chars:
        return name
    return "…" + name[len(name) - max(1, max_chars - 1):]


def png_data_url(pixels: np.ndarray) -> str:
    """``data:image/png;base64,...`` of a ``uint8 [h, w]`` or ``[h, w, 1 or 3]`` image."""
    image = np.asarray(pixels)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"report images must be uint8 [h, w, 1 or 3], got {pixels.dtype} {pixels.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _summary_table(summary: Mapping[str, str]) -> str:
    """The key/value table under the heading; empty for an empty summary."""
    if not summary:
        return ""
    rows = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>" for k, v in summary.items())
    return f'<table class="summary">{rows}</table>'


def _legend(queries: Iterable[ReportQuery]) -> str:
    """One line explaining the hit captions, and the borders when labels are compared."""
    text = "Each hit: rank · score, image id, uri (hover for the full uri)"
    if any(q.original is not None or any(h.original is not None for h in q.hits) for q in queries):
        text += "; each image is its original: a click shows the model's input instead, a second the original"
    if any(_match(q, h) is not None for q in queries for h in q.hits):
        text += (
            '; a <span style="color:#1a7f37">green border ✓</span> marks a hit with the query\'s'
            ' label, a <span style="color:#cf222e">✗</span> one with another label'
        )
    return f'<p class="legend">{text}.</p>'


def _query_row(query: ReportQuery, thumb_px: int, query_px: int) -> str:
    """One query: its image and caption on the left, then its hits or its error."""
    return (
        f'<section class="query" id="q{int(query.query_id)}">'
        f"{_query_card(query, query_px)}{_query_results(query, thumb_px)}</section>"
    )


def _query_card(query: ReportQuery, query_px: int) -> str:
    """The query image with its id, uri, label and how many hits share its label."""
    lines = [
        f'<div class="line title">query #{int(query.query_id)}</div>',
        _uri_line(query.uri, max_chars=_chars(_card_px(query_px))),
    ]
    if query.label is not None:
        lines.append(f'<div class="line" title="{escape(query.label)}">label: {escape(query.label)}</div>')
    matches = [m for m in (_match(query, h) for h in query.hits) if m is not None]
    if matches and query.error is None:
        lines.append(f'<div class="line">{sum(matches)} of {len(matches)} match</div>')
    image = _views(query.pixels, query.original, query_px, alt=f"query {int(query.query_id)}")
    return f'<div class="qcard">{image}{"".join(lines)}</div>'


def _query_results(query: ReportQuery, thumb_px: int) -> str:
    """The hits in rank order, the error in their place, or a note that there are none."""
    if query.error is not None:
        return f'<div class="error">could not be answered: {escape(query.error)}</div>'
    if not query.hits:
        return '<div class="note">no hits</div>'
    cards = "".join(_hit_card(query, hit, thumb_px) for hit in sorted(query.hits, key=lambda h: h.rank))
    return f'<div class="hits">{cards}</div>'


def _hit_card(query: ReportQuery, hit: ReportHit, thumb_px: int) -> str:
    """One hit: its image, rank · score, image id, short uri and label."""
    match = _match(query, hit)
    css = {None: "hit", True: "hit match", False: "hit miss"}[match]
    score = format_score(hit.score)
    lines = [
        f'<div class="line" title="rank {int(hit.rank)}, score {escape(repr(float(hit.score)))}">'
        f'<span class="rank">#{int(hit.rank)}</span> · {escape(score)}</div>',
        f'<div class="line">id {int(hit.image_id)}</div>',
        _uri_line(hit.uri, max_chars=_chars(thumb_px)),
    ]
    if hit.label is not None:
        mark = {None: "", True: "✓ ", False: "✗ "}[match]
        lines.append(f'<div class="line label" title="{escape(hit.label)}">{mark}{escape(hit.label)}</div>')
    image = _views(hit.pixels, hit.original, thumb_px, alt=f"hit {int(hit.rank)}: image {int(hit.image_id)}")
    return f'<div class="{css}">{image}{"".join(lines)}</div>'


def _match(query: ReportQuery, hit: ReportHit) -> bool | None:
    """Whether ``hit`` has the query's label; ``None`` unless both labels are given."""
    if query.label is None or hit.label is None:
        return None
    return hit.label == query.label


def _card_px(query_px: int) -> int:
    """Width of the query's column: its image, but room for a readable uri at least."""
    return max(query_px, 140)


def _chars(width_px: int) -> int:
    """How many characters of an 11 px monospace uri fit in ``width_px`` (at least 8)."""
    return max(8, width_px // 7)


def _uri_line(uri: str, max_chars: int) -> str:
    """A shortened uri with the full uri as its tooltip."""
    return f'<div class="line uri" title="{escape(uri)}">{escape(shorten_uri(uri, max_chars))}</div>'


def _image(pixels: np.ndarray | None, box_px: int, alt: str) -> str:
    """An ``<img>`` of a model input scaled to fit a ``box_px`` square, or a placeholder."""
    if pixels is None:
        return f'<div class="missing" style="width:{box_px}px;height:{box_px}px">no image</div>'
    height, width = pixels.shape[:2]
    size = _fit(width, height, box_px)
    return f'<img class="px" src="{png_data_url(pixels)}" {size} alt="{escape(alt)}">'


def _views(pixels: np.ndarray | None, original: Thumbnail | None, box_px: int, alt: str) -> str:
    """The original's thumbnail, the model input one click away; or the model input alone.

    A ``<details>`` whose ``<summary>`` holds both views: the closed one shows the original,
    the open one the model input (CSS), so a click on the image flips between them.
    """
    if original is None:
        return _image(pixels, box_px, alt)
    box = f"width:{box_px}px;height:{box_px}px"
    if original.data_url is None:
        placeholder = f'cannot read: {escape(original.reason or "unknown reason")}'
        if pixels is None:
            return f'<div class="missing unreadable" style="{box}" title="{escape(original.reason or "")}">{placeholder}</div>'
        orig = f'<span class="missing unreadable" style="{box}">{placeholder}</span>'
    else:
        # Nearest-neighbour where enlarged 3x or more (a 28x28 array row): smooth otherwise.
        classes = " ".join(c for c, on in (("alpha", original.has_alpha), ("px", box_px >= 3 * max(original.width, original.height))) if on)
        size = _fit(original.width, original.height, box_px)
        orig = (f'<span class="box" style="{box}"><img class="{classes}" src="{original.data_url}" {size} '
                f'alt="{escape(alt)}"></span>')
    if pixels is None:
        model = f'<span class="missing" style="{box}">no model input</span>'
        shape = ""
    else:
        model = f'<span class="box" style="{box}">{_image(pixels, box_px, alt=f"{alt} (model input)")}</span>'
        shape = "×".join(str(n) for n in pixels.shape[:2][::-1]) + " "
    note = f"original ({original.width}×{original.height} thumbnail)" if original.data_url else "original unreadable"
    return (
        f'<details class="view"><summary title="{escape(note)}; click for the {shape}model input, again for the original">'
        f'<span class="orig">{orig}<span class="flip">▸ model input</span></span>'
        f'<span class="model">{model}<span class="flip">▸ original</span></span>'
        "</summary></details>"
    )


def _fit(width: int, height: int, box_px: int) -> str:
    """``width=".." height=".."`` of a ``width`` x ``height`` image scaled to fit a ``box_px`` square."""
    scale = box_px / max(height, width)
    return f'width="{max(1, round(width * scale))}" height="{max(1, round(height * scale))}"'

"""A self-contained HTML report of query results: each query image beside its top-k hits.

The report is one HTML file with everything inline: the style sheet in a ``<style>`` element
and every image as a ``data:image/png;base64,...`` URL, so that it opens the same from a
``file://`` URL, a web server or an e-mail attachment. It needs no JavaScript.

Images are stored as PNG at their original size and scaled up by the browser with
nearest-neighbour sampling (``image-rendering: pixelated``), which keeps 28x28 images crisp
and the file small (about 300 bytes for a 28x28 grey image).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from string import Template

import numpy as np
from PIL import Image

from storage.atomic import write_bytes_atomic

__all__ = ["ReportHit", "ReportQuery", "render_report", "write_report", "query_report_rows"]

#: The query image is this much larger than the hit thumbnails (84 px -> 112 px: 4x of 28).
QUERY_SCALE = 4 / 3

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
img, .missing { display: block; image-rendering: crisp-edges; image-rendering: pixelated;
  background: #000; }
.missing { display: flex; align-items: center; justify-content: center; background: #eaeef2;
  color: #57606a; font-size: 11px; text-align: center; }
.qcard img, .qcard .missing { margin: 0 0 4px; }
.hit img, .hit .missing { margin: 0 0 3px; }
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
        ``uint8 [h, w, c]`` with ``c`` 1 or 3 (``[h, w]`` is taken as grey); ``None`` if the
        image could not be read.
    label : str or None
        Class label of the hit, if known.
    """

    rank: int
    image_id: int
    uri: str
    score: float
    pixels: np.ndarray | None = field(compare=False)
    label: str | None = None


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
    """

    query_id: int
    uri: str
    pixels: np.ndarray | None = field(compare=False)
    hits: tuple[ReportHit, ...]
    error: str | None = None
    label: str | None = None


def render_report(
    queries: Sequence[ReportQuery],
    *,
    title: str,
    summary: Mapping[str, str] | None = None,
    thumb_px: int = 84,
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
        Width and height, in CSS pixels, of the box each hit's image is scaled into; the
        query image is :data:`QUERY_SCALE` times larger.

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
    thumb_px: int = 84,
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
    uris : pyarrow.Array
        Uri of each image id of the index (the hits' pixels are read from them).
    queries : storage.Corpus
        The query corpus (the queries' pixels are read from it).
    spec : storage.ImageSpec
        What the pixels are converted to (the model's input).
    labels : (numpy.ndarray, numpy.ndarray), optional
        Label of each image id, label of each query row.
    storage_options : mapping, optional
        Options of the filesystems of ``uris``.
    """
    from storage.corpus import UriListCorpus

    rows = []
    for block, topk in answered:
        rows += [(int(row), block.uris[i], topk.ids[i], topk.scores[i], None) for i, row in enumerate(block.rows)]
        rows += [(int(e.image_id), e.uri, None, None, e.reason) for e in block.errors]
    rows = sorted(rows, key=lambda r: r[0])[:limit]
    hit_ids = sorted({int(i) for r in rows if r[2] is not None for i in r[2] if i >= 0})
    hit_pixels = {}
    if hit_ids:
        data = UriListCorpus("report hits", storage_options, uris.take(hit_ids).to_pylist()).read(spec)
        hit_pixels = {hit_ids[int(j)]: px for j, px in zip(data.ids, data.pixels)}
    first = min(len(queries), max((r[0] for r in rows), default=-1) + 1)
    query_data = queries.read(spec, 0, first)
    query_pixels = dict(zip(query_data.ids.tolist(), query_data.pixels))
    out = []
    for row, uri, ids, scores, error in rows:
        hits = () if ids is None else tuple(
            ReportHit(rank=r + 1, image_id=int(i), uri=uris[int(i)].as_py(), score=float(s), pixels=hit_pixels.get(int(i)),
                      label=None if labels is None else str(labels[0][i]))
            for r, (i, s) in enumerate(zip(ids, scores)) if i >= 0
        )
        out.append(ReportQuery(query_id=row, uri=uri, pixels=query_pixels.get(row), hits=hits, error=error,
                               label=None if labels is None else str(labels[1][row])))
    return out


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
    image = _image(query.pixels, query_px, alt=f"query {int(query.query_id)}")
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
    image = _image(hit.pixels, thumb_px, alt=f"hit {int(hit.rank)}: image {int(hit.image_id)}")
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
    """An ``<img>`` scaled to fit a ``box_px`` square, or a placeholder if there is no image."""
    if pixels is None:
        return f'<div class="missing" style="width:{box_px}px;height:{box_px}px">no image</div>'
    height, width = pixels.shape[:2]
    scale = box_px / max(height, width)
    size = f'width="{max(1, round(width * scale))}" height="{max(1, round(height * scale))}"'
    return f'<img src="{png_data_url(pixels)}" {size} alt="{escape(alt)}">'

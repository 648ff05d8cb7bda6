"""Copies of real icons and wallpapers ranked with the codes of two placements: centred and as is.

What would indexing each image twice buy: its codes behind the model's ``centre`` rule and
without it, each query searched both ways and each image keeping its best distance? Ranks
``copies.py``'s 2,162 copies against its 1,465 indexed images by exact whole-grid Hamming
distance (the ranking the default mode's re-rank computes, without the shortlist; a query that
the mirror rule finds balanced is searched mirrored too, as the query job does), for:

* ``centred``: the model's own rules (what ``copies.py`` measures through the jobs);
* ``as is``: the same rules with ``centre: none`` (or the rules ``--second``);
* ``two placements, tau, +p``: both, for the queries whose centring moves them more than
  ``tau`` pixels at the model's input (the others centred only), the distance as is counting
  ``p`` bits more (so that it wins only when clearly closer); ``share`` is the share of queries
  searched twice;
* ``one grid of both``: the two distances summed, the whole-grid distance of one code grid that
  holds both placements side by side (a 7x14 grid for a 7x7 model): what an index of such
  grids would rank by, with no second search and no change to the index format.

    python benchmarks/centring_views.py [--model icons-photos] [--taus 0,1,2] [--penalties 0,20,40] [--second keep,none,mean]

An exploration of docs/QUALITY.md ("Overlaid text"); nothing in the product indexes two
placements yet.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from _common import parser, write_json


def hamming(queries: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Whole-grid Hamming distances ``[q, n]`` between code grids ``[q, G]`` and ``[n, G]``."""
    out = np.empty((len(queries), len(index)), np.int32)
    for s in range(0, len(queries), 64):
        x = np.bitwise_xor(queries[s : s + 64, None, :], index[None, :, :])
        out[s : s + 64] = np.unpackbits(x.view(np.uint8), axis=-1).sum(axis=-1, dtype=np.int32)
    return out


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--model", default="icons-photos")
    ap.add_argument("--taus", default="0,1,2", help="move thresholds in pixels at the model's input, comma-separated")
    ap.add_argument("--penalties", default="0", help="bits added to the distance as is, comma-separated")
    ap.add_argument("--second", metavar="BACKGROUND,CENTRE[,MIRROR[,LEVELS]]",
                    help="the second placement's input rules (default: the model's, with centre none)")
    ap.add_argument("--out-json")
    args = ap.parse_args(argv)

    import copies

    from pipeline.encode import load_encoder
    from storage.canonical import BALANCED, InputRules, grey_of, mass_shift, mirror_margin
    from storage.images import decode_and_convert

    root = copies.unpack_packages(list(copies.ICON_PACKAGES) + list(copies.WALLPAPER_PACKAGES), copies.DEFAULT_CACHE.parent / "copies")
    icons = copies.distinct(copies.icon_files(root))
    walls = copies.wallpaper_files(root)
    files = [p for p, _ in icons] + walls
    picture = copies.same_picture(files)
    encoder = load_encoder(args.model)
    centred = encoder.card.image_spec
    as_is = replace(centred, rules=InputRules(*args.second.split(",")) if args.second else replace(centred.rules, centre="none"))

    def codes(paths, spec) -> tuple[np.ndarray, np.ndarray]:
        pixels = np.stack([decode_and_convert(Path(p).read_bytes(), str(p), spec) for p in paths])
        return pixels, encoder.encode(pixels).reshape(len(pixels), -1)

    with tempfile.TemporaryDirectory() as tmp:
        queries = copies.write_queries(icons, walls, 150, Path(tmp) / "queries")
        query_paths = [Path(tmp) / "queries" / q["file"] for q in queries]
        distances = {}
        for name, spec in (("centred", centred), ("as is", as_is)):
            _, index = codes(files, spec)
            pixels, grids = codes(query_paths, spec)
            d = hamming(grids, index)
            if spec.rules.mirror == "mean":  # balanced queries both ways, as the query job searches them
                balanced = mirror_margin(pixels) < BALANCED
                flipped = encoder.encode(np.ascontiguousarray(pixels[balanced][:, :, ::-1])).reshape(int(balanced.sum()), -1)
                d[balanced] = np.minimum(d[balanced], hamming(flipped, index))
            distances[name] = d
            if name == "as is":  # how far the centring moves each query, at the model's input
                moves = np.array([np.hypot(*mass_shift(grey_of(p).astype(np.float64))) for p in pixels])

    def score(d: np.ndarray) -> dict:
        ranked = {q["file"]: list(np.argsort(d[i], kind="stable")[:10]) for i, q in enumerate(queries)}
        return copies.recall(ranked, queries, picture)

    rows = {"centred": (score(distances["centred"]), 0.0), "as is": (score(distances["as is"]), 0.0)}
    for tau in (float(t) for t in args.taus.split(",")):
        for penalty in (int(p) for p in args.penalties.split(",")):
            twice = moves > tau
            d = distances["centred"].copy()
            d[twice] = np.minimum(d[twice], distances["as is"][twice] + penalty)
            rows[f"two placements, tau {tau:g}, +{penalty}"] = (score(d), float(twice.mean()))
    rows["one grid of both"] = (score(distances["centred"] + distances["as is"]), 0.0)
    kinds = (*copies.KINDS, "overall")
    print(f"{len(queries)} copies, {len(files)} indexed, {args.model}: recall@1 / @10 by exact whole-grid Hamming distance")
    print("| kind | " + " | ".join(f"{name} (share {share:.2f})" for name, (_, share) in rows.items()) + " |")
    print("| --- |" + " --- |" * len(rows))
    for kind in kinds:
        print(f"| {kind} | " + " | ".join(f"{r[kind]['recall_at_1']:.3f} / {r[kind]['recall_at_10']:.3f}" for r, _ in rows.values()) + " |")
    figures = {"model": args.model, "rules": [centred.rules.to_json(), as_is.rules.to_json()], "queries": len(queries), "indexed": len(files),
               "rows": {name: {"share_searched_twice": share, "recall": r} for name, (r, share) in rows.items()}}
    write_json(args.out_json, figures, newline=True)
    return figures


if __name__ == "__main__":
    main()

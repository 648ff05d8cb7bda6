"""Near-duplicates on real images (issue 19): recall@1 and @10 per kind of copy, patchhash and imagehash side by side.

    python benchmarks/copies.py --out-json benchmarks/results/copies.json
    python benchmarks/copies.py --smoke        # 40 icons of one theme, 3 originals; skipped without network

**Index.** Every distinct 48x48 icon of Debian's ``mate-icon-theme``, ``lxde-icon-theme`` and
``moka-icon-theme`` (symbolic links skipped; an icon whose pixels equal an earlier one's left
out, so that each original is one image), and the 38 wallpapers of ``mate-backgrounds`` and
``sway-backgrounds``: about 1,500 images. The packages are fetched by ``apt-get download`` and
unpacked by ``dpkg-deb -x`` into ``--cache``. None of them is among the packages reserved for
the independent check.

**Queries.** ``--icons`` indexed icons drawn at random (seed 0) among those shipped at other
sizes too, and every wallpaper, are the originals. Each gives one copy of each kind, written as
a file:

* ``other size``: the same icon as its theme ships it at its largest size (128-256 px), or at
  32 px for every second original (icons only);
* ``jpeg q30``: JPEG at quality 30 (an icon flattened onto white first, as editors save it);
* ``half size`` (Lanczos), ``5% crop`` (5% of each dimension, split at random between the two
  sides), ``+30% brightness``, ``3 deg rotation`` (either way, bicubic, corners transparent or
  black), ``mirror`` (left-right), ``2-10% shift`` (moved by 2-10% of each dimension, either
  way, on a transparent or black canvas of the same size), ``grey``, ``overlaid text`` (white
  text with a black outline, a sixth of the image high, near the bottom);
* ``flattened on white``, ``flattened on black``: the alpha channel removed by compositing
  onto a plain background (originals with transparency only).

Wallpapers are copied from their full-size image. Every copy keeps transparency where its
format does.

**Measured**, one step after the other in one run: ``patchhash index`` and ``patchhash query
--k 10`` with default settings (no ``--model`` unless given: the index gets the model a folder
of image files gets by default), and the same queries with ``--flip``; then
imagehash dHash and pHash (``photo_refs.py imagehash --flatten black``: each image composited
on black, hashed, the 10 nearest by exact Hamming distance). A copy is found at rank r when
its original is the r-th hit. A wallpaper shipped as several files (resolutions, portrait
crops: :func:`same_picture`) is one picture, so a hit on any of its files finds it, for every
tool alike. Recall@1 and @10 per kind and overall, and the CPU seconds of each tool (user +
system of the commands and their children).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from _common import HERE, add_smoke_and_out_json, parser, write_json
from bench_photos import DEFAULT_CACHE, FetchError, patchhash, run_measured, unpack_packages, without_samples

ICON_PACKAGES = ("mate-icon-theme", "lxde-icon-theme", "moka-icon-theme")
WALLPAPER_PACKAGES = ("mate-backgrounds", "sway-backgrounds")
ICON_SIZE = 48
KINDS = ("other size", "jpeg q30", "half size", "5% crop", "+30% brightness", "3 deg rotation", "mirror",
         "2-10% shift", "grey", "overlaid text", "flattened on white", "flattened on black")


# --------------------------------------------------------------------------- the corpus


def icon_files(root: Path) -> list[tuple[Path, list[tuple[int, Path]]]]:
    """The 48x48 icons under ``root`` (``icons/<theme>/48x48/<context>/<name>.png``, no symbolic
    links), each with its other shipped sizes ``[(pixels, path)]``."""
    out = []
    for path in sorted(root.glob(f"usr/share/icons/*/{ICON_SIZE}x{ICON_SIZE}/*/*.png")):
        if path.is_symlink():
            continue
        theme_dir, context, name = path.parents[2], path.parent.name, path.name
        others = []
        for size_dir in sorted(theme_dir.iterdir()):
            size = size_dir.name.split("x")[0]
            if size_dir.name == path.parents[1].name or not size.isdigit() or "@" in size_dir.name:
                continue
            other = size_dir / context / name
            if other.exists():
                others.append((int(size), other.resolve()))
        out.append((path, others))
    return out


def wallpaper_files(root: Path) -> list[Path]:
    """The wallpapers under ``root`` (``usr/share/backgrounds``: JPEG and PNG files, no symbolic links), sorted."""
    return sorted(p for p in (root / "usr/share/backgrounds").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")
                  and p.is_file() and not p.is_symlink())


def distinct(icons: list[tuple]) -> list[tuple]:
    """``icons`` (tuples whose first item is an image file) without those whose RGBA pixels equal an earlier one's."""
    from PIL import Image

    seen, keep = set(), []
    for path, others in icons:
        with Image.open(path) as image:
            rgba = image.convert("RGBA")
            digest = hashlib.sha256(f"{rgba.size}".encode() + rgba.tobytes()).digest()
        if digest not in seen:
            seen.add(digest)
            keep.append((path, others))
    return keep


def _nearest_differences(icons: list[tuple]) -> list[float]:
    """Per icon, the mean absolute difference (0-255) from the most similar other icon of the
    same size, both flattened on black and grey (255 when no other has its size)."""
    from PIL import Image

    greys = []
    for path, _ in icons:
        with Image.open(path) as image:
            greys.append(np.asarray(_flatten(image, (0, 0, 0)).convert("L"), np.float64))
    return [min((float(np.abs(other - mine).mean()) for j, other in enumerate(greys) if j != i and other.shape == mine.shape),
                default=255.0) for i, mine in enumerate(greys)]


# --------------------------------------------------------------------------- the copies


def _has_alpha(image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info


def _flatten(image, colour):
    from PIL import Image

    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, colour + (255,)), rgba).convert("RGB")


def _text(image, rng):
    from PIL import ImageDraw, ImageFont

    out = image.copy()
    size = max(8, out.height // 6)
    draw = ImageDraw.Draw(out)
    white, black = ((255, 255, 255, 255), (0, 0, 0, 255)) if out.mode in ("RGBA", "RGB") else (255, 0)
    draw.text((out.width * 0.05, out.height * 0.75), "(c) copy 2026", fill=white, font=ImageFont.load_default(size=size),
              stroke_width=max(1, size // 10), stroke_fill=black)
    return out


def _shift(image, rng):
    from PIL import Image

    dx = round(rng.uniform(0.02, 0.10) * image.width) * rng.choice((-1, 1))
    dy = round(rng.uniform(0.02, 0.10) * image.height) * rng.choice((-1, 1))
    canvas = Image.new(image.mode, image.size)  # transparent, or black
    canvas.paste(image, (dx, dy))
    return canvas


def _crop(image, rng):
    cut_x, cut_y = round(image.width * 0.05), round(image.height * 0.05)
    left, top = rng.randint(0, cut_x), rng.randint(0, cut_y)
    return image.crop((left, top, image.width - (cut_x - left), image.height - (cut_y - top)))


def brighter(image, factor: float = 1.3):
    """``image`` (RGB or RGBA) with its brightness times ``factor``, its transparency kept."""
    from PIL import ImageEnhance

    if image.mode != "RGBA":
        return ImageEnhance.Brightness(image).enhance(factor)
    out = ImageEnhance.Brightness(image.convert("RGB")).enhance(factor)
    out.putalpha(image.getchannel("A"))
    return out


def make_copy(kind: str, image, rng):
    """``(copy, format, save options)`` of ``image`` (RGB or RGBA) for ``kind`` (not ``other size``)."""
    from PIL import Image, ImageOps

    if kind == "jpeg q30":
        return (_flatten(image, (255, 255, 255)) if image.mode == "RGBA" else image), "jpeg", {"quality": 30}
    made = {
        "half size": lambda: image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.Resampling.LANCZOS),
        "5% crop": lambda: _crop(image, rng),
        "+30% brightness": lambda: brighter(image),
        "3 deg rotation": lambda: image.rotate(3 * rng.choice((-1, 1)), Image.Resampling.BICUBIC),
        "mirror": lambda: ImageOps.mirror(image),
        "2-10% shift": lambda: _shift(image, rng),
        "grey": lambda: image.convert("LA" if image.mode == "RGBA" else "L"),
        "overlaid text": lambda: _text(image, rng),
        "flattened on white": lambda: _flatten(image, (255, 255, 255)),
        "flattened on black": lambda: _flatten(image, (0, 0, 0)),
    }[kind]()
    return made, "png", {"compress_level": 1}


def write_queries(icons, wallpapers, n_icons: int, folder: Path, seed: int = 0, unlike: float = 0.0) -> list[dict]:
    """The copies of the originals, as files in ``folder``; per query ``{file, kind, original}``
    (``original``: the original's position in the index, icons first, then wallpapers).

    ``unlike`` > 0: originals only among the icons whose pixels (flattened on black, grey)
    differ from every other indexed icon's by at least this mean (0-255): the smoke run's
    few originals then have no near twin (``format-justify-right`` and ``-center`` differ by 1.1),
    whose codes may equal theirs on one CPU and not on another.
    """
    from PIL import Image

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    candidates = [i for i, (_, others) in enumerate(icons) if others]
    if unlike > 0:
        nearest = _nearest_differences(icons)
        candidates = [i for i in candidates if nearest[i] >= unlike]
    chosen = sorted(rng.sample(candidates, min(n_icons, len(candidates))))
    originals = [(i, icons[i][0], icons[i][1]) for i in chosen]
    originals += [(len(icons) + j, path, []) for j, path in enumerate(wallpapers)]
    queries = []

    def add(kind: str, original: int, image, fmt: str, options: dict) -> None:
        path = folder / f"q{len(queries):05d}.{'jpg' if fmt == 'jpeg' else fmt}"
        image.save(path, format=fmt, **options)
        queries.append({"file": path.name, "kind": kind, "original": original})

    for n, (original, path, others) in enumerate(originals):
        if others:  # the largest shipped size, or 32 px for every second original
            small = [p for size, p in others if size == 32]
            pick = small[0] if n % 2 and small else max(others)[1]
            with Image.open(pick) as image:
                add("other size", original, image.convert("RGBA"), "png", {"compress_level": 1})
        with Image.open(path) as source:
            alpha = _has_alpha(source)
            image = source.convert("RGBA" if alpha else "RGB")
        for kind in KINDS[1:]:
            if kind.startswith("flattened") and not alpha:
                continue
            add(kind, original, *make_copy(kind, image, rng))
    return queries


def with_rules(model: str, rules: str, folder: Path) -> str:
    """A copy of ``model`` in ``folder`` whose card names the input rules ``"background,centre[,mirror[,levels]]"``."""
    import shutil

    from pipeline.modelcard import resolve_model_url
    from storage.canonical import InputRules

    shutil.copytree(resolve_model_url(model), folder)
    card = json.loads((folder / "card.json").read_text())
    card["input"] = InputRules(*rules.split(",")).to_json()
    (folder / "card.json").write_text(json.dumps(card, indent=1))
    return str(folder)


# --------------------------------------------------------------------------- scoring


def same_picture(files: list[Path]) -> list[int]:
    """Per indexed file, the position of the first file showing the same picture: a wallpaper's
    name without its resolution (``_1920x1080``) and ``_Portrait`` suffixes in the same folder.

    ``sway-backgrounds`` ships one wallpaper as 8 files (resolutions, landscape and portrait
    crops) and ``mate-backgrounds`` one at 3 resolutions. Each file is indexed, and each is a
    copy of the others as "other size" counts an icon's other shipped sizes, so a hit on any
    of them finds the original. Icons are their own picture (their other sizes are not indexed).
    """
    first: dict[tuple[str, str], int] = {}
    out = []
    for i, path in enumerate(map(Path, files)):
        if "backgrounds" not in path.parts:
            out.append(i)
            continue
        stem = re.sub(r"(_\d+x\d+)?(_Portrait)?$", "", path.stem)
        out.append(first.setdefault((str(path.parent), stem), i))
    return out


def recall(ranked: dict[str, list[int]], queries: list[dict], picture: list[int] | None = None) -> dict:
    """Recall@1 and @10 per kind and overall; ``ranked``: per query file, the index positions of its hits in order.

    ``picture`` (:func:`same_picture`): a hit on another file of the original's picture finds it.
    """
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for q in queries:
        target, hits = q["original"], ranked.get(q["file"], [])
        if picture is not None:
            target, hits = picture[target], [picture[p] for p in hits]
        for key in (q["kind"], "overall"):
            counts[key][0] += 1
            counts[key][1] += hits[:1] == [target]
            counts[key][2] += target in hits[:10]
    return {kind: {"queries": n, "recall_at_1": r1 / n, "recall_at_10": r10 / n} for kind, (n, r1, r10) in counts.items()}


def patchhash_ranks(results: Path, position: dict[str, int]) -> dict[str, list[int]]:
    import pyarrow.parquet as pq

    table = pq.read_table(results).to_pydict()
    ranked: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for query_uri, rank, uri in zip(table["query_uri"], table["rank"], table["image_uri"]):
        if uri is not None:
            ranked[os.path.basename(query_uri)].append((rank, position[os.path.realpath(uri)]))
    return {q: [p for _, p in sorted(hits)] for q, hits in ranked.items()}


# --------------------------------------------------------------------------- the benchmark


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--icons", type=int, default=150, help="icon originals (each wallpaper is one too)")
    ap.add_argument("--max-index", type=int, default=0, help="index only the first N distinct icons (0: all)")
    ap.add_argument("--icon-packages", default=",".join(ICON_PACKAGES))
    ap.add_argument("--wallpaper-packages", default=",".join(WALLPAPER_PACKAGES), help="comma-separated; '' for none")
    ap.add_argument("--model", help="model directory or built-in name (default: none given, so the index gets the model a "
                                    "folder of image files gets by default)")
    ap.add_argument("--input-rules", metavar="BACKGROUND,CENTRE[,MIRROR[,LEVELS]]",
                    help="run with a copy of the model whose card names these input rules instead (e.g. keep,none: as "
                         "before the rules; black,mass,mean: centred and mirrored too); the weights are the model's")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE.parent / "copies")
    ap.add_argument("--debs", type=Path, help="a folder holding the .deb files already (else apt-get download)")
    ap.add_argument("--workdir", help="where the corpus, copies and indexes go (default: a temporary directory)")
    ap.add_argument("--skip-unfetchable", action="store_true", help="exit 0 with {\"skipped\": reason} without the packages")
    add_smoke_and_out_json(ap, "lxde-icon-theme only, 40 of its icons indexed, 3 originals; skipped without network")
    args = ap.parse_args(argv)
    if args.smoke:
        args.icons, args.max_index, args.icon_packages, args.wallpaper_packages = 3, 40, "lxde-icon-theme", ""
        args.skip_unfetchable = True
    icon_packages = [p for p in args.icon_packages.split(",") if p]
    wallpaper_packages = [p for p in args.wallpaper_packages.split(",") if p]
    try:
        root = unpack_packages(icon_packages + wallpaper_packages, args.cache, args.debs)
    except FetchError as exc:
        if not args.skip_unfetchable:
            sys.exit(f"cannot get the packages: {exc}")
        print(f"skipped: {exc}")
        write_json(args.out_json, {"skipped": str(exc)})
        return {"skipped": str(exc)}
    icons = distinct(icon_files(root))[: args.max_index or None]
    wallpapers = wallpaper_files(root) if wallpaper_packages else []
    index_files = [path for path, _ in icons] + wallpapers
    position = {os.path.realpath(p): i for i, p in enumerate(index_files)}
    picture = same_picture(index_files)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        corpus = work / "corpus.txt"  # the files where they were unpacked: a uri list
        corpus.write_text("".join(f"{p}\n" for p in index_files))
        queries = write_queries(icons, wallpapers, args.icons, work / "queries", unlike=4.0 if args.smoke else 0.0)
        print(f"index: {len(icons)} icons + {len(wallpapers)} wallpapers; {len(queries)} copies of "
              f"{len({q['original'] for q in queries})} originals", flush=True)
        index = str(work / "index")
        from workflows.index import FILES_MODEL

        model = with_rules(args.model or FILES_MODEL, args.input_rules, work / "model") if args.input_rules else args.model
        built = run_measured(patchhash("index", "--corpus", str(corpus), "--index", index, *(["--model", model] if model else [])),
                             "patchhash index")
        runs = {}
        for label, extra in (("default", []), ("flip", ["--flip"])):
            out = work / f"{label}.parquet"
            runs[label] = run_measured(patchhash("query", "--index", index, "--queries", str(work / "queries"), "--out", str(out),
                                                 "--k", "10", *extra), f"patchhash query {label}")
            runs[label]["recall"] = recall(patchhash_ranks(out, position), queries, picture)
        paths = work / "paths.json"
        paths.write_text(json.dumps({"corpus": [str(p) for p in index_files],
                                     "queries": [str(work / "queries" / q["file"]) for q in queries]}))
        hashes = {}
        for kind in ("dhash", "phash"):
            out = work / f"{kind}.json"
            hashes[kind] = run_measured([sys.executable, str(HERE / "photo_refs.py"), "imagehash", "--kind", kind, "--flatten", "black",
                                         "--paths", str(paths), "--out", str(out), "--k", "10"], kind)
            top = json.loads(out.read_text())["top"]
            hashes[kind]["recall"] = recall({q["file"]: t for q, t in zip(queries, top)}, queries, picture)
    figures = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "indexed": {"icons": len(icons), "wallpapers": len(wallpapers), "pictures": len(set(picture))},
        "queries": len(queries),
        "patchhash": {"index": without_samples(built), "query": without_samples(runs["default"]), "query_flip": without_samples(runs["flip"]),
                      "cpu_s": built["cpu_s"] + runs["default"]["cpu_s"]},
        "imagehash": {kind: without_samples(h) for kind, h in hashes.items()},
    }
    _print(figures)
    write_json(args.out_json, figures)
    return figures


def _print(f: dict) -> None:
    ours, flip = f["patchhash"]["query"]["recall"], f["patchhash"]["query_flip"]["recall"]
    dhash, phash = f["imagehash"]["dhash"]["recall"], f["imagehash"]["phash"]["recall"]
    print(f"\n{f['queries']} copies; index of {f['indexed']['icons']} icons + {f['indexed']['wallpapers']} wallpapers")
    print("| kind of copy | queries | patchhash R@1 / R@10 | with --flip | dHash | pHash |")
    print("| --- | --- | --- | --- | --- | --- |")
    for kind in (*KINDS, "overall"):
        if kind not in ours:
            continue
        cells = [f"{r[kind]['recall_at_1']:.2f} / {r[kind]['recall_at_10']:.2f}" for r in (ours, flip, dhash, phash)]
        print(f"| {kind} | {ours[kind]['queries']} | " + " | ".join(cells) + " |")
    print(f"CPU s: patchhash index + query {f['patchhash']['cpu_s']:.1f} (query with --flip "
          f"{f['patchhash']['query_flip']['cpu_s']:.1f}); dHash {f['imagehash']['dhash']['cpu_s']:.1f}, "
          f"pHash {f['imagehash']['phash']['cpu_s']:.1f}")


if __name__ == "__main__":
    main()

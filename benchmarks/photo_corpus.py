"""The training corpus of the shipped ``icons-photos`` model: real colour icons from Debian packages.

    python benchmarks/photo_corpus.py --out DIR              # DIR/corpus.txt: the shipped model's corpus
    python benchmarks/photo_corpus.py --out DIR --copies 4   # DIR/corpus.csv: icons and altered copies, labelled

Every PNG icon, at every size the theme ships, of ``paper-icon-theme``, ``tango-icon-theme``,
``elementary-xfce-icon-theme``, ``gnome-dust-icon-theme`` and ``faba-icon-theme`` (fetched by
``apt-get download`` and unpacked by ``dpkg-deb -x``), symbolic links skipped and each distinct
image once. None of these packages is reserved for the independent check, and none is indexed
or queried by the near-duplicate benchmark (``copies.py`` uses other themes), so the model is
measured there on images it has not seen. The list is sorted, so the same packages give the
same corpus.

The shipped ``icons-photos`` was trained on the icons alone (``--copies 0``), reconstruction
only, as the command this script prints.

**Copies as classes** (tried, not shipped: docs/MODEL.md). Each icon is also written
``--copies`` times altered, each copy by one alteration drawn at random: JPEG quality 30 (flattened onto white first), brightness times
0.7-1.3, half size, a 5% crop, grey, or flattened onto white. ``corpus.csv`` lists the icons
and their copies with the icon's number as the label, so ``patchhash train --labels`` learns
codes that tell each icon from the others and keep its copies with it (instance
discrimination, as learned perceptual hashes are trained). Overlaid text, rotations, moves,
mirrors and the other shipped sizes are never made here: the near-duplicate benchmark measures
them as alterations the model did not train on.
"""

from __future__ import annotations

import sys
from pathlib import Path

from _common import parser
from bench_photos import DEFAULT_CACHE, FetchError, unpack_packages
from copies import brighter, distinct, make_copy

PACKAGES = ("paper-icon-theme", "tango-icon-theme", "elementary-xfce-icon-theme", "gnome-dust-icon-theme", "faba-icon-theme")
TRAIN = ("patchhash train --corpus {corpus} --out {out} --preset fashion-mnist --centre mass --mirror mean "
         "--epochs 15 --seed 0 --name icons-photos")
TRAIN_COPIES = ("patchhash train --corpus {corpus} --labels {corpus} --out {out} --preset fashion-mnist --centre mass --mirror mean "
                "--epochs 10 --seed 0 --name icons-photos-copies")
ALTERATIONS = ("jpeg q30", "brightness", "half size", "5% crop", "grey", "flattened on white")


def icon_files(root: Path) -> list[Path]:
    """Every PNG under ``root/usr/share/icons`` that is not a symbolic link, each distinct image (RGBA pixels) once."""
    paths = [p for p in sorted(root.glob("usr/share/icons/**/*.png")) if not p.is_symlink() and p.is_file()]
    return [path for path, _ in distinct([(path, None) for path in paths])]


def write_copies(files: list[Path], n: int, folder: Path, seed: int = 0) -> list[tuple[str, int]]:
    """``(file, label)`` of every icon (label: its position) and ``n`` altered copies of each, written to ``folder``."""
    import random

    from PIL import Image

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, path in enumerate(files):
        rows.append((str(path), label))
        if not n:
            continue
        with Image.open(path) as source:
            image = source.convert("RGBA")
        for j in range(n):
            kind = rng.choice(ALTERATIONS)
            if kind == "brightness":
                copy, fmt, options = brighter(image, rng.uniform(0.7, 1.3)), "png", {"compress_level": 1}
            else:
                copy, fmt, options = make_copy(kind, image, rng)
            out = folder / f"{label:05d}-{j}.{'jpg' if fmt == 'jpeg' else fmt}"
            copy.save(out, format=fmt, **options)
            rows.append((str(out), label))
    return rows


def main(argv=None) -> Path:
    ap = parser(__doc__)
    ap.add_argument("--out", type=Path, required=True, help="folder for corpus.txt")
    ap.add_argument("--packages", default=",".join(PACKAGES))
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE.parent / "colour")
    ap.add_argument("--debs", type=Path, help="a folder holding the .deb files already (else apt-get download)")
    ap.add_argument("--copies", type=int, default=0, help="altered copies of each icon, labelled as it (0, the default: the "
                                                         "icons only, as the shipped model)")
    args = ap.parse_args(argv)
    try:
        root = unpack_packages([p for p in args.packages.split(",") if p], args.cache, args.debs)
    except FetchError as exc:
        sys.exit(f"cannot get the packages: {exc}")
    import csv

    files = icon_files(root)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.copies:
        corpus = args.out / "corpus.txt"
        corpus.write_text("".join(f"{p}\n" for p in files))
        print(f"{len(files)} distinct icons -> {corpus}")
        print(TRAIN.format(corpus=corpus, out=args.out / "icons-photos"))
        return corpus
    rows = write_copies(files, args.copies, args.out / "copies")
    corpus = args.out / "corpus.csv"
    with open(corpus, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["uri", "label"])
        writer.writerows(rows)
    print(f"{len(files)} distinct icons and {len(rows) - len(files)} copies -> {corpus}")
    print(TRAIN_COPIES.format(corpus=corpus, out=args.out / "icons-photos-copies"))
    return corpus


if __name__ == "__main__":
    main()

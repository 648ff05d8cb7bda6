"""Seed 000's network (the ``cifar`` preset) trained and evaluated on real colour images: icons by context.

Seed 000 trains its per-patch autoencoder on CIFAR-10. CIFAR-10 cannot be fetched on these
machines (they reach a Debian mirror and a Python package index, not cs.toronto.edu), and
Debian packages no labelled colour photo corpus. What Debian does ship is icon themes, and
every icon sits in a folder naming its context (``apps``, ``actions``, ``devices``,
``mimetypes``, ``places``, ``status``...): a labelled corpus of real colour images. This script
takes the 32x32 PNG icons of themes that no other benchmark uses and that are not reserved for
the independent check (``paper-icon-theme``, ``tango-icon-theme``, ``elementary-xfce-icon-theme``,
``gnome-dust-icon-theme``, ``faba-icon-theme``), keeps each distinct image once and the
contexts with at least ``--min-class`` icons, and splits them by icon name (a fifth of the names
are queries, so no query has a same-named icon in the index), then runs what these commands
run (their library API, in one process and on one Dask cluster):

    patchhash train --corpus index.csv --preset cifar --epochs E     (no labels, as seed 000)
    patchhash index --corpus index.csv --index I --model M
    patchhash evaluate --index I --queries queries.csv --labels index.csv --query-labels queries.csv \\
        --modes seed,default --baselines pixel-knn,lsh-64,ae-annoy

    python benchmarks/colour_icons.py --out-json benchmarks/results/colour_icons.json
    python benchmarks/colour_icons.py --smoke     # tango only, one epoch; skipped without network

Precision@10 here counts neighbours of the same context, which is coarser than a CIFAR class
(an ``apps`` icon can show anything); half the icons are ``apps``, so chance is not 1/k.
"""

from __future__ import annotations

import csv
import logging
import tempfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from _common import add_smoke_and_out_json, parser, write_json
from bench_photos import DEFAULT_CACHE, FetchError, unpack_packages
from copies import distinct

from workflows.cluster import ClusterSettings, dask_client
from workflows.evaluate import EvaluateSettings, evaluate
from workflows.index import index
from workflows.train import train

PACKAGES = ("paper-icon-theme", "tango-icon-theme", "elementary-xfce-icon-theme", "gnome-dust-icon-theme", "faba-icon-theme")
ALIASES = {"mimes": "mimetypes"}  # elementary-xfce's name of the context
SIZE = 32


def icons(root: Path) -> list[tuple[Path, str]]:
    """``(file, context)`` of every 32x32 PNG icon under ``root`` that is not a symbolic link, each image once.

    Two layouts: ``<theme>/32x32/<context>/<name>.png`` and ``<theme>/<context>/32/<name>.png``.
    """
    from PIL import Image

    found = []
    for path in sorted(root.glob("usr/share/icons/*/**/*.png")):
        parts = path.relative_to(root / "usr/share/icons").parts
        if path.is_symlink() or len(parts) != 4:
            continue
        if parts[1] == f"{SIZE}x{SIZE}":
            context = parts[2]
        elif parts[2] == str(SIZE):
            context = parts[1]
        else:
            continue
        with Image.open(path) as image:  # the header only
            if image.size == (SIZE, SIZE):
                found.append((path, ALIASES.get(context, context)))
    return distinct(found)


def split(items: list[tuple[Path, str]], min_class: int) -> tuple[list, list]:
    """Index and query rows: contexts with at least ``min_class`` icons; a fifth of the icon names are queries."""
    counts = Counter(context for _, context in items)
    kept = [(p, c) for p, c in items if counts[c] >= min_class]
    queries = [(p, c) for p, c in kept if zlib.crc32(p.stem.encode()) % 5 == 0]
    return [r for r in kept if r not in queries], queries


def write_csv(rows: list[tuple[Path, str]], contexts: list[str], path: Path) -> str:
    """A uri list that is also the labels file: ``uri,label``, the label the context's number in ``contexts``."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["uri", "label"])
        writer.writerows((str(p), contexts.index(c)) for p, c in rows)
    return str(path)


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--packages", default=",".join(PACKAGES))
    ap.add_argument("--epochs", type=int, default=20, help="training epochs of the cifar preset")
    ap.add_argument("--ae-epochs", type=int, default=20, help="training epochs of the ae-annoy baseline")
    ap.add_argument("--min-class", type=int, default=40, help="keep the contexts with at least this many icons")
    ap.add_argument("--max-icons", type=int, default=0, help="keep at most this many icons, evenly spaced in file order (0: all)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE.parent / "colour")
    ap.add_argument("--debs", type=Path, help="a folder holding the .deb files already (else apt-get download)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", help="where the corpus, model and index go (default: a temporary directory)")
    add_smoke_and_out_json(ap, "90 icons of tango-icon-theme, one epoch, in-process; skipped without network")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.smoke:
        args.packages, args.epochs, args.ae_epochs, args.min_class, args.workers = "tango-icon-theme", 1, 1, 5, 1
        args.max_icons = 90
    try:
        root = unpack_packages([p for p in args.packages.split(",") if p], args.cache, args.debs)
    except FetchError as exc:
        print(f"skipped: {exc}")
        write_json(args.out_json, {"skipped": str(exc)})
        return {"skipped": str(exc)}
    found = icons(root)
    if args.max_icons and len(found) > args.max_icons:
        found = [found[i] for i in np.linspace(0, len(found) - 1, args.max_icons).round().astype(int)]
    index_rows, query_rows = split(found, args.min_class)
    print(f"{len(index_rows)} indexed icons, {len(query_rows)} queries; contexts: "
          + ", ".join(f"{c} {n}" for c, n in Counter(c for _, c in index_rows + query_rows).most_common()), flush=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        contexts = sorted({c for _, c in index_rows + query_rows})
        corpus, queries = write_csv(index_rows, contexts, work / "index.csv"), write_csv(query_rows, contexts, work / "queries.csv")
        model, index_url = str(work / "model"), str(work / "index")
        card = train(corpus, model, preset="cifar", epochs=args.epochs, seed=0, name="cifar-icons")
        # the smoke run on threads of this process: worker processes would each import TensorFlow again
        with dask_client(ClusterSettings(workers=args.workers, processes=not args.smoke)) as client:
            index(corpus, index_url, model, client=client)
            settings = EvaluateSettings(ks=(1, 10, 100), modes=("seed", "default"), baselines=("pixel-knn", "lsh-64", "ae-annoy"),
                                        ae_epochs=args.ae_epochs)
            evaluation = evaluate(index_url, queries, corpus, queries, settings, client=client).to_json()
    figures = {
        "packages": args.packages.split(","), "epochs": args.epochs, "ae_epochs": args.ae_epochs,
        "indexed": len(index_rows), "queries": len(query_rows),
        "contexts": dict(Counter(c for _, c in index_rows + query_rows).most_common()),
        "chance_p10": sum(n * n for n in Counter(c for _, c in index_rows).values()) / len(index_rows) ** 2,
        "training_seconds": card.training["seconds"], "final_loss": card.training["final_loss"],
        "methods": evaluation["methods"],
    }
    print(f"\n| method | P@1 | P@10 | P@100 | mAP@100 | ms/query | build s |\n|---|---|---|---|---|---|---|")
    for m in figures["methods"]:
        p = m["precision"]
        build = "" if m["build_seconds"] is None else f"{m['build_seconds']:.1f}"
        print(f"| {m['name']} | {p['1']:.3f} | {p['10']:.3f} | {p['100']:.3f} | {m['map']:.3f} | {m['ms_per_query']:.2f} | {build} |")
    print(f"\nchance P@10 (a random indexed icon's context matches): {figures['chance_p10']:.3f}; "
          f"cifar preset trained {args.epochs} epochs in {figures['training_seconds']:.0f} s")
    write_json(args.out_json, figures)
    return figures


if __name__ == "__main__":
    main()

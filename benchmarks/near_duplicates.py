"""Reverse image search on altered copies: how often the original comes back first.

Indexes 3,000 real Fashion-MNIST train images with a model (default: the shipped one),
writes 40 of them altered as image files, queries each set through the whole default-mode
job, and prints the share found at rank 1, with default settings and with query shifts
(--shift-radius 1; half-pixel steps, --shift-step 0.5).
``tests/test_near_duplicates.py`` asserts the cases docs/QUALITY.md promises.

    python benchmarks/near_duplicates.py [--model fashion-mnist] [--input-rules black,mass] [--default-only]
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
from _common import TRAIN_IMAGES, parser
from PIL import Image

N_INDEX = 3000
ORIGINALS = np.arange(7, N_INDEX, 75)  # 40 indexed images spread over the index


def noisier(img, rng):
    return np.clip(img.astype(np.float64) + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


def dimmer(img, rng):
    return (img * 0.75).astype(np.uint8)


def unchanged(img, rng):
    return img


def shifted(img, rng):
    """Moved one pixel diagonally at the model's own 28x28 resolution (background fills in)."""
    dy, dx = rng.choice([-1, 1], 2)
    out = np.roll(img, (dy, dx), axis=(0, 1))
    out[0 if dy > 0 else -1, :] = 0
    out[:, 0 if dx > 0 else -1] = 0
    return out


def shifted_large(img, rng):
    """A 112x112 copy moved by 2 pixels: what a slightly shifted photo looks like to the model."""
    big = np.asarray(Image.fromarray(img).resize((112, 112), Image.BILINEAR))
    dy, dx = rng.choice([-2, 2], 2)
    return np.roll(big, (dy, dx), axis=(0, 1))


# name: (alteration, file format)
ALTERATIONS = {
    "gaussian noise sigma 12": (noisier, "png"),
    "dimmed to 75%": (dimmer, "png"),
    "re-encoded as JPEG q=70": (unchanged, "jpeg"),
    "112x112 copy shifted by 2 pixels": (shifted_large, "png"),
    "28x28 copy shifted by 1 pixel": (shifted, "png"),
}


# (--shift-radius, --shift-step) of each column
SHIFTS = ((0, 1), (1, 1), (0.5, 0.5), (1, 0.5))
SHIFT_LABELS = ("default", "r=1", "r=0.5 s=0.5", "r=1 s=0.5")


def write_copies(images: np.ndarray, name: str, folder: Path) -> None:
    """The altered copies of ``images[ORIGINALS]`` as files ``000.png``... in ``folder``."""
    alter, fmt = ALTERATIONS[name]
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for n, i in enumerate(ORIGINALS):
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(alter(images[i, :, :, 0], rng), np.uint8)).save(
            buffer, format=fmt, **({"quality": 70} if fmt == "jpeg" else {}))
        (folder / f"{n:03d}.{fmt}").write_bytes(buffer.getvalue())


def found_first(results: str) -> np.ndarray:
    """Per copy, whether its rank-1 hit is its original."""
    import pyarrow.parquet as pq

    table = pq.read_table(results).to_pydict()
    top = {q: i for q, r, i in zip(table["query_id"], table["rank"], table["image_id"]) if r == 1}
    return np.array([top.get(n) == i for n, i in enumerate(ORIGINALS)])


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--model", default="fashion-mnist")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--input-rules", metavar="BACKGROUND,CENTRE",
                    help="use a copy of the model whose card names these input rules (e.g. black,mass: centred)")
    ap.add_argument("--default-only", action="store_true", help="default settings only, no query shifts")
    args = ap.parse_args()
    from storage import ImageSpec, open_corpus
    from workflows.cluster import ClusterSettings, dask_client
    from workflows.index import IndexSettings, index
    from workflows.query import QuerySettings, query

    images = open_corpus(TRAIN_IMAGES).read(ImageSpec(28, 28, 1), 0, N_INDEX).pixels
    with tempfile.TemporaryDirectory() as tmp, dask_client(ClusterSettings(workers=args.workers)) as client:
        if args.input_rules:
            from copies import with_rules

            args.model = with_rules(args.model, args.input_rules, Path(tmp) / "model")
        np.save(f"{tmp}/corpus.npy", images[..., 0])
        index(f"{tmp}/corpus.npy", f"{tmp}/idx", args.model, IndexSettings(shard_size=1000, partitions=2), client=client)
        print(f"\n{len(ORIGINALS)} altered copies of images indexed among {N_INDEX} ({args.model}); original at rank 1:")
        for name in ALTERATIONS:
            write_copies(images, name, Path(tmp) / name)
            cells = []
            for radius, step in SHIFTS[:1] if args.default_only else SHIFTS:
                out = f"{tmp}/{name}-{radius}-{step}.parquet"
                query(f"{tmp}/idx", str(Path(tmp) / name), out, QuerySettings(k=3, shift_radius=radius, shift_step=step), client=client)
                cells.append(f"{int(found_first(out).sum())}/{len(ORIGINALS)}")
            print(f"  {name:34s} " + "   ".join(f"{label}: {cell:>6s}" for label, cell in zip(SHIFT_LABELS, cells)), flush=True)


if __name__ == "__main__":
    main()

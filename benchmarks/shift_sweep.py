"""Shifted copies of larger images: does the original come back first, by shift settings?

A held-out companion of ``near_duplicates.py`` (other originals, other sizes and shifts).
Each of ``--originals`` Fashion-MNIST train images, spread over the first 3,000, is enlarged
to ``size`` x ``size`` (bilinear), moved by ``shift`` pixels diagonally, and resized back to
the model's input as ``patchhash query`` would. Its code grid, searched at the offsets of
each ``(--shift-radius, --shift-step)``, is ranked against the 3,000 indexed grids by exact
whole-grid Hamming distance (best over the offsets): the ranking the default mode's re-rank
computes, without its shortlist, so this isolates what the shifted copies do::

    python benchmarks/shift_sweep.py [--originals 60]
    python benchmarks/shift_sweep.py --smoke
"""

from __future__ import annotations

import numpy as np
from _common import TRAIN_IMAGES, add_smoke_and_out_json, parser, write_json

N_INDEX = 3000
COPIES = ((112, 1), (112, 2), (112, 3), (56, 1), (84, 2), (224, 3))  # (size, shift in pixels at that size)
SETTINGS = ((0, 1), (1, 1), (0.5, 0.5), (1, 0.5))  # (--shift-radius, --shift-step)


def moved_copy(img: np.ndarray, size: int, shift: int, rng) -> np.ndarray:
    from PIL import Image

    big = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
    return np.roll(big, tuple(rng.choice([-shift, shift], 2)), axis=(0, 1))


def main(argv=None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--originals", type=int, default=60)
    ap.add_argument("--model", default="fashion-mnist")
    add_smoke_and_out_json(ap, "300 indexed images, 5 originals, two copy kinds")
    args = ap.parse_args(argv)

    from pipeline.encode import load_encoder
    from pipeline.shifts import offsets, shifted_copies
    from storage import open_corpus
    from storage.images import _resize_crop

    n_index, copies = (300, COPIES[:2]) if args.smoke else (N_INDEX, COPIES)
    n_originals = 5 if args.smoke else args.originals
    encoder = load_encoder(args.model)
    spec = encoder.card.image_spec
    images = open_corpus(TRAIN_IMAGES).read(spec, 0, n_index).pixels
    indexed = encoder.encode(images).reshape(n_index, -1).astype(np.uint64)
    originals = np.linspace(30, n_index - 1, n_originals).astype(np.int64)
    rows = []
    print(f"{n_originals} originals among {n_index} indexed images; original ranked first by whole-grid Hamming distance:")
    print("| copy | " + " | ".join(f"r={r} s={s}" for r, s in SETTINGS) + " |")
    print("|---|" + "---|" * len(SETTINGS))
    for size, shift in copies:
        rng = np.random.default_rng(1)
        queries = np.stack([_resize_crop(moved_copy(images[i, :, :, 0], size, shift, rng)[..., None], spec) for i in originals])
        found = {}
        for radius, step in SETTINGS:
            n_offsets = len(offsets(radius, step))
            grids = encoder.encode(shifted_copies(queries, radius, step)).reshape(n_originals * n_offsets, -1).astype(np.uint64)
            # whole-grid distance to every indexed image, best over each query's shifted copies
            dist = np.stack([np.unpackbits((indexed ^ g[None]).view(np.uint8), axis=1).sum(axis=1, dtype=np.int64) for g in grids])
            best = dist.reshape(n_originals, n_offsets, n_index).min(axis=1)
            pick = best.argmin(axis=1)  # ties: the lowest id, as the query job breaks them
            found[f"r={radius} s={step}"] = int((pick == originals).sum())
        rows.append({"size": size, "shift": shift, "found": found, "originals": n_originals})
        print(f"| {size}x{size} moved {shift} px | " + " | ".join(f"{v}/{n_originals}" for v in found.values()) + " |", flush=True)
    result = {"indexed": n_index, "rows": rows}
    write_json(args.out_json, result)
    return result


if __name__ == "__main__":
    main()

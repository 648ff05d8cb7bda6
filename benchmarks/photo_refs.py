"""The references of ``bench_photos.py``, each run as a command of its own (Pillow, numpy and
imagehash only: no patchhash import counts against them):

    python benchmarks/photo_refs.py decode --paths paths.json --out out.json [--processes 2]
    python benchmarks/photo_refs.py imagehash --kind dhash --paths paths.json --out out.json [--flatten black]

``paths.json`` is ``{"corpus": [...], "queries": [...]}`` (``decode`` reads ``corpus`` only).

* ``decode``: the decode limit. A pool of ``--processes`` processes reads each file, decodes it
  at reduced size where the format allows (JPEG ``draft``: libjpeg scales the DCT by 1/2 to 1/8
  and gives grey directly; PNG has no reduced decode) and scales it to cover the model input,
  then crops its centre (28x28 grey for the shipped model), as patchhash's conversion does.
  Writes images/s, timed from the pool's start to its last image.
* ``imagehash``: what a user of imagehash runs for near-duplicate search: ``imagehash.dhash``
  (or ``phash``) of ``Image.open(path)`` for every corpus and query image (a pool of
  ``--processes``), then for each query the ``--k`` corpus images nearest by exact Hamming
  distance (numpy popcount over all 64-bit hashes). Writes the ranks and the seconds. With
  ``--flatten black`` an image with transparency is composited on black first (as patchhash
  does; imagehash itself would hash the colours hidden under the transparent pixels).
"""

from __future__ import annotations

import argparse
import io
import json
import time
from multiprocessing import Pool

import numpy as np
from PIL import Image


def reduced_decode(path: str, size: tuple[int, int] = (28, 28), mode: str = "L") -> np.ndarray:
    """``path`` decoded at reduced size (JPEG draft) and scaled to cover ``size`` (h, w), centre-cropped."""
    height, width = size
    with open(path, "rb") as f:
        data = f.read()
    with Image.open(io.BytesIO(data)) as image:
        w, h = image.size
        scale = max(height / h, width / w)
        cover = (max(width, round(w * scale)), max(height, round(h * scale)))
        image.draft(mode, cover)  # JPEG only: the largest DCT scaling that still covers the target
        image = image.convert(mode).resize(cover, Image.Resampling.BILINEAR)
    top, left = (cover[1] - height) // 2, (cover[0] - width) // 2
    return np.asarray(image)[top : top + height, left : left + width]


def _hash(args: tuple[str, str, bool]) -> int:
    import imagehash

    kind, path, flatten = args
    image = Image.open(path)
    if flatten and (image.mode in ("RGBA", "LA", "PA", "P") or "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    bits = getattr(imagehash, kind)(image).hash.ravel()
    return int(np.packbits(bits.astype(np.uint8)).view(">u8")[0])


def rank(corpus: np.ndarray, queries: np.ndarray, k: int) -> list[list[int]]:
    """Per query, the ``k`` corpus rows nearest by Hamming distance (ties: lower row first)."""
    out = []
    for q in queries:
        distances = np.bitwise_count(corpus ^ q)
        out.append(np.argsort(distances, kind="stable")[:k].tolist())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("decode", "imagehash"))
    ap.add_argument("--paths", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--kind", choices=("dhash", "phash"), default="dhash")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--flatten", choices=("none", "black"), default="none")
    args = ap.parse_args()
    Image.MAX_IMAGE_PIXELS = None  # trusted files (the 100 MP test image of the smoke run); inherited by the pool
    paths = json.loads(open(args.paths).read())
    started = time.perf_counter()
    if args.what == "decode":
        with Pool(args.processes) as pool:
            n = sum(1 for _ in pool.imap_unordered(reduced_decode, paths["corpus"], chunksize=4))
        seconds = time.perf_counter() - started
        result = {"images": n, "seconds": seconds, "images_per_s": n / seconds}
    else:
        with Pool(args.processes) as pool:
            flatten = args.flatten == "black"
            corpus = np.array(pool.map(_hash, [(args.kind, p, flatten) for p in paths["corpus"]], chunksize=4), dtype=np.uint64)
            queries = np.array(pool.map(_hash, [(args.kind, p, flatten) for p in paths["queries"]], chunksize=4), dtype=np.uint64)
        top = rank(corpus, queries, args.k)
        seconds = time.perf_counter() - started
        result = {"images": len(corpus), "queries": len(queries), "seconds": seconds, "top": top}
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()

"""Model geometry selection on a held-out split of the Fashion-MNIST *train* images.

Trains each candidate on the first 50k train images, indexes those 50k, and queries 1000
images of the held-out last 10k; prints precision@10 by label for
(a) exact Hamming distance of the concatenated patch codes and (b) the same restricted to
a positional shortlist. The test set is never looked at here.

    python benchmarks/choose_model.py --epochs 4 --out benchmarks/results/choose_model.json
"""

from __future__ import annotations

import gzip
import json
import time

import numpy as np
from _common import TRAIN_IMAGES, TRAIN_LABELS, parser, write_json


def _idx(path: str, offset: int) -> np.ndarray:
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def precision_at_10_hamming(db: np.ndarray, q: np.ndarray, db_labels, q_labels) -> float:
    db = db.reshape(len(db), -1)
    q = q.reshape(len(q), -1)
    hits = []
    for i in range(len(q)):
        d = np.bitwise_count(db ^ q[i]).sum(axis=1, dtype=np.int64)
        top = np.lexsort((np.arange(len(d)), d))[:10]
        hits.append(np.mean(db_labels[top] == q_labels[i]))
    return float(np.mean(hits))


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--candidates", default="32:8:4,64:8:4,32:8:2,16:4:2")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from pipeline.model import ModelConfig
    from pipeline.train import TrainSettings, train_autoencoder, save_model
    from pipeline.encode import load_encoder

    x = _idx(TRAIN_IMAGES, 16).reshape(-1, 28, 28, 1)
    y = _idx(TRAIN_LABELS, 8).astype(np.int64)
    db, db_y = x[:50000], y[:50000]
    rng = np.random.default_rng(0)
    qi = 50000 + rng.choice(10000, args.queries, replace=False)
    q, q_y = x[qi], y[qi]
    pix = precision_at_10_hamming  # noqa: F841
    rows = []
    for cand in args.candidates.split(","):
        bits, patch, stride = map(int, cand.split(":"))
        cfg = ModelConfig((28, 28, 1), bits=bits, patch=patch, stride=stride)
        res = train_autoencoder(db, cfg, TrainSettings(epochs=args.epochs, seed=0))
        out = f"/tmp/choose_model/{cand.replace(':', '-')}"
        save_model(out, cand, cfg, res, {})
        enc = load_encoder(out)
        t = time.perf_counter()
        db_codes = enc.encode(db)
        enc_s = time.perf_counter() - t
        q_codes = enc.encode(q)
        p10 = precision_at_10_hamming(db_codes, q_codes, db_y, q_y)
        row = dict(candidate=cand, bits=bits, patch=patch, stride=stride, grid=list(cfg.grid),
                   epochs=args.epochs, train_s=round(res.seconds, 1), final_loss=round(res.history["loss"][-1], 4),
                   encode_img_per_s=round(len(db) / enc_s), p10_hamming=round(p10, 4))
        print(json.dumps(row), flush=True)
        rows.append(row)
    write_json(args.out, rows)


if __name__ == "__main__":
    main()

"""Which training objective and geometry give codes that retrieve by label: a sweep.

Each variant trains a fresh model on the 60k Fashion-MNIST train images (10 epochs unless
the variant says otherwise) and reports the precision@10 of *exact* Hamming ranking of the
concatenated code grids, for the 10k test images as queries: the ceiling any index over
those codes can reach. Variants (see ``VARIANTS``):

* ``ae``: reconstruction only (seed 000's objective);
* ``ceW``: plus a linear classifier on the code grid, cross-entropy weight W
  (``pipeline.train``'s label-aware training);
* ``pair``: plus a pairwise likelihood loss on the codes' inner products (DPSH-style);
* ``center``: plus a per-class random hash-centre target (CSQ-style);
* suffixes: ``_pP`` patch size, ``_bB`` bits, ``_eE`` epochs, ``_s32``/``_s32_64`` a stem
  of 3x3 convolutions before the patch convolution.

It also scores the label-aware variants with the Hamming distance weighted per bit (by the
norm of the classifier's weights) and with query expansion, which the default mode does
not use (docs/QUALITY.md says why).

    KERAS_BACKEND=jax python benchmarks/objective_sweep.py --variants ce3,ce3_s32_64   # on a GPU: ~30 s a variant
    python benchmarks/objective_sweep.py --variants ce3 --n 6000 --queries 1000         # CPU, a quick look

The figures in benchmarks/results/objective_sweep.json came from one H200 with the jax
backend. Training on a GPU is not bit-reproducible: reruns move P@10 by about 0.003.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from _common import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, parser, write_json

VARIANTS = {
    "ae": dict(),
    "ce1": dict(ce=1.0),
    "ce3": dict(ce=3.0),
    "pair1": dict(pair=1.0),
    "pair1a4": dict(pair=1.0, alpha=4.0),
    "ce1pair1": dict(ce=1.0, pair=1.0),
    "center1": dict(center=1.0),
    "ce1_b64": dict(ce=1.0, bits=64),
    "pair1_b64": dict(pair=1.0, bits=64),
    "pair1_b16": dict(pair=1.0, bits=16),
    "pair1_e20": dict(pair=1.0, epochs=20),
    "ce3_p12": dict(ce=3.0, patch=12),
    "ce3_p16": dict(ce=3.0, patch=16),
    "ce3_p20": dict(ce=3.0, patch=20),
    "ce3_p16_b64": dict(ce=3.0, patch=16, bits=64),
    "ce3_p16_e20": dict(ce=3.0, patch=16, epochs=20),
    "ae_p16": dict(patch=16),
    "ce3_s32": dict(ce=3.0, stem=(32,)),
    "ce3_s32_64": dict(ce=3.0, stem=(32, 64)),
    "ce3_s32_64_b64": dict(ce=3.0, stem=(32, 64), bits=64),
    "ae_s32": dict(stem=(32,)),
}


def losses():
    """The two experimental losses (not in the package: they lost to the classifier)."""
    import keras
    from keras import ops

    class Pairwise(keras.losses.Loss):
        def __init__(self, alpha=8.0, **kw):
            super().__init__(**kw)
            self.alpha = alpha

        def call(self, y_true, y_pred):
            y = ops.reshape(ops.cast(y_true, "int32"), (-1,))
            u = 2.0 * ops.reshape(y_pred, (ops.shape(y_pred)[0], -1)) - 1.0
            theta = self.alpha * ops.matmul(u, ops.transpose(u)) / ops.cast(ops.shape(u)[1], "float32")
            same = ops.cast(ops.equal(y[:, None], y[None, :]), "float32")
            return ops.mean(ops.softplus(theta) - same * theta, axis=-1)

    class Centre(keras.losses.Loss):
        def __init__(self, centres, **kw):
            super().__init__(**kw)
            self.centres = ops.convert_to_tensor(centres)

        def call(self, y_true, y_pred):
            y = ops.reshape(ops.cast(y_true, "int32"), (-1,))
            p = ops.clip(ops.reshape(y_pred, (ops.shape(y_pred)[0], -1)), 1e-6, 1 - 1e-6)
            t = ops.take(self.centres, y, axis=0)
            return -ops.mean(t * ops.log(p) + (1 - t) * ops.log(1 - p), axis=-1)

    return Pairwise, Centre


def precision_at_10(query_signs, index_signs, query_labels, index_labels, weights=None) -> float:
    """P@10 of ranking by (weighted) Hamming distance; signs are +-1 float32 rows."""
    hits = []
    for lo in range(0, len(query_signs), 500):
        q = query_signs[lo:lo + 500] * (1 if weights is None else weights)
        top = np.argsort(-(q @ index_signs.T), axis=1, kind="stable")[:, :10]
        hits.append((index_labels[top] == query_labels[lo:lo + 500, None]).mean(axis=1))
    return round(float(np.concatenate(hits).mean()), 4)


def run(name, data, bits=32, patch=8, stem=(), epochs=10, ce=0.0, pair=0.0, center=0.0, alpha=8.0) -> dict:
    import keras

    from pipeline.model import ENCODING_LAYER, ModelConfig, build_autoencoder, build_encoder
    from pipeline.normalize import Normalization

    xtr, ytr, xte, yte = data
    keras.utils.set_random_seed(0)
    config = ModelConfig((28, 28, 1), bits=bits, patch=patch, stride=4, filters=128, widths=(128, 64), stem=stem)
    norm = Normalization.fit(xtr)
    x = norm.apply(xtr)
    ae = build_autoencoder(config)
    codes = ae.get_layer(ENCODING_LAYER)
    flat = keras.layers.Flatten()(codes.output)
    outputs, loss_list, weights, targets = [ae.output], ["mse"], [1.0], [x]
    Pairwise, Centre = losses()
    if ce:
        outputs.append(keras.layers.Dense(10, name="label")(keras.layers.Rescaling(2.0, offset=-1.0)(flat)))
        loss_list.append(keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        weights.append(ce)
        targets.append(ytr)
    if pair:
        outputs.append(flat)
        loss_list.append(Pairwise(alpha))
        weights.append(pair)
        targets.append(ytr)
    if center:
        centres = np.random.default_rng(0).integers(0, 2, (10, config.grid[0] * config.grid[1] * bits)).astype("float32")
        outputs.append(keras.layers.Flatten()(codes.input))  # the sigmoid units before rounding
        loss_list.append(Centre(centres))
        weights.append(center)
        targets.append(ytr)
    model = keras.Model(ae.input, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss_list, loss_weights=weights)
    started = time.time()
    model.fit(x, targets, epochs=epochs, batch_size=128, verbose=0, shuffle=True)
    seconds = time.time() - started
    encoder = build_encoder(ae)

    def signs(images):
        raw = encoder.predict(norm.apply(images), batch_size=1024, verbose=0)
        return raw.reshape(len(images), -1).astype(np.float32) * 2 - 1

    st, sq = signs(xtr), signs(xte)
    scorings = {"exact": precision_at_10(sq, st, yte, ytr)}
    if ce:
        w = np.linalg.norm(np.asarray(model.get_layer("label").get_weights()[0]), axis=1).astype(np.float32)
        scorings["weighted by |w|"] = precision_at_10(sq, st, yte, ytr, w)
        scorings["weighted by |w|^2"] = precision_at_10(sq, st, yte, ytr, w ** 2)
    reconstruction = float(np.mean((ae.predict(norm.apply(xte[:2000]), verbose=0) - norm.apply(xte[:2000])) ** 2))
    result = dict(name=name, bits=bits, patch=patch, stem=list(stem), epochs=epochs, ce=ce, pair=pair, center=center,
                  alpha=alpha, p10=scorings["exact"], p10_scorings=scorings, recon_mse=round(reconstruction, 4),
                  train_s=round(seconds, 1))
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--variants", default="ce3,ce3_s32_64", help=f"comma-separated, or 'all': {', '.join(VARIANTS)}")
    ap.add_argument("--n", type=int, default=60000, help="training images")
    ap.add_argument("--queries", type=int, default=10000, help="test images used as queries")
    ap.add_argument("--out-json", default=None)
    args = ap.parse_args()
    from storage import ImageSpec, open_corpus, read_labels

    spec = ImageSpec(28, 28, 1)
    data = (open_corpus(TRAIN_IMAGES).read(spec, 0, args.n).pixels,
            read_labels(TRAIN_LABELS)[:args.n].astype("int32"),
            open_corpus(TEST_IMAGES).read(spec, 0, args.queries).pixels,
            read_labels(TEST_LABELS)[:args.queries].astype("int32"))
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variants: {', '.join(unknown)}")
    rows = [run(name, data, **VARIANTS[name]) for name in names]
    write_json(args.out_json, rows)


if __name__ == "__main__":
    main()

"""The ``ae-annoy`` baseline: seeds 002/003's system, for ``patchhash evaluate``.

Seeds 002 and 003 (a translation of 002) train a small convolutional autoencoder on
Fashion-MNIST and index its *float* latent vectors with Annoy:

* encoder: 3x3 convolutions of 16, 8 and 8 channels (ReLU, "same" padding), each followed by a
  2x2 max-pool with "same" padding: 28x28 -> 14x14 -> 7x7 -> 4x4x8, a latent of 128 floats;
* decoder: nearest-neighbour resize to 7x7, 14x14 and 28x28, each followed by a 3x3
  convolution (8, 8, 16 channels, ReLU), then a 3x3 convolution to one channel; logits
  against the pixels scaled to [0, 1] by sigmoid cross-entropy;
* Adam at 0.001, batches of 400, 20 epochs, Xavier (Glorot uniform) initial weights;
* Annoy over the 128-float latents (angular distance, the default of the Annoy version the seed
  used), 10 trees; a query returns the ``get_nns_by_vector`` neighbours of its latent.

The same network serves any input shape (the resizes go to ``ceil(h / 4)``, ``ceil(h / 2)``
and ``h``). ``annoy`` is an optional extra (``pip install 'patchhash[annoy]'``).
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from dataclasses import dataclass

import numpy as np

from storage import MissingExtraError

__all__ = ["AeAnnoySettings", "AeAnnoy"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AeAnnoySettings:
    """The seed's training and index settings (its values are the defaults)."""

    epochs: int = 20
    batch_size: int = 400
    learning_rate: float = 1e-3
    trees: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "trees"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


def _annoy():
    try:
        import annoy
    except ImportError as exc:
        raise MissingExtraError("the ae-annoy baseline needs the annoy package: pip install 'patchhash[annoy]'") from exc
    return annoy


def _networks(input_shape: tuple[int, int, int], seed: int):
    """The seed's autoencoder (image -> logits) and its encoder (image -> 128 floats for 28x28)."""
    from pipeline.backend import keras

    count = iter(range(1, 100))

    def conv(width: int, activation: str | None = "relu"):
        init = keras.initializers.GlorotUniform(seed=zlib.crc32(f"{seed}:ae-annoy:{next(count)}".encode()))
        return keras.layers.Conv2D(width, 3, padding="same", activation=activation, kernel_initializer=init)

    h, w, c = input_shape
    image = keras.Input(shape=input_shape, name="image")
    x = image
    for width in (16, 8, 8):
        x = conv(width)(x)
        x = keras.layers.MaxPooling2D(2, padding="same")(x)
    latent = keras.layers.Flatten(name="latent")(x)
    for (rh, rw), width in zip([(math.ceil(h / 4), math.ceil(w / 4)), (math.ceil(h / 2), math.ceil(w / 2)), (h, w)], (8, 8, 16)):
        x = keras.layers.Resizing(rh, rw, interpolation="nearest")(x)
        x = conv(width)(x)
    logits = conv(c, activation=None)(x)
    return keras.Model(image, logits, name="ae_annoy_autoencoder"), keras.Model(image, latent, name="ae_annoy_encoder")


def _scaled(pixels: np.ndarray) -> np.ndarray:
    return np.asarray(pixels, np.float32) / 255.0


class AeAnnoy:
    """A trained seed 002 encoder and the Annoy index of the latents of the images it was built on.

    Build with :meth:`build`; item ``i`` of the index is row ``i`` of the pixels given.
    """

    def __init__(self, encoder, index, dim: int, train_seconds: float, build_seconds: float, final_loss: float) -> None:
        self.encoder, self.index, self.dim = encoder, index, dim
        self.train_seconds, self.build_seconds, self.final_loss = train_seconds, build_seconds, final_loss

    @classmethod
    def build(cls, pixels: np.ndarray, settings: AeAnnoySettings = AeAnnoySettings()) -> "AeAnnoy":
        """Train the autoencoder on ``pixels`` (uint8 ``[n, h, w, c]``), then index their latents.

        ``build_seconds`` is the whole build: training, encoding and the Annoy trees.
        """
        annoy = _annoy()
        from pipeline.backend import keras, tf

        pixels = np.asarray(pixels)
        if pixels.ndim != 4 or len(pixels) < 2:
            raise ValueError(f"need [n >= 2, h, w, c] images to train on, got shape {pixels.shape}")
        started = time.perf_counter()
        keras.utils.set_random_seed(settings.seed)
        tf.config.experimental.enable_op_determinism()
        autoencoder, encoder = _networks(pixels.shape[1:], settings.seed)
        autoencoder.compile(optimizer=keras.optimizers.Adam(settings.learning_rate),
                            loss=keras.losses.BinaryCrossentropy(from_logits=True))
        x = _scaled(pixels)
        history = autoencoder.fit(x, x, epochs=settings.epochs, batch_size=settings.batch_size, shuffle=True, verbose=0)
        train_seconds = time.perf_counter() - started
        final_loss = float(history.history["loss"][-1])
        log.info("ae-annoy: trained seed 002's autoencoder on %d images, %d epochs in %.1f s (loss %.4f)",
                 len(pixels), settings.epochs, train_seconds, final_loss)
        latents = cls._encode(encoder, pixels)
        index = annoy.AnnoyIndex(latents.shape[1], "angular")
        index.set_seed(settings.seed)
        for i, vector in enumerate(latents):
            index.add_item(i, vector)
        index.build(settings.trees, n_jobs=1)
        return cls(encoder, index, latents.shape[1], train_seconds, time.perf_counter() - started, final_loss)

    @staticmethod
    def _encode(encoder, pixels: np.ndarray) -> np.ndarray:
        # predict_on_batch: predict() would build a tf.data pipeline and log a notice per call
        batches = [encoder.predict_on_batch(_scaled(pixels[lo:lo + 1024])) for lo in range(0, len(pixels), 1024)]
        return np.concatenate([np.asarray(b, np.float32) for b in batches]) if batches else np.zeros((0, 1), np.float32)

    def search(self, query_pixels: np.ndarray, k: int) -> np.ndarray:
        """``int64 [q, k]``: the Annoy neighbours of each query's latent, nearest first (-1 past the last)."""
        latents = self._encode(self.encoder, np.asarray(query_pixels))
        out = np.full((len(latents), k), -1, np.int64)
        for row, vector in enumerate(latents):
            found = self.index.get_nns_by_vector(vector, k)
            out[row, :len(found)] = found
        return out

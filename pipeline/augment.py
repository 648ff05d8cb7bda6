"""Training-only input changes that the consistency losses of :mod:`pipeline.train` compare codes across."""

from __future__ import annotations

import numpy as np

from pipeline.backend import keras

ops = keras.ops

__all__ = ["RandomBrightness"]


class RandomBrightness(keras.layers.Layer):
    """The normalised input of the same images with their brightness times a random factor.

    Each image's pixels (back in ``[0, 1]`` through ``normalization``) are multiplied by a
    factor drawn uniformly from ``[1 - max_change, 1 + max_change]`` and clipped to ``[0, 1]``,
    as an editor's brightness control does to an 8-bit image (Pillow's ``ImageEnhance.Brightness``),
    then normalised again. Identity outside training. Not saved with a model: only the
    training graph holds it.
    """

    def __init__(self, normalization, max_change: float, seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_change = float(max_change)
        self._mean = np.asarray(normalization.mean, np.float32)
        self._std = float(normalization.std)
        self._seeds = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training:
            return x
        factor = keras.random.uniform((ops.shape(x)[0], 1, 1, 1), 1 - self.max_change, 1 + self.max_change, seed=self._seeds)
        mean = ops.convert_to_tensor(self._mean)
        pixels = ops.clip((x * self._std + mean) * factor, 0.0, 1.0)
        return (pixels - mean) / self._std

    def compute_output_shape(self, input_shape):
        return input_shape

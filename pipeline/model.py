"""The convolutional autoencoder with a binary bottleneck (seed 000's design).

The first convolution's kernel is the patch and its stride sets the code grid; a stack of
1x1 convolutions (batch-normalised, as in seed 000) narrows to ``bits`` sigmoid units, which
:class:`~pipeline.binarize.Binarize` rounds to {0, 1}. The decoder mirrors the 1x1 stack and
a transposed convolution with the same patch and stride paints the image back. Every grid
cell therefore gets its own ``bits``-bit code, computed from one ``patch x patch`` window.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass, field

from pipeline.packing import MAX_BITS, MIN_BITS

__all__ = ["ModelConfig", "PRESETS", "ENCODING_LAYER", "build_autoencoder", "build_encoder"]

ENCODING_LAYER = "encoding"


@dataclass(frozen=True)
class ModelConfig:
    """Geometry of an autoencoder; validated on construction.

    Parameters
    ----------
    input_shape
        ``(height, width, channels)`` of the model input; channels 1 (grey) or 3 (RGB).
    bits
        Code length per patch, 8 to 64.
    patch, stride
        Kernel and stride of the first convolution (``same`` padding): the code grid is
        ``ceil(height / stride) x ceil(width / stride)``.
    filters
        Output channels of the patch convolution.
    widths
        Widths of the 1x1 convolutions between the patch convolution and the bottleneck.
    stem
        Widths of 3x3 convolutions (``same`` padding, stride 1) applied to the whole image
        before the patch convolution; empty for seed 000's single-layer patch encoder. Each
        adds one pixel of context on every side of a patch.
    """

    input_shape: tuple[int, int, int] = (28, 28, 1)
    bits: int = 32
    patch: int = 8
    stride: int = 4
    filters: int = 128
    widths: tuple[int, ...] = field(default=(128, 64))
    stem: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))
        object.__setattr__(self, "widths", tuple(int(v) for v in self.widths))
        object.__setattr__(self, "stem", tuple(int(v) for v in self.stem))
        h, w, c = self.input_shape if len(self.input_shape) == 3 else (0, 0, 0)
        if len(self.input_shape) != 3 or h < 1 or w < 1 or c not in (1, 3):
            raise ValueError(
                f"input_shape must be (height, width, channels) with channels 1 or 3, got {self.input_shape}"
            )
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"bits must be between {MIN_BITS} and {MAX_BITS}, got {self.bits}")
        if not 1 <= self.patch <= min(h, w):
            raise ValueError(f"patch must be between 1 and {min(h, w)} for input {self.input_shape}, got {self.patch}")
        if not 1 <= self.stride <= self.patch:
            raise ValueError(f"stride must be between 1 and the patch size {self.patch}, got {self.stride}")
        if self.filters < 1 or any(v < 1 for v in self.widths) or any(v < 1 for v in self.stem):
            raise ValueError("filters, widths and stem widths must be positive")

    @property
    def grid(self) -> tuple[int, int]:
        h, w, _ = self.input_shape
        return math.ceil(h / self.stride), math.ceil(w / self.stride)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["widths"] = list(self.widths)
        d["stem"] = list(self.stem)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {k: d[k] for k in ("input_shape", "bits", "patch", "stride", "filters", "widths", "stem") if k in d}
        return cls(**known)


PRESETS: dict[str, ModelConfig] = {
    # Fashion-MNIST / MNIST: 28x28 grey, two 3x3 convolutions, then 8x8 patches every 4 pixels
    # -> 7x7 grid of 32-bit codes (docs/QUALITY.md: the stem lifts precision@10 by ~0.02).
    "fashion-mnist": ModelConfig((28, 28, 1), bits=32, patch=8, stride=4, filters=128, widths=(128, 64), stem=(32, 64)),
    # Seed 000's CIFAR network: 16x16 patches, stride 2 -> 16x16 grid of 28-bit codes.
    "cifar": ModelConfig((32, 32, 3), bits=28, patch=16, stride=2, filters=336, widths=(1024, 512, 256, 128, 64)),
    # Seed 001's dense autoencoder, 784-1000-700-300-150-75-17: a patch that is the whole image
    # is a dense layer over every pixel, and the 1x1 convolutions after it are dense layers, so
    # each image gets one 17-bit code (a 1x1 grid). 17 bits is seed 001's rule of about 0.4
    # images per code for 60,000 images (60,000 / 2**17 = 0.46).
    "seed-001": ModelConfig((28, 28, 1), bits=17, patch=28, stride=28, filters=1000, widths=(700, 300, 150, 75)),
}


class KernelSeeds:
    """The initial weights of each layer built, drawn from ``seed`` (None: Keras's global seed).

    Keras draws the seed of an unseeded initializer from Python's global ``random`` when the
    layer is built, so any other thread of the process using ``random`` at that moment (a Dask
    worker loading a model, botocore's retry jitter) would change the initial weights; seeded
    initializers make a training run depend on its seed alone. ``stream`` names a sequence of
    its own (the training-only heads draw from another one than the autoencoder's layers).
    """

    def __init__(self, seed: int | None, stream: str = "autoencoder"):
        self.seed, self.stream, self.count = seed, stream, 0

    def __call__(self):
        from pipeline.backend import keras

        if self.seed is None:
            return "glorot_uniform"
        self.count += 1
        return keras.initializers.GlorotUniform(seed=zlib.crc32(f"{self.seed}:{self.stream}:{self.count}".encode()))


def _conv1x1(x, width: int, kernels: KernelSeeds, activation: str = "relu"):
    from pipeline.backend import keras

    x = keras.layers.Conv2D(width, 1, activation=activation, kernel_initializer=kernels())(x)
    return keras.layers.BatchNormalization()(x)


def build_autoencoder(config: ModelConfig, seed: int | None = None) -> "keras.Model":  # noqa: F821
    """The trainable autoencoder: image in, reconstructed (normalised) image out; its initial
    weights drawn from ``seed`` (see :class:`KernelSeeds`)."""
    from pipeline.backend import keras  # imported here so that ModelConfig and model cards need no TensorFlow

    from pipeline.binarize import Binarize

    kernels = KernelSeeds(seed)

    h, w, c = config.input_shape
    inputs = keras.Input(shape=config.input_shape, name="image")
    x = inputs
    for width in config.stem:
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", kernel_initializer=kernels())(x)
        x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Conv2D(config.filters, config.patch, strides=config.stride, padding="same", activation="relu",
                            kernel_initializer=kernels())(x)
    x = keras.layers.BatchNormalization()(x)
    for width in config.widths:
        x = _conv1x1(x, width, kernels)
    # No batch norm after the sigmoid: it would move activations away from {0, 1}.
    x = keras.layers.Conv2D(config.bits, 1, activation="sigmoid", kernel_initializer=kernels())(x)
    x = Binarize(name=ENCODING_LAYER)(x)
    for width in reversed(config.widths):
        x = _conv1x1(x, width, kernels)
    x = _conv1x1(x, config.filters, kernels)
    x = keras.layers.Conv2DTranspose(c, config.patch, strides=config.stride, padding="same", kernel_initializer=kernels())(x)
    gh, gw = config.grid
    extra_h, extra_w = gh * config.stride - h, gw * config.stride - w
    if extra_h or extra_w:
        x = keras.layers.Cropping2D(((0, extra_h), (0, extra_w)))(x)
    return keras.Model(inputs, x, name="patchhash_autoencoder")


def build_encoder(autoencoder: "keras.Model") -> "keras.Model":  # noqa: F821
    """The encoder half: image in, ``[grid_h, grid_w, bits]`` of exact 0/1 out."""
    from pipeline.backend import keras

    return keras.Model(autoencoder.input, autoencoder.get_layer(ENCODING_LAYER).output, name="patchhash_encoder")

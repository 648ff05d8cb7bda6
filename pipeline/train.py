"""Training an autoencoder on a sample of images and saving it as a model directory.

With labels, training is *label-aware* (supervised hashing, as in seed 004's learning to
hash): a linear classifier reads the whole grid of binary codes (as +-1) and its
cross-entropy, weighted by ``label_weight``, is added to the reconstruction loss. The
gradient reaches the codes through the straight-through bottleneck, so images of the same
class get codes that are close in Hamming distance. The classifier is a training aid only:
the saved model is the autoencoder, and indexing and querying never see labels.

With ``shift_weight`` > 0, training is also *shift-consistent*: each batch is moved by a
random offset of up to ``max_shift`` pixels in each direction (sub-pixel, bilinear, edges
replicated), encoded again by the same layers, and the fraction of code bits that differ
between the two encodings (straight-through, so it has a gradient) is added to the loss with
that weight, to make the codes of a slightly shifted copy closer to the original's. On
Fashion-MNIST it did, at a loss of precision larger than the gain (docs/QUALITY.md), so it is
off by default.

With ``brightness_weight`` > 0, training is *brightness-consistent* in the same way: the batch
is also encoded with each image's brightness times a random factor within ``1 +- max_brightness``
(clipped as an 8-bit image is; :class:`pipeline.augment.RandomBrightness`), and the share of
code bits that change is added to the loss with that weight. ``icons-photos`` is trained so
(docs/MODEL.md).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.model import ENCODING_LAYER, KernelSeeds, ModelConfig, build_autoencoder
from pipeline.modelcard import CARD_FILE, MODEL_FILE, ModelCard, sha256_bytes
from pipeline.normalize import Normalization
from storage import InputRules, join_url, url_to_fs

__all__ = ["TrainSettings", "TrainResult", "train_autoencoder", "save_model"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 5
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0
    label_weight: float = 3.0
    shift_weight: float = 0.0
    max_shift: float = 2.0
    brightness_weight: float = 0.0
    max_brightness: float = 0.3

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not self.label_weight >= 0:
            raise ValueError(f"label_weight must be >= 0, got {self.label_weight}")
        if not self.shift_weight >= 0:
            raise ValueError(f"shift_weight must be >= 0, got {self.shift_weight}")
        if not self.max_shift > 0:
            raise ValueError(f"max_shift must be > 0 pixels, got {self.max_shift}")
        if not self.brightness_weight >= 0:
            raise ValueError(f"brightness_weight must be >= 0, got {self.brightness_weight}")
        if not 0 < self.max_brightness < 1:
            raise ValueError(f"max_brightness must be in (0, 1), got {self.max_brightness}")


@dataclass(frozen=True, eq=False)
class TrainResult:
    autoencoder: object
    normalization: Normalization
    history: dict[str, list[float]]
    seconds: float
    settings: TrainSettings
    n_images: int
    n_classes: int = 0


def train_autoencoder(
    pixels: np.ndarray,
    config: ModelConfig,
    settings: TrainSettings = TrainSettings(),
    on_epoch: Callable[[int, dict], None] | None = None,
    labels: np.ndarray | None = None,
) -> TrainResult:
    """Fit a fresh autoencoder to reconstruct ``pixels`` (uint8 ``[n, h, w, c]``).

    ``labels`` (one per image, any integer or string values) makes the training
    label-aware with weight ``settings.label_weight`` (see the module docstring).
    Reproducible for a given ``settings.seed`` on a given machine (Keras seeds and TF op
    determinism are set).
    """
    from pipeline.backend import keras, tf

    if pixels.ndim != 4 or pixels.shape[1:] != config.input_shape:
        raise ValueError(f"training images must have shape [n, {config.input_shape}], got {pixels.shape}")
    if len(pixels) < 2:
        raise ValueError("need at least 2 training images")
    classes = None
    if labels is not None:
        if len(labels) != len(pixels):
            raise ValueError(f"got {len(labels)} labels for {len(pixels)} training images")
        classes, targets = np.unique(np.asarray(labels), return_inverse=True)
        if len(classes) < 2:
            raise ValueError("label-aware training needs at least 2 distinct labels")
    keras.utils.set_random_seed(settings.seed)
    tf.config.experimental.enable_op_determinism()
    normalization = Normalization.fit(pixels)
    x = normalization.apply(pixels)
    autoencoder = build_autoencoder(config, seed=settings.seed)
    n_classes = 0 if classes is None or settings.label_weight == 0 else len(classes)
    max_shift = settings.max_shift if settings.shift_weight > 0 else 0.0
    brightness = (normalization, settings.max_brightness) if settings.brightness_weight > 0 else None
    model = training_model(autoencoder, n_classes, max_shift, seed=settings.seed, brightness=brightness)
    y = {"reconstruction": x}
    losses = {"reconstruction": "mse"}
    weights = {"reconstruction": 1.0}
    if n_classes:
        y["label"] = targets.astype("int32")
        losses["label"] = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        weights["label"] = settings.label_weight
    if max_shift:
        # the output is already the share of grid cells whose bit changed, per bit
        y["shift"] = np.zeros((len(x), config.bits), np.float32)
        losses["shift"] = "mae"
        weights["shift"] = settings.shift_weight
    if brightness:
        y["brightness"] = np.zeros((len(x), config.bits), np.float32)
        losses["brightness"] = "mae"
        weights["brightness"] = settings.brightness_weight
    model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate), loss=losses, loss_weights=weights)
    callbacks = []
    if on_epoch is not None:
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: on_epoch(epoch, dict(logs or {}))))
    started = time.perf_counter()
    history = model.fit(
        x, y, epochs=settings.epochs, batch_size=settings.batch_size, shuffle=True,
        verbose=0, callbacks=callbacks,
    )
    seconds = time.perf_counter() - started
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    return TrainResult(autoencoder, normalization, hist, seconds, settings, len(pixels),
                       0 if classes is None else len(classes))


def training_model(autoencoder: "keras.Model", n_classes: int = 0, max_shift: float = 0.0,  # noqa: F821
                   seed: int | None = None, brightness: tuple | None = None) -> "keras.Model":  # noqa: F821
    """The autoencoder with the training-only outputs of the module docstring.

    Shares every layer with ``autoencoder``. Outputs ``"reconstruction"``; with ``n_classes``,
    also ``"label"`` (logits of a linear classifier on the whole code grid as +-1); with
    ``max_shift`` (pixels), also ``"shift"``: per bit, the share of grid cells whose bit
    differs between the input and the input moved by a random offset (training only); with
    ``brightness`` (``(normalization, max_change)``), also ``"brightness"``: the same share
    between the input and its brightness times a random factor within ``1 +- max_change``
    (:class:`pipeline.augment.RandomBrightness`).
    """
    from pipeline.backend import keras

    codes = autoencoder.get_layer(ENCODING_LAYER).output
    outputs = {"reconstruction": autoencoder.output}
    if n_classes:
        signs = keras.layers.Rescaling(2.0, offset=-1.0, name="code_signs")(keras.layers.Flatten(name="code_grid")(codes))
        outputs["label"] = keras.layers.Dense(n_classes, name="label", kernel_initializer=KernelSeeds(seed, "label")())(signs)
    changes = {}
    if max_shift:
        h, w, _ = autoencoder.input.shape[1:]
        changes["shift"] = keras.layers.RandomTranslation(max_shift / h, max_shift / w, fill_mode="nearest", name="moved",
                                                           seed=seed)(autoencoder.input)
    if brightness:
        from pipeline.augment import RandomBrightness

        normalization, max_change = brightness
        changes["brightness"] = RandomBrightness(normalization, max_change, seed=seed, name="brightened")(autoencoder.input)
    if changes:
        encoder = keras.Model(autoencoder.input, codes, name="shared_encoder")
    for name, changed_input in changes.items():
        gap = keras.layers.Subtract(name=f"{name}_gap")([codes, encoder(changed_input)])  # 0 or +-1 per bit
        changed = keras.layers.Multiply(name=f"{name}_changed")([gap, gap])
        outputs[name] = keras.layers.GlobalAveragePooling2D(name=name)(changed)
    return keras.Model(autoencoder.input, outputs, name="patchhash_training")


def _software_versions() -> dict[str, str]:
    from pipeline.backend import convolution_kernels, keras, tf

    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("patchhash")
    except PackageNotFoundError:
        own = "unknown"
    return {"patchhash": own, "keras": keras.__version__, "tensorflow": tf.__version__,
            "tensorflow_kernels": convolution_kernels()}


def save_model(
    out: str,
    name: str,
    config: ModelConfig,
    result: TrainResult,
    training: dict,
    storage_options: dict | None = None,
    input_rules: InputRules | None = None,
) -> ModelCard:
    """Write ``model.keras`` then ``card.json`` (last, so a card always names whole weights).
    ``input_rules``: the canonical-form rules the training images went through (none by default)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, MODEL_FILE)
        result.autoencoder.save(local)
        with open(local, "rb") as f:
            data = f.read()
    card = ModelCard(
        name=name,
        config=config,
        normalization=result.normalization,
        model_sha256=sha256_bytes(data),
        training={
            **training,
            "n_images": result.n_images,
            "epochs": result.settings.epochs,
            "batch_size": result.settings.batch_size,
            "learning_rate": result.settings.learning_rate,
            "seed": result.settings.seed,
            "label_weight": result.settings.label_weight if result.n_classes else 0.0,
            "n_classes": result.n_classes,
            "seconds": round(result.seconds, 1),
            "final_loss": result.history["loss"][-1],
            "loss_history": result.history["loss"],
            "shift_weight": result.settings.shift_weight,
            "max_shift": result.settings.max_shift if result.settings.shift_weight else None,
            **({"brightness_weight": result.settings.brightness_weight, "max_brightness": result.settings.max_brightness}
               if result.settings.brightness_weight else {}),
            **{f"final_{name}": result.history[name][-1]
               for name in ("reconstruction_loss", "label_loss", "shift_loss", "brightness_loss") if name in result.history},
        },
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        software=_software_versions(),
        input_rules=input_rules or InputRules(),
    )
    fs, root = url_to_fs(out, storage_options)
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(url_to_fs(join_url(out, MODEL_FILE), storage_options)[1], data)
    fs.pipe_file(url_to_fs(join_url(out, CARD_FILE), storage_options)[1], json.dumps(card.to_json(), indent=1).encode())
    log.info("saved model %s to %s (sha256 %s)", name, out, card.model_sha256[:12])
    return card

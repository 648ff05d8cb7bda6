"""Training an autoencoder on a sample of images and saving it as a model directory."""

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

from pipeline.model import ModelConfig, build_autoencoder
from pipeline.modelcard import CARD_FILE, MODEL_FILE, ModelCard, sha256_bytes
from pipeline.normalize import Normalization
from storage import join_url, url_to_fs

__all__ = ["TrainSettings", "TrainResult", "train_autoencoder", "save_model"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 5
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


@dataclass(frozen=True, eq=False)
class TrainResult:
    autoencoder: object
    normalization: Normalization
    history: dict[str, list[float]]
    seconds: float
    settings: TrainSettings
    n_images: int


def train_autoencoder(
    pixels: np.ndarray,
    config: ModelConfig,
    settings: TrainSettings = TrainSettings(),
    on_epoch: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Fit a fresh autoencoder to reconstruct ``pixels`` (uint8 ``[n, h, w, c]``).

    Reproducible for a given ``settings.seed`` on a given machine (Keras seeds and TF op
    determinism are set).
    """
    import keras
    import tensorflow as tf

    if pixels.ndim != 4 or pixels.shape[1:] != config.input_shape:
        raise ValueError(f"training images must have shape [n, {config.input_shape}], got {pixels.shape}")
    if len(pixels) < 2:
        raise ValueError("need at least 2 training images")
    keras.utils.set_random_seed(settings.seed)
    tf.config.experimental.enable_op_determinism()
    normalization = Normalization.fit(pixels)
    x = normalization.apply(pixels)
    model = build_autoencoder(config)
    model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate), loss="mse")
    callbacks = []
    if on_epoch is not None:
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: on_epoch(epoch, dict(logs or {}))))
    started = time.perf_counter()
    history = model.fit(
        x, x, epochs=settings.epochs, batch_size=settings.batch_size, shuffle=True,
        verbose=0, callbacks=callbacks,
    )
    seconds = time.perf_counter() - started
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    return TrainResult(model, normalization, hist, seconds, settings, len(pixels))


def _software_versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("patchhash")
    except PackageNotFoundError:
        own = "unknown"
    return {"patchhash": own, "keras": keras.__version__, "tensorflow": tf.__version__}


def save_model(
    out: str,
    name: str,
    config: ModelConfig,
    result: TrainResult,
    training: dict,
    storage_options: dict | None = None,
) -> ModelCard:
    """Write ``model.keras`` then ``card.json`` (last, so a card always names whole weights)."""
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
            "seconds": round(result.seconds, 1),
            "final_loss": result.history["loss"][-1],
            "loss_history": result.history["loss"],
        },
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        software=_software_versions(),
    )
    fs, root = url_to_fs(out, storage_options)
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(url_to_fs(join_url(out, MODEL_FILE), storage_options)[1], data)
    fs.pipe_file(url_to_fs(join_url(out, CARD_FILE), storage_options)[1], json.dumps(card.to_json(), indent=1).encode())
    log.info("saved model %s to %s (sha256 %s)", name, out, card.model_sha256[:12])
    return card

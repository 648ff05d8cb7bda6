"""Loading a model directory and encoding images into per-patch integer codes.

Workers never receive a Keras model through Dask: they receive the model URL and call
:func:`load_encoder`, which loads it once per process (cache keyed by URL and the card's
weights hash, guarded by a lock) in Keras safe mode.
"""

from __future__ import annotations

import os
import tempfile
import threading

import numpy as np

from pipeline.modelcard import MODEL_FILE, ModelCard, read_card, read_model_file, resolve_model_url
from pipeline.packing import pack_bits
from storage import ModelError

__all__ = ["Encoder", "load_encoder", "ENCODE_BATCH"]

# Images are always run through the network in batches of exactly this many (the last one
# padded), so an image's code never depends on how the corpus was cut into shards.
ENCODE_BATCH = 256

_cache: dict[tuple[str, str], "Encoder"] = {}
_cache_lock = threading.Lock()


class Encoder:
    """A loaded model: ``encode(uint8 [n, h, w, c]) -> codes [n, grid_h, grid_w]``."""

    def __init__(self, card: ModelCard, autoencoder) -> None:
        from pipeline.model import build_encoder

        self.card = card
        self.autoencoder = autoencoder
        self._encoder = build_encoder(autoencoder)
        self._lock = threading.Lock()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """What :meth:`encode` takes per image: the model's input, its placements one below the other."""
        return self.card.image_spec.shape

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Codes of a batch of uint8 images already converted to the model's input shape."""
        pixels = np.asarray(pixels)
        if pixels.ndim != 4 or pixels.shape[1:] != self.input_shape:
            raise ValueError(f"expected images of shape [n, {', '.join(map(str, self.input_shape))}], got {pixels.shape}")
        n, places = len(pixels), 1 + len(self.card.placements)
        pixels = pixels.reshape(n * places, *self.card.config.input_shape)  # each placement an image of its own
        gh, gw = self.card.config.grid
        out = np.empty((len(pixels), gh, gw), dtype=self.card.code_dtype)
        for start in range(0, len(pixels), ENCODE_BATCH):
            chunk = pixels[start : start + ENCODE_BATCH]
            m = len(chunk)
            x = self.card.normalization.apply(chunk)
            if m < ENCODE_BATCH:
                x = np.concatenate([x, np.zeros((ENCODE_BATCH - m, *x.shape[1:]), x.dtype)])
            with self._lock:  # Keras models are not safe to call from several threads at once
                bits = np.asarray(self._encoder.predict_on_batch(x))[:m]
            out[start : start + m] = pack_bits(bits)
        return out.reshape(n, places * gh, gw)  # each image's placements one below the other, as its pixels


def _load_keras(url: str, card: ModelCard, storage_options: dict | None):
    """The Keras model of ``url``: hash-checked and inspected (:func:`read_model_file`), then
    loaded in safe mode from those very bytes (a private copy, so the file cannot change
    between the check and the load)."""
    from pipeline.backend import keras

    import pipeline.binarize  # noqa: F401  (registers the custom layer before loading)

    data = read_model_file(url, card, storage_options)
    tmp = tempfile.NamedTemporaryFile(suffix=".keras", delete=False)
    try:
        tmp.write(data)
        tmp.close()
        model = keras.saving.load_model(tmp.name, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError/TypeError for unsafe or foreign layers
        message = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ModelError(
            f"{url}: cannot load {MODEL_FILE} in safe mode ({type(exc).__name__}: {message}). "
            "patchhash only loads models it trained: no Lambda layers or custom code."
        ) from None
    finally:
        tmp.close()
        os.unlink(tmp.name)
    return model


def _check_geometry(url: str, card: ModelCard, encoder: Encoder) -> None:
    """Refuse a model whose input or code grid differs from what its card says."""
    gh, gw = card.config.grid
    found_in = tuple(encoder.autoencoder.input_shape[1:])
    found_out = tuple(encoder._encoder.output_shape[1:])
    if found_in != tuple(card.config.input_shape) or found_out != (gh, gw, card.bits):
        raise ModelError(
            f"{url}: {MODEL_FILE} takes {found_in} and gives codes {found_out}, but its card says "
            f"{tuple(card.config.input_shape)} and {(gh, gw, card.bits)}: the card was modified. "
            "Re-create the model with `patchhash train`."
        )


def load_encoder(model: str, storage_options: dict | None = None, *, use_cache: bool = True) -> Encoder:
    """Load (once per process) the model at ``model``: a directory URL or a built-in name."""
    url = resolve_model_url(model)
    card = read_card(url, storage_options, verify=False)  # _load_keras checks the model file
    key = (url, card.model_sha256)
    with _cache_lock:
        if use_cache and key in _cache:
            return _cache[key]
        autoencoder = _load_keras(url, card, storage_options)
        try:
            encoder = Encoder(card, autoencoder)
        except ValueError as exc:  # no "encoding" layer
            raise ModelError(
                f"{url}: {MODEL_FILE} is not a patchhash autoencoder ({(str(exc).splitlines() or [''])[0][:200]}). "
                "Re-create the model with `patchhash train`."
            ) from None
        _check_geometry(url, card, encoder)
        if use_cache:
            _cache[key] = encoder
        return encoder
